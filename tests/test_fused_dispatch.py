"""The penalties' dispatch point (penalties._kernel): the fused kernel when it is built and the
call is one it covers, else the pure-PyTorch path; both ways give the same results (gradients
bit for bit, values within float64 accumulation; group lasso within 2 ulp)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regtorch import L1, L2, ElasticNet, GroupLasso, Regularizer, penalties
from regtorch._fused import _build

RTOL = 1e-12
ATOL = 1e-14
# the lean path sums float32 values in float32 pieces (≤ 8e-7 of float64, _reduce.py); the
# kernel in float64
FLOAT32_VALUE_RTOL = 1e-6
# float32 group norms: rounded from a float64 sum (kernel) or summed in float32 (lean path)
GROUP_FLOAT32_RTOL = 1e-6
# ... and where g + Δ cancels, an ulp of the gradient's magnitude (|g| up to ~4 here)
GROUP_FLOAT32_ATOL = 5e-7

PENALTIES = [pytest.param(p, id=n) for n, p in [
    ("L2", L2(0.3)), ("L1", L1(0.2)), ("ElasticNet", ElasticNet(0.2, 0.5)),
    ("GroupLasso-rows", GroupLasso(0.3)), ("GroupLasso-columns", GroupLasso(0.3, "columns")),
    ("GroupLasso-tensor", GroupLasso(0.3, "tensor", "none"))]]
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


@pytest.fixture(scope="module")
def built():
    if _build.load_kernel() is None:
        pytest.skip("the fused kernel is unavailable (no C++ compiler, or REGTORCH_FUSED=0)")


@pytest.fixture
def lean(monkeypatch):
    """Force the pure-PyTorch path."""
    def use_lean():
        monkeypatch.setattr(penalties._fused, "load_kernel", lambda: None)
    return use_lean


def tensors(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype)
           for s in [(33, 17), (4, 3, 5, 2), (200, 78)]]
    out[0][1] = 0.0
    return out


def both_ways(penalty, dtype, lean):
    params, grads = tensors(dtype), tensors(dtype, seed=1)
    assert penalties._kernel(params, *penalty.strengths().values()) is not None
    fused_grads = [g.clone() for g in grads]
    fused_value = penalty.add_grad_(params, fused_grads, value=True)
    lean()
    assert penalties._kernel(params, 0.1) is None
    lean_grads = [g.clone() for g in grads]
    lean_value = penalty.add_grad_(params, lean_grads, value=True)
    return fused_grads, fused_value, lean_grads, lean_value


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_add_grad_both_ways(built, lean, penalty, dtype):
    fused_grads, fused_value, lean_grads, lean_value = both_ways(penalty, dtype, lean)
    float32 = dtype == torch.float32
    for a, b in zip(fused_grads, lean_grads):
        if isinstance(penalty, GroupLasso):
            torch.testing.assert_close(a, b, rtol=GROUP_FLOAT32_RTOL if float32 else RTOL,
                                       atol=GROUP_FLOAT32_ATOL if float32 else ATOL)
        else:
            assert torch.equal(a, b)
    torch.testing.assert_close(fused_value, lean_value, atol=ATOL,
                               rtol=FLOAT32_VALUE_RTOL if float32 else RTOL)
    exact = penalty.value([p.to(torch.float64) for p in tensors(dtype)])
    torch.testing.assert_close(fused_value, exact, rtol=RTOL, atol=ATOL)  # float64 accumulation


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", [pytest.param(L2(0.3), id="L2"), pytest.param(L1(0.2), id="L1"),
                                     pytest.param(ElasticNet(0.2, 0.5), id="ElasticNet")])
def test_prox_with_float_steps_both_ways(built, lean, penalty, dtype):
    steps = [0.5, 1.0, 2.5]
    fused_params = tensors(dtype)
    penalty.prox_(fused_params, steps)
    lean()
    lean_params = tensors(dtype)
    penalty.prox_(lean_params, steps)
    for a, b in zip(fused_params, lean_params):
        assert torch.equal(a, b)


def test_regularizer_add_grad_both_ways(built, lean):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    x = torch.randn(8, 20)

    def grads_and_value():
        model.zero_grad()
        model(x).square().mean().backward()
        reg = Regularizer(model, ElasticNet(1e-3, 1e-2))
        value = reg.add_grad_(value=True)
        return [p.grad.clone() for p in model.parameters()], value

    fused_grads, fused_value = grads_and_value()
    lean()
    lean_grads, lean_value = grads_and_value()
    for a, b in zip(fused_grads, lean_grads):
        assert torch.equal(a, b)
    torch.testing.assert_close(fused_value, lean_value, rtol=FLOAT32_VALUE_RTOL, atol=ATOL)


def test_what_keeps_the_lean_path(built):
    w = torch.randn(4, 3)
    assert penalties._kernel([w], 0.1) is not None
    assert penalties._kernel([], 0.1) is None
    assert penalties._kernel([w], torch.tensor([0.1, 0.2, 0.3, 0.4])) is None  # [K] strength
    assert penalties._kernel([w.half()], 0.1) is None
    assert penalties._kernel([w.bfloat16()], 0.1) is None
    assert penalties._kernel([torch.randn(4, 3, device="meta")], 0.1) is None

    def under_vmap(row):
        assert penalties._kernel([row], 0.1) is None
        return row.sum()

    torch.func.vmap(under_vmap)(w)


def test_a_truthy_value_argument_is_accepted(built):
    # integrations pass e.g. a logger method as ``value``; the kernel's schema takes a bool
    w, g = torch.ones(3), torch.zeros(3)
    total = L2(0.5).add_grad_([w], [g], value=print)
    assert float(total) == 0.75 and g.tolist() == [0.5, 0.5, 0.5]
    assert L2(0.5).add_grad_([w], [g], value=0) is None
