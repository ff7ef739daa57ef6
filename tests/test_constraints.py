"""Constraints: Keras' formulas per output unit, and Constraints bound to a model.

Expected values come from a NumPy transcription of Keras 3's
``keras/src/constraints/constraints.py`` applied to the kernel as Keras stores it: a Linear weight
``(out, in)`` is the Dense kernel ``(in, out)`` with Keras' default ``axis=0``, a Conv2d weight
``(out, in, kh, kw)`` the channels-last kernel ``(kh, kw, in, out)`` with ``axis=[0, 1, 2]``.
1-D tensors follow regtorch's convention (each element a unit), not Keras' ``axis=0`` on a
vector. Everything runs in float64.
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import regtorch
from regtorch import (
    L2,
    WEIGHTS,
    Constraint,
    Constraints,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    UnitNorm,
)

RTOL = 1e-12
EPSILON = 1e-7  # keras.backend.epsilon()
# A unit's norm after UnitNorm is n / (ε + n): 1 up to ε/n, below 1e-6 for the norms used here.
UNIT_NORM_TOL = 1e-6

# -- the reference: Keras 3's formulas, transcribed ------------------------------------------------


def _keras_norms(w: np.ndarray, axis) -> np.ndarray:
    return np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))


def keras_max_norm(w, axis, max_value=2):
    norms = _keras_norms(w, axis)
    desired = np.clip(norms, 0, max_value)
    return w * (desired / (EPSILON + norms))


def keras_unit_norm(w, axis):
    return w / (EPSILON + _keras_norms(w, axis))


def keras_min_max_norm(w, axis, min_value=0.0, max_value=1.0, rate=1.0):
    norms = _keras_norms(w, axis)
    desired = rate * np.clip(norms, min_value, max_value) + (1 - rate) * norms
    return w * (desired / (EPSILON + norms))


def keras_non_neg(w, axis):
    return w * (w >= 0.0)


# (regtorch constraint, Keras reference with the same arguments)
CONSTRAINTS = {
    "MaxNorm()": (MaxNorm(), keras_max_norm),
    "MaxNorm(0.5)": (MaxNorm(0.5), lambda w, axis: keras_max_norm(w, axis, max_value=0.5)),
    "UnitNorm()": (UnitNorm(), keras_unit_norm),
    "MinMaxNorm()": (MinMaxNorm(), keras_min_max_norm),
    "MinMaxNorm(0.5,1.5,rate=0.3)": (
        MinMaxNorm(0.5, 1.5, rate=0.3),
        lambda w, axis: keras_min_max_norm(w, axis, 0.5, 1.5, 0.3)),
    "MinMaxNorm(1,1)": (MinMaxNorm(1.0, 1.0), lambda w, axis: keras_min_max_norm(w, axis, 1, 1)),
    "NonNeg()": (NonNeg(), keras_non_neg),
}
INSTANCES = {name: constraint for name, (constraint, _) in CONSTRAINTS.items()}


# How Keras sees a torch tensor: (to Keras layout, Keras axis, back to torch layout).
def _dense(w):
    return w.T, 0, lambda k: k.T


def _conv2d(w):  # (out, in, kh, kw) -> (kh, kw, in, out)
    return w.transpose(2, 3, 1, 0), (0, 1, 2), lambda k: k.transpose(3, 2, 0, 1)


def _conv1d(w):  # (out, in, k) -> (k, in, out)
    return w.transpose(2, 1, 0), (0, 1), lambda k: k.transpose(2, 1, 0)


def _per_element(w):  # regtorch's convention for 1-D tensors: each element is a unit
    return w.reshape(1, -1), 0, lambda k: k.reshape(-1)


def _whole(w):  # a 0-d tensor is one unit
    return w.reshape(1, 1), 0, lambda k: k.reshape(())


LAYOUTS = {
    "linear(5,7)": ((5, 7), _dense),
    "conv2d(4,3,3,2)": ((4, 3, 3, 2), _conv2d),
    "conv1d(3,2,5)": ((3, 2, 5), _conv1d),
    "bias(6,)": ((6,), _per_element),
    "scalar()": ((), _whole),
}


def keras_reference(reference, w: np.ndarray, layout) -> np.ndarray:
    kernel, axis, back = layout(w)
    return back(reference(kernel, axis))


def weights(shape, seed=0, zero_unit=True) -> torch.Tensor:
    """float64 weights whose units have norms from ~0.03 to ~30 (some inside every bound used
    here, some below, some above), the second unit exactly zero."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    if w.ndim:
        w *= np.logspace(-2, 1, w.shape[0]).reshape((-1,) + (1,) * (w.ndim - 1))
        if zero_unit and w.shape[0] > 1:
            w[1] = 0.0
    return torch.from_numpy(w)


