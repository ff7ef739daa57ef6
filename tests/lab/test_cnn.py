"""The built-in CNN: its forward equals the same layers written with torch.nn.functional, the init
is drawn from the seed alone, names select conv filters, and bad shapes are StudyErrors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from regtorch.lab.study import StudyError
from regtorch.lab.study.cnn import build_cnn, cnn_output_shape
from regtorch.lab.study.spec import ModelSpec

F64 = torch.float64


def reference(params: dict[str, torch.Tensor], x: torch.Tensor, spec: ModelSpec,
              buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The CNN in eval mode, by hand with torch.nn.functional."""
    for i in range(1, len(spec.channels) + 1):
        padding = spec.kernel // 2 if spec.padding is None else spec.padding
        x = F.conv2d(x, params[f"conv{i}.weight"], params[f"conv{i}.bias"], padding=padding)
        if spec.norm == "batch":
            mean, var = buffers[f"norm{i}.running_mean"], buffers[f"norm{i}.running_var"]
            x = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
            x = x * params[f"norm{i}.weight"][:, None, None] + params[f"norm{i}.bias"][:, None,
                                                                                      None]
        x = torch.relu(x)
        if spec.pool == "max":
            x = F.max_pool2d(x, spec.pool_size)
        elif spec.pool == "avg":
            x = F.avg_pool2d(x, spec.pool_size)
    x = x.flatten(1)
    for j in range(1, len(spec.hidden) + 1):
        x = torch.relu(x @ params[f"fc{j}.weight"].T + params[f"fc{j}.bias"])
    return x @ params["head.weight"].T + params["head.bias"]


@pytest.mark.parametrize("spec", [
    ModelSpec("cnn", channels=(16, 32)),
    ModelSpec("cnn", channels=(4,), kernel=3, padding=0, pool="avg"),
    ModelSpec("cnn", channels=(3, 5), norm="batch", hidden=(7,)),
    ModelSpec("cnn", channels=(2, 2, 2), kernel=5, pool="none"),
], ids=["default", "avg-valid", "batch-hidden", "no-pool-k5"])
def test_forward_matches_functional_reference(spec):
    model = build_cnn(spec, (2, 8, 8), outputs=3, seed=1, dtype=F64).eval()
    x = torch.randn(5, 2, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    if spec.norm == "batch":  # give the running statistics non-trivial values
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-1, 1)
                    module.running_var.uniform_(0.5, 2)
    expected = reference(dict(model.named_parameters()), x, spec, dict(model.named_buffers()))
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    channels, height, width = cnn_output_shape(spec, (2, 8, 8))
    assert model.head.in_features == (model.fc1.out_features if spec.hidden
                                      else channels * height * width)


