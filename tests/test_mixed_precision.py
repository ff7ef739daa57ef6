"""Mixed precision: penalties compute in float32 (or the parameter's wider dtype) under autocast
and for half-precision parameters; ``reg()``'s dtype is decided at call time. References are
float64 computations on the same (rounded) values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regtorch import L1, L2, ElasticNet, GroupLasso, Orthogonal, Regularizer

# A float32 reduction of 512 terms: ~1e-7 relative, measured below 1e-6 with margin.
FLOAT32_RTOL = 1e-6
# A gradient stored in bfloat16 / float16 (the parameter's dtype): within two units in the last
# place (eps = 2^-7 / 2^-10), as the backward rounds to the parameter's dtype more than once.
HALF_GRAD_RTOL = {torch.bfloat16: 2 ** -6, torch.float16: 2 ** -9}

PENALTIES = {
    "L1": L1(0.1),
    "L2": L2(0.3),
    "ElasticNet": ElasticNet(0.1, 0.2),
    "GroupLasso-rows": GroupLasso(0.2),
    "GroupLasso-columns": GroupLasso(0.2, groups="columns"),
    "Orthogonal-rows": Orthogonal(0.5),
    "Orthogonal-columns": Orthogonal(0.5, mode="columns"),
}


def weight(dtype: torch.dtype) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(16, 32).to(dtype).requires_grad_()


def reference(penalty, w: torch.Tensor) -> tuple[float, torch.Tensor]:
    w64 = w.detach().double().requires_grad_()
    value = penalty.value([w64])
    (grad,) = torch.autograd.grad(value, [w64])
    return value.item(), grad


@pytest.mark.parametrize("name", PENALTIES)
@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16, None],
                         ids=["autocast-bf16", "autocast-fp16", "no-autocast"])
def test_float32_parameters_under_autocast_match_float64(name, autocast):
    penalty = PENALTIES[name]
    w = weight(torch.float32)
    expected, expected_grad = reference(penalty, w)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        value = penalty.value([w])
    (grad,) = torch.autograd.grad(value, [w])  # backward outside autocast, as torch recommends
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        fused = torch.zeros_like(w)
        reported = penalty.add_grad_([w.detach()], [fused], value=True)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, rel=FLOAT32_RTOL)
    assert reported.item() == pytest.approx(expected, rel=FLOAT32_RTOL)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=FLOAT32_RTOL, atol=1e-9)
    torch.testing.assert_close(fused.double(), expected_grad, rtol=FLOAT32_RTOL, atol=1e-9)


@pytest.mark.parametrize("name", PENALTIES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_parameters_compute_in_float32(name, dtype):
    penalty = PENALTIES[name]
    w = weight(dtype)
    expected, expected_grad = reference(penalty, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = penalty.value([w])
    assert value.item() == pytest.approx(expected, rel=FLOAT32_RTOL)
    (grad,) = torch.autograd.grad(value, [w])
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.double(), expected_grad, rtol=HALF_GRAD_RTOL[dtype],
                               atol=1e-6)


def test_orthogonal_gram_matrix_is_not_computed_in_bf16_under_autocast():
    """The defect of issue 12: the Gram matrix ran in bf16 (value 2.2e-3 off)."""
    torch.manual_seed(1)
    model = nn.Linear(64, 48)
    reg = Regularizer(model, Orthogonal(1.0))
    expected, _ = reference(Orthogonal(1.0), model.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(4, 64)).float().pow(2).mean() + reg()
    assert out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert reg().item() == pytest.approx(expected, rel=FLOAT32_RTOL)


def test_loss_term_dtype_follows_the_parameters_at_call_time():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    reg = Regularizer(model, L2(0.1))
    assert reg().dtype == torch.float32
    model.double()
    assert reg().dtype == torch.float64  # not fixed at construction
    model.bfloat16()
    assert reg().dtype == torch.float32  # computed in float32; a bf16 loss + reg() is float32
    loss = model(torch.randn(2, 4, dtype=torch.bfloat16)).sum()
    assert (loss + reg()).dtype == torch.float32
    model.float()
    assert reg().dtype == torch.float32