# -- the formulas -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS.values()), ids=list(LAYOUTS))
@pytest.mark.parametrize("constraint, reference", list(CONSTRAINTS.values()), ids=list(CONSTRAINTS))
def test_matches_keras_formula(constraint, reference, layout):
    shape, to_keras = layout
    w = weights(shape)
    expected = keras_reference(reference, w.numpy().copy(), to_keras)
    constraint.apply_([w])
    np.testing.assert_allclose(w.numpy(), expected, rtol=RTOL, atol=0)


@pytest.mark.parametrize("constraint, reference", list(CONSTRAINTS.values()), ids=list(CONSTRAINTS))
def test_one_call_on_several_tensors(constraint, reference):
    tensors = [weights(shape, seed=i) for i, (shape, _) in enumerate(LAYOUTS.values())]
    expected = [keras_reference(reference, t.numpy().copy(), to_keras)
                for t, (_, to_keras) in zip(tensors, LAYOUTS.values())]
    constraint.apply_(tensors)
    for t, e in zip(tensors, expected):
        np.testing.assert_allclose(t.numpy(), e, rtol=RTOL, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("constraint", list(INSTANCES.values()), ids=list(INSTANCES))
def test_zero_units_stay_zero(constraint, dtype):
    w = torch.zeros(3, 4, dtype=dtype)
    w[0] = 1.0
    constraint.apply_([w])
    assert torch.equal(w[1:], torch.zeros(2, 4, dtype=dtype))
    assert torch.isfinite(w).all()


def test_bias_units_are_elements():
    b = torch.tensor([3.0, -0.5, -4.0, 0.0], dtype=torch.float64)
    MaxNorm(1.0).apply_([b])  # clips |b_i| at 1, sign kept
    expected = np.array([1.0 * 3.0 / (EPSILON + 3.0), -0.5 * 0.5 / (EPSILON + 0.5),
                         -4.0 * 1.0 / (EPSILON + 4.0), 0.0])
    np.testing.assert_allclose(b.numpy(), expected, rtol=RTOL, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_norms_do_not_overflow(dtype):
    """Rows of 300s: the sum of squares (4 × 300² = 360000) exceeds float16's max 65504, the norm
    (600) must not overflow; each row is scaled to norm 2, i.e. entries 1."""
    w = torch.full((2, 4), 300.0, dtype=dtype)
    MaxNorm(2.0).apply_([w])
    assert w.dtype == dtype
    torch.testing.assert_close(w, torch.full((2, 4), 1.0, dtype=dtype))


def test_float32_close_to_float64_reference():
    w = weights((5, 7))
    expected = keras_reference(keras_max_norm, w.numpy().copy(), _dense)
    w32 = w.float()
    MaxNorm().apply_([w32])
    assert w32.dtype == torch.float32
    np.testing.assert_allclose(w32.numpy(), expected, rtol=1e-6, atol=1e-12)  # float32 rounding


@pytest.mark.parametrize("constraint", list(INSTANCES.values()), ids=list(INSTANCES))
def test_zero_size_tensors_and_empty_list(constraint):
    tensors = [torch.zeros(0, 3), torch.zeros(3, 0), torch.zeros(0)]
    constraint.apply_(tensors)
    assert [tuple(t.shape) for t in tensors] == [(0, 3), (3, 0), (0,)]
    constraint.apply_([])


def test_apply_to_parameters_is_not_recorded_by_autograd():
    layer = nn.Linear(3, 2).double()
    MaxNorm(0.1).apply_(layer.parameters())  # any iterable of tensors
    assert layer.weight.grad_fn is None and layer.weight.is_leaf and layer.weight.requires_grad
    assert (layer.weight.detach().norm(dim=1) <= 0.1).all()


def test_single_tensor_raises():
    """Iterating a tensor would visit its rows: a bare tensor is refused."""
    with pytest.raises(TypeError, match=re.escape("a single tensor of shape (2, 3)")):
        MaxNorm().apply_(torch.ones(2, 3))


# -- construction ------------------------------------------------------------------------------


REPRS = {
    "MaxNorm-default": (MaxNorm(), "MaxNorm(max_value=2.0)"),
    "MaxNorm-int": (MaxNorm(3), "MaxNorm(max_value=3.0)"),
    "UnitNorm": (UnitNorm(), "UnitNorm()"),
    "MinMaxNorm-default": (MinMaxNorm(), "MinMaxNorm(min_value=0.0, max_value=1.0, rate=1.0)"),
    "MinMaxNorm": (MinMaxNorm(0.5, 2, rate=0.25),
                   "MinMaxNorm(min_value=0.5, max_value=2.0, rate=0.25)"),
    "NonNeg": (NonNeg(), "NonNeg()"),
}


@pytest.mark.parametrize("constraint, text", list(REPRS.values()), ids=list(REPRS))
def test_repr_and_keras_defaults(constraint, text):
    assert repr(constraint) == text
    assert isinstance(constraint, Constraint)


BAD = {
    "max-zero": (lambda: MaxNorm(0), ValueError, "Invalid max_value value: 0.0"),
    "max-negative": (lambda: MaxNorm(-1.5), ValueError, "Invalid max_value value: -1.5"),
    "max-nan": (lambda: MaxNorm(math.nan), ValueError, "Invalid max_value value: nan"),
    "max-inf": (lambda: MaxNorm(math.inf), ValueError, "Invalid max_value value: inf"),
    "max-string": (lambda: MaxNorm("2"), TypeError, "Invalid max_value value: '2'"),
    "max-bool": (lambda: MaxNorm(True), TypeError, "Invalid max_value value: True"),
    "max-none": (lambda: MaxNorm(None), TypeError, "Invalid max_value value: None"),
    "minmax-min-negative": (lambda: MinMaxNorm(-0.1), ValueError, "Invalid min_value value: -0.1"),
    "minmax-min-nan": (lambda: MinMaxNorm(math.nan), ValueError, "Invalid min_value value: nan"),
    "minmax-min-string": (lambda: MinMaxNorm("0"), TypeError, "Invalid min_value value: '0'"),
    "minmax-max-zero": (lambda: MinMaxNorm(0.0, 0.0), ValueError, "Invalid max_value value: 0.0"),
    "minmax-max-inf": (lambda: MinMaxNorm(0.0, math.inf), ValueError,
                       "Invalid max_value value: inf"),
    "minmax-max-below-min": (lambda: MinMaxNorm(2.0, 1.0), ValueError,
                             "Invalid max_value value: 1.0 (must be >= min_value=2.0)"),
    "minmax-rate-zero": (lambda: MinMaxNorm(rate=0), ValueError, "Invalid rate value: 0.0"),
    "minmax-rate-above-one": (lambda: MinMaxNorm(rate=1.5), ValueError,
                              "Invalid rate value: 1.5"),
    "minmax-rate-negative": (lambda: MinMaxNorm(rate=-0.5), ValueError,
                             "Invalid rate value: -0.5"),
    "minmax-rate-nan": (lambda: MinMaxNorm(rate=math.nan), ValueError, "Invalid rate value: nan"),
    "minmax-rate-tensor": (lambda: MinMaxNorm(rate=torch.tensor(0.5)), TypeError,
                           "Invalid rate value: tensor(0.5000)"),
}


@pytest.mark.parametrize("build, error, message", list(BAD.values()), ids=list(BAD))
def test_bad_arguments_raise_naming_the_value(build, error, message):
    with pytest.raises(error, match=re.escape(message)):
        build()


def test_public_names():
    for name in ("Constraint", "Constraints", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"):
        assert name in regtorch.__all__ and getattr(regtorch, name).__name__ == name


# -- Constraints on a model -----------------------------------------------------------------


class Net(nn.Module):
    """Conv2d (out=3, in=2, 3×3) → LayerNorm(12) → Linear(12 → 4); input (N, 2, 4, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.norm = nn.LayerNorm(12)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.conv(x).flatten(1)))


def net(seed=0) -> Net:
    torch.manual_seed(seed)
    model = Net().double()
    with torch.no_grad():
        for p in model.parameters():  # norms from well inside to well outside the bounds
            p.copy_(weights(tuple(p.shape), seed=p.numel(), zero_unit=False))
    return model


def snapshot(model: nn.Module) -> dict[str, np.ndarray]:
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


RULES = {
    "fc.bias": NonNeg(),
    "fc.*": MaxNorm(0.5),  # fc.weight: fc.bias went to the first rule
    WEIGHTS: UnitNorm(),  # conv.weight: fc.weight went to the rule above
}


def test_rules_constrain_selected_tensors_only():
    model = net()
    before = snapshot(model)
    constraints = Constraints(model, RULES)
    assert [n for n, _ in constraints.named_parameters()] == ["fc.bias", "fc.weight",
                                                              "conv.weight"]
    constraints.apply_()
    after = snapshot(model)
    expected = {
        "fc.bias": keras_reference(keras_non_neg, before["fc.bias"], _per_element),
        "fc.weight": keras_reference(lambda w, axis: keras_max_norm(w, axis, 0.5),
                                     before["fc.weight"], _dense),
        "conv.weight": keras_reference(keras_unit_norm, before["conv.weight"], _conv2d),
    }
    for name, value in expected.items():
        assert not np.array_equal(before[name], value), name  # the constraint binds
        np.testing.assert_allclose(after[name], value, rtol=RTOL, atol=0, err_msg=name)
    for name in ("conv.bias", "norm.weight", "norm.bias"):
        assert np.array_equal(after[name], before[name]), name  # bit-identical


def test_single_constraint_goes_to_weights():
    model = net()
    constraints = Constraints(model, MaxNorm(1.0))
    assert [n for n, _ in constraints.named_parameters()] == ["conv.weight", "fc.weight"]
    assert repr(constraints) == "Constraints({WEIGHTS: MaxNorm(max_value=1.0)})"


def test_table():
    model = net()
    constraints = Constraints(model, [*RULES.items(), ("norm.*", None)])
    assert str(constraints) == "\n".join([
        "Constraints: 3 tensors (106 elements) constrained, 3 tensors (27 elements) not",
        "  parameter    shape         rule              constraint",
        "  fc.bias      (4,)          named('fc.bias')  NonNeg()",
        "  fc.weight    (4, 12)       named('fc.*')     MaxNorm(max_value=0.5)",
        "  conv.weight  (3, 2, 3, 3)  WEIGHTS           UnitNorm()",
        "  not constrained: conv.bias, norm.weight, norm.bias",
    ])


def test_construction_logs_counts(caplog):
    caplog.set_level(logging.INFO, logger="regtorch")
    Constraints(net(), MaxNorm())
    assert caplog.messages[-1] == ("regtorch: 2 tensors (102 elements) constrained, "
                                   "4 tensors (31 elements) not")


BAD_RULES = {
    "matches-nothing": ({"decoder.*": MaxNorm()}, ValueError,
                        "Rule named('decoder.*') -> MaxNorm(max_value=2.0) matches no trainable"),
    "claimed-by-earlier-rule": ({"fc.*": MaxNorm(), "fc.weight": UnitNorm()}, ValueError,
                                "Rule named('fc.weight') -> UnitNorm() matches no trainable"),
    "penalty-not-constraint": ({"fc.*": L2(0.1)}, TypeError,
                               "Invalid rule 'fc.*': L2(0.1) (expected a regtorch constraint"),
    "bare-selector": ("fc.*", TypeError, "Invalid rules: 'fc.*'"),
}


@pytest.mark.parametrize("rules, error, message", list(BAD_RULES.values()), ids=list(BAD_RULES))
def test_bad_rules_raise(rules, error, message):
    with pytest.raises(error, match=re.escape(message)):
        Constraints(net(), rules)


def test_frozen_parameters():
    model = net()
    model.conv.weight.requires_grad_(False)  # frozen before: never selected
    constraints = Constraints(model, MaxNorm(0.5))
    assert [n for n, _ in constraints.named_parameters()] == ["fc.weight"]
    model.conv.weight.requires_grad_(True)
    model.fc.weight.requires_grad_(False)  # frozen later: skipped by apply_
    before = snapshot(model)
    constraints.apply_()
    assert all(np.array_equal(v, before[n]) for n, v in snapshot(model).items())


def test_wrapped_model_names_are_unwrapped():
    model = net()
    constraints = Constraints(nn.DataParallel(model), {"fc.weight": MaxNorm(0.5)})
    assert [n for n, _ in constraints.named_parameters()] == ["fc.weight"]
    constraints.apply_()
    assert (model.fc.weight.detach().norm(dim=1) <= 0.5).all()


def _row_norms(p: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(p.detach().reshape(p.shape[0], -1), dim=1)


@pytest.mark.parametrize("kind", ["MaxNorm", "UnitNorm"])
def test_after_an_sgd_step(kind):
    model = net()
    constraints = Constraints(model, MaxNorm(1.0) if kind == "MaxNorm" else UnitNorm())
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    x = torch.randn(8, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
        norms = torch.cat([_row_norms(p) for _, p in constraints.named_parameters()])
        if kind == "MaxNorm":
            assert (norms > 1.0).any()  # the step left the set
        else:
            assert ((norms - 1.0).abs() > UNIT_NORM_TOL).any()
        constraints.apply_()
        norms = torch.cat([_row_norms(p) for _, p in constraints.named_parameters()])
        if kind == "MaxNorm":
            assert (norms <= 1.0).all(), norms
        else:
            torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=UNIT_NORM_TOL)