def test_seeded_init_ignores_global_rng():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    one = build_cnn(ModelSpec("cnn", channels=(16, 32)), (1, 8, 8), 10, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(999)
    two = build_cnn(ModelSpec("cnn", channels=(16, 32)), (1, 8, 8), 10, seed=4)
    other = build_cnn(ModelSpec("cnn", channels=(16, 32)), (1, 8, 8), 10, seed=5)
    for (name, a), b, c in zip(one.named_parameters(), two.parameters(), other.parameters()):
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name


def test_dropout_goes_before_every_head_linear():
    model = build_cnn(ModelSpec("cnn", channels=(16, 32), hidden=(8,)), (1, 8, 8), 10, dropout=0.3)
    names = [n for n, _ in model.named_children()]
    assert names.index("drop1") == names.index("fc1") - 1
    assert names.index("drop") == names.index("head") - 1
    assert not any(isinstance(m, nn.Dropout)
                   for m in build_cnn(ModelSpec("cnn", channels=(16, 32)), (1, 8, 8), 10).modules())


def test_conv_filters_are_named_for_globs():
    model = build_cnn(ModelSpec("cnn", channels=(4, 6), norm="batch"), (1, 8, 8), 10)
    names = [n for n, _ in model.named_parameters()]
    assert [n for n in names if n.startswith("conv") and n.endswith("weight")] == [
        "conv1.weight", "conv2.weight"]
    assert model.conv2.weight.shape == (6, 4, 3, 3)


def test_vmap_over_stacked_members_equals_each_member():
    spec = ModelSpec("cnn", channels=(3, 4))
    models = [build_cnn(spec, (1, 8, 8), 5, seed=s, dtype=F64) for s in range(3)]
    params, buffers = stack_module_state(models)
    x = torch.randn(6, 1, 8, 8, dtype=F64)
    base = models[0]

    def run(p, b):
        return functional_call(base, (p, b), (x,))

    out = vmap(run)(params, buffers)
    for k, model in enumerate(models):
        torch.testing.assert_close(out[k], model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("spec", "shape", "message"), [
    (ModelSpec("cnn", channels=(16, 32)), (64,),
     r"model\.kind: 'cnn' needs image inputs \[N, C, H, W\]; the data's examples have shape "
     r"\[64\]"),
    (ModelSpec("cnn", channels=(4, 4, 4, 4)), (1, 8, 8),
     r"model\.channels: block 4 of \[4, 4, 4, 4\] leaves no pixel of the 8×8 input"),
], ids=["flat-input", "too-deep"])
def test_bad_shapes(spec, shape, message):
    with pytest.raises(StudyError, match=message):
        build_cnn(spec, shape, 10)


# --------------------------------------------------------------------------------------------
# The batched forward (regtorch.lab.train.batched): K members in one pass without vmap, equal to
# each member's own module — outputs, gradients and BatchNorm's running statistics.
# --------------------------------------------------------------------------------------------

# float64: the stacked and the plain pass differ only by the rounding order of a few reductions
# (one grouped convolution / batched product vs K small ones; channels-last vs contiguous).
BATCHED_ATOL = 1e-12


class _Gate(nn.Module):
    """A layer the batched forward does not know: the model runs under vmap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def _grouped_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                         nn.ReLU(inplace=True), nn.Conv2d(4, 6, 3, stride=2, groups=2),
                         nn.AvgPool2d(1), nn.Flatten(), nn.Dropout(0.0), nn.Linear(6 * 3 * 3, 3))


def _mlp_with_norm() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 9), nn.BatchNorm1d(9), nn.GELU(),
                         nn.Sequential(nn.Linear(9, 5), nn.Tanh()), nn.Linear(5, 3, bias=False))


def _unflatten_conv1d() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Unflatten(1, (8, 16)), nn.Conv1d(8, 4, 3),
                         nn.BatchNorm1d(4, affine=False), nn.MaxPool1d(2), nn.Flatten(),
                         nn.Linear(4 * 7, 3))


@pytest.mark.parametrize("make", [
    lambda seed: build_cnn(ModelSpec("cnn", channels=(3, 5), norm="batch", hidden=(7,)),
                           (2, 8, 8), 3, seed=seed, dtype=F64),
    lambda seed: build_cnn(ModelSpec("cnn", channels=(4,), padding=0, pool="avg"), (2, 8, 8), 3,
                           seed=seed, dtype=F64),
    lambda seed: _seeded(_grouped_cnn, seed),
    lambda seed: _seeded(_mlp_with_norm, seed),
    lambda seed: _seeded(_unflatten_conv1d, seed),
], ids=["cnn-batchnorm-hidden", "cnn-avg-valid", "grouped-strided-inplace", "mlp-batchnorm1d",
        "unflatten-conv1d"])
def test_batched_forward_equals_each_member(make):
    from regtorch.lab.train.batched import batched_forward

    models = [make(seed) for seed in range(3)]
    params, buffers = stack_module_state(models)
    forward = batched_forward(models[0], list(params), list(buffers))
    assert forward is not None
    x = torch.randn(6, 2, 8, 8, dtype=F64)
    leaves = tuple(p.detach().requires_grad_() for p in params.values())
    stacked_buffers = tuple(b.clone() for b in buffers.values())
    out = forward(leaves, stacked_buffers, x, True)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    names = list(params)
    for k, model in enumerate(models):
        model.train()
        own = model(x)
        torch.testing.assert_close(out[k], own, rtol=0, atol=BATCHED_ATOL)
        own_grads = torch.autograd.grad(own.square().sum(), list(model.parameters()))
        for name, grad, own_grad in zip(names, grads, own_grads):
            torch.testing.assert_close(grad[k], own_grad, rtol=0, atol=BATCHED_ATOL, msg=name)
        for (name, buffer), stacked in zip(model.named_buffers(), stacked_buffers):
            torch.testing.assert_close(stacked[k], buffer, rtol=0, atol=BATCHED_ATOL, msg=name)
        model.eval()  # eval mode: each member with its own (updated) running statistics
        torch.testing.assert_close(forward(leaves, stacked_buffers, x, False)[k].detach(),
                                   model(x).detach(), rtol=0, atol=BATCHED_ATOL)


def _seeded(factory, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return factory().to(F64)


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Linear(4, 3), _Gate()),
    nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)),
    nn.Sequential(nn.BatchNorm1d(4, momentum=None)),  # a cumulative average reads the count
    nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")),
], ids=["unknown-module", "layernorm", "cumulative-batchnorm", "circular-padding"])
def test_an_unknown_layer_leaves_the_model_to_vmap(model):
    from regtorch.lab.train.step import StackedStep

    params, buffers = stack_module_state([model, model])
    step = StackedStep(model, list(params), F.mse_loss, random=False, traces={},
                       buffer_names=list(buffers))
    assert not step.batched


def test_the_built_in_cnn_trains_batched():
    from regtorch.lab.train.step import StackedStep

    model = build_cnn(ModelSpec("cnn", channels=(8, 16), norm="batch"), (1, 8, 8), 10,
                      dropout=0.3)
    params, buffers = stack_module_state([model, model])
    step = StackedStep(model, list(params), F.cross_entropy, random=True, traces={},
                       buffer_names=list(buffers))
    assert step.batched
