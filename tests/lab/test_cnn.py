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
