"""Loss mode as one autograd.Function (regtorch._fused.penalty_term): the same value and
gradients as autograd through ``penalty.value``, and the autograd path itself under torch.func
transforms, torch.compile tracing, double backward and penalties without a closed form."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from regtorch import L1, L2, ElasticNet, GroupLasso, Orthogonal
from regtorch._fused import penalty_term
from regtorch._fused.loss import uses_function

RTOL = 1e-12
ATOL = 1e-14
# float32: the Function's gradient is lam·w (one rounding) where autograd through the value
# computes it as (0.5·lam·2)·w in several float32 steps: an ulp apart.
FLOAT32_RTOL = 3e-7
FLOAT32_ATOL = 1e-7
# The Function's value comes from add_grad_(value=True); for a float32 group lasso that sums
# float32 group norms where penalty.value() sums them in float64.
FLOAT32_VALUE_RTOL = 1e-7

PENALTIES = [pytest.param(p, id=name) for name, p in [
    ("L2", L2(0.3)), ("L1", L1(0.2)), ("ElasticNet", ElasticNet(0.2, 0.5)),
    ("GroupLasso-rows", GroupLasso(0.3)), ("GroupLasso-columns", GroupLasso(0.3, "columns")),
    ("L1+GroupLasso", L1(0.1) + GroupLasso(0.2, "tensor", "none")),
]]
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


def leaves(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(5, 7), (4, 3, 2, 2), (6, 3)]
    out = [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes]
    out[0][1] = 0.0  # a zero row: group lasso's gradient at exactly 0, sign(0)
    return [t.requires_grad_() for t in out]


def autograd_reference(penalty, params, scale=1.0):
    copies = [p.detach().clone().requires_grad_() for p in params]
    value = penalty.value(copies)
    (scale * value).backward()
    return value.detach(), [c.grad for c in copies]


def tolerances(dtype):
    return (RTOL, ATOL) if dtype == torch.float64 else (FLOAT32_RTOL, FLOAT32_ATOL)


@pytest.mark.parametrize("scale", [1.0, -2.5], ids=["dloss=1", "dloss=-2.5"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_value_and_gradients_equal_autograd(penalty, dtype, scale):
    params = leaves(dtype)
    value = penalty_term(penalty, params)
    assert type(value.grad_fn).__name__ == "_PenaltyTermBackward"
    (scale * value).backward()
    want_value, want_grads = autograd_reference(penalty, params, scale)
    assert value.dtype == torch.float64
    rtol, atol = tolerances(dtype)
    torch.testing.assert_close(value.detach(), want_value, atol=ATOL,
                               rtol=RTOL if dtype == torch.float64 else FLOAT32_VALUE_RTOL)
    for p, want in zip(params, want_grads):
        torch.testing.assert_close(p.grad, want, rtol=rtol, atol=atol)


def test_gradient_accumulates_into_existing_grad_and_skips_frozen():
    params = leaves(torch.float64)
    params[1].requires_grad_(False)
    params[0].grad = torch.ones_like(params[0])
    penalty_term(L2(0.3), params).backward()
    torch.testing.assert_close(params[0].grad, 1.0 + 0.3 * params[0].detach(), rtol=RTOL,
                               atol=ATOL)
    assert params[1].grad is None
    torch.testing.assert_close(params[2].grad, 0.3 * params[2].detach(), rtol=RTOL, atol=ATOL)


def test_double_backward_is_autograds():
    params = leaves(torch.float64)
    value = penalty_term(ElasticNet(0.2, 0.5), params)
    first = torch.autograd.grad(value, params, create_graph=True)
    second = torch.autograd.grad(sum((g * g).sum() for g in first), params)
    copies = [p.detach().clone().requires_grad_() for p in params]
    want_first = torch.autograd.grad(ElasticNet(0.2, 0.5).value(copies), copies,
                                     create_graph=True)
    want_second = torch.autograd.grad(sum((g * g).sum() for g in want_first), copies)
    for got, want in zip(second, want_second):
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("penalty", PENALTIES)
def test_under_torch_func_grad_the_autograd_path(penalty):
    params = [p.detach() for p in leaves(torch.float64)]

    def loss(ps):
        assert not uses_function(penalty, ps)
        return penalty_term(penalty, ps)

    got = grad(loss)(params)
    _, want = autograd_reference(penalty, params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL)


def test_under_vmap_of_grad_stacked_members():
    """The lab's shape: K members stacked [K, ...], per-member gradients by vmap(grad)."""
    stacked = torch.randn(4, 5, 3, dtype=torch.float64)
    penalty = L1(0.2) + L2(0.4)

    def member_loss(w):
        return penalty_term(penalty, [w]) + (w.sin()).sum()

    got = vmap(grad(member_loss))(stacked)
    for k in range(4):
        w = stacked[k].clone().requires_grad_()
        (penalty.value([w]) + w.sin().sum()).backward()
        torch.testing.assert_close(got[k], w.grad, rtol=RTOL, atol=ATOL)


def test_orthogonal_and_no_grad_take_the_plain_path():
    params = leaves(torch.float64)
    assert not uses_function(Orthogonal(0.1), params[:1])
    value = penalty_term(Orthogonal(0.1), params[:1])
    assert type(value.grad_fn).__name__ != "_PenaltyTermBackward"
    with torch.no_grad():
        assert not uses_function(L2(0.1), params)
        assert penalty_term(L2(0.1), params).grad_fn is None
    assert not uses_function(L2(0.1), [])
    assert float(penalty_term(L2(0.1), [])) == 0.0
    assert not uses_function(L2(0.1), [p.detach() for p in params])


def test_stacked_strengths_use_the_function():
    stacked = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    value = penalty_term(L2(lam), [stacked])
    value.backward()
    want = lam.view(3, 1, 1) * stacked.detach()
    torch.testing.assert_close(stacked.grad, want, rtol=RTOL, atol=ATOL)


def test_regularizer_call_is_one_function_node_with_autograds_gradients():
    from torch import nn

    from regtorch import Regularizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    reg = Regularizer(model, ElasticNet(0.01, 0.1))
    term = reg()  # float64 parameters: no cast node after the Function
    assert type(term.grad_fn).__name__ == "_PenaltyTermBackward"
    term.backward()
    got = [p.grad.clone() for p in reg.parameters()]
    want_value, want = autograd_reference(reg.rules[0][1], list(reg.parameters()))
    torch.testing.assert_close(term.detach(), want_value, rtol=RTOL, atol=ATOL)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL)


def test_regularizer_call_under_vmap_of_grad_takes_autograd():
    from torch import nn
    from torch.func import functional_call, stack_module_state

    from regtorch import Regularizer

    torch.manual_seed(0)
    models = [nn.Linear(4, 3).double() for _ in range(3)]
    params, _ = stack_module_state(models)
    reg = Regularizer(models[0], L1(0.1) + L2(0.2))
    x = torch.randn(8, 4, dtype=torch.float64)

    def loss(p):
        out = functional_call(models[0], p, (x,))
        rebound = Regularizer(models[0], reg.rules[0][1], parameters=p)
        return out.square().mean() + rebound()

    got = vmap(grad(loss))(params)
    for k, m in enumerate(models):
        m.zero_grad()
        (m(x).square().mean() + Regularizer(m, reg.rules[0][1])()).backward()
        torch.testing.assert_close(got["weight"][k], m.weight.grad, rtol=RTOL, atol=ATOL)
