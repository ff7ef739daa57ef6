"""rescale_families_: each scale-free family's BatchNorm γ, β multiplied to a mean |γ| of the
target, the consumers' BatchNorms compensating, the function unchanged.

References, never the code under test: the un-rescaled model itself (its outputs in eval and
training mode, and its running statistics after a training-mode step), and the families and
their mean |γ| read by hand from the architecture of ``structure_models.ResNet``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from structure_models import ResNet, mlp
from torch import nn

from regtorch import rescale_families_

F64 = torch.float64
# float64, rounding only: the rescaling multiplies by s and the norm divides by
# √(s²σ² + s²ε) = s√(σ² + ε), so nothing but the rounding of those products changes.
EXACT = 1e-12


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# By hand from structure_models.ResNet: the stem's stream (its BatchNorm and layer1's bn2s feed
# only normalized convolutions), and each block's inner channels (bn1). layer2's stream feeds
# the head: not scale-free.
STREAM = ("bn", "layer1.0.bn2", "layer1.1.bn2")
INNER = ("layer1.0.bn1", "layer1.1.bn1", "layer2.0.bn1", "layer2.1.bn1")
NOT_FREE = ("layer2.0.bn2", "layer2.0.down.1", "layer2.1.bn2")


def shrunken_resnet(dtype=F64) -> tuple[nn.Module, torch.Tensor]:
    """A ResNet whose families are shrunk as a group lasso leaves them (each by its own factor),
    with running statistics from a few training-mode batches."""
    torch.manual_seed(0)
    model = ResNet(4).to(dtype)
    x = torch.randn(8, 3, 8, 8, dtype=dtype)
    with torch.no_grad():
        for i, name in enumerate(STREAM + INNER + NOT_FREE):
            norm = model.get_submodule(name)
            factor = 0.02 * (i + 1) if name in STREAM + INNER else 1.0
            norm.weight.copy_(factor * (0.5 + torch.rand_like(norm.weight)))
            norm.bias.copy_(factor * torch.randn_like(norm.bias))
        model.train()
        for _ in range(3):
            model(torch.randn(8, 3, 8, 8, dtype=dtype))
    return model, x


def mean_abs_gamma(model: nn.Module, names) -> float:
    return float(torch.cat([model.get_submodule(n).weight.detach() for n in names]).abs().mean())


def test_each_family_gets_the_target_scale_and_the_rest_is_left_alone():
    model, x = shrunken_resnet()
    original = copy.deepcopy(model)
    expected_stream = 2.0 / mean_abs_gamma(model, STREAM)
    factors = rescale_families_(model, x, target=2.0)
    assert mean_abs_gamma(model, STREAM) == pytest.approx(2.0, rel=1e-12)
    for name in INNER:
        assert mean_abs_gamma(model, [name]) == pytest.approx(2.0, rel=1e-12)
    for name in NOT_FREE:
        assert torch.equal(model.get_submodule(name).weight, original.get_submodule(name).weight)
    # the factors are the multipliers applied: γ and β of a family by one s
    for name in STREAM:
        for tensor in ("weight", "bias"):
            factor = factors[f"{name}.{tensor}"]
            torch.testing.assert_close(factor, torch.full_like(factor, expected_stream),
                                       rtol=1e-12, atol=0)
            torch.testing.assert_close(model.get_parameter(f"{name}.{tensor}"),
                                       original.get_parameter(f"{name}.{tensor}") * factor,
                                       rtol=1e-12, atol=0)
    assert set(factors) == {f"{n}.{t}" for n in STREAM + INNER for t in ("weight", "bias")}
    # the stream's consumers' norms get its scale: layer1.0.conv1 feeds layer1.0.bn1
    consumer, reference = model.layer1[0].bn1, original.layer1[0].bn1
    assert consumer.eps == pytest.approx(reference.eps * expected_stream ** 2, rel=1e-12)
    torch.testing.assert_close(consumer.running_var,
                               reference.running_var * expected_stream ** 2, rtol=1e-12, atol=0)


def test_the_function_is_unchanged_in_eval_and_in_training_mode():
    model, x = shrunken_resnet()
    original = copy.deepcopy(model)
    rescale_families_(model, x)
    model.eval(), original.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=EXACT, atol=EXACT)
        model.train(), original.train()  # batch statistics; the running ones are updated
        torch.testing.assert_close(model(x), original(x), rtol=EXACT, atol=EXACT)
        model.eval(), original.eval()  # the updated running statistics agree too
        other = torch.randn(5, 3, 8, 8, dtype=F64)
        torch.testing.assert_close(model(other), original(other), rtol=EXACT, atol=EXACT)


def test_the_loss_and_the_gradient_of_an_unrescaled_layer_are_unchanged():
    # Training-mode forward and backward: the loss, and the gradient of the head (whose input
    # family is not rescaled), are the original's.
    model, x = shrunken_resnet()
    original = copy.deepcopy(model)
    rescale_families_(model, x)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    losses = []
    for m in (model, original):
        m.train()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=EXACT, atol=EXACT)
    torch.testing.assert_close(model.head.weight.grad, original.head.weight.grad, rtol=1e-10,
                               atol=1e-12)


def test_float32_is_within_the_float32_tolerance():
    model, x = shrunken_resnet(torch.float32)
    original = copy.deepcopy(model).eval()
    rescale_families_(model, x)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), original(x), rtol=1e-5, atol=1e-5)


def test_a_model_without_scale_free_families_is_unchanged():
    model = mlp().to(F64)
    state = copy.deepcopy(model.state_dict())
    assert rescale_families_(model, torch.randn(4, 6, dtype=F64)) == {}
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name])


def test_an_activation_that_is_not_homogeneous_is_refused_and_the_model_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.GELU(),
                          nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16, 2)).to(F64)
    with torch.no_grad():
        model[1].weight.mul_(0.05)
        model[1].bias.mul_(0.05)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"outputs differ.*restored"):
        rescale_families_(model, torch.randn(8, 1, 6, 6, dtype=F64))
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name])
    assert model[4].eps == 1e-5


@pytest.mark.parametrize("target", [0.0, -1.0, float("nan"), float("inf"), True, "1"],
                         ids=["zero", "negative", "nan", "inf", "bool", "str"])
def test_bad_target_is_refused_by_name(target):
    model, x = shrunken_resnet()
    with pytest.raises(ValueError, match="Invalid target value"):
        rescale_families_(model, x, target=target)


def test_not_a_module_is_a_type_error():
    with pytest.raises(TypeError, match=r"expected an nn\.Module"):
        rescale_families_(lambda x: x, torch.randn(2, 3))
