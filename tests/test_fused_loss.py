"""Loss mode (regtorch._fused.penalty_term): the C++ node (with the fused kernel) and the Python
autograd.Function (without it) give the same values and gradients as autograd through
``penalty.value``, in every way a gradient is taken; the autograd path itself is kept under
torch.func transforms, torch.compile tracing and for penalties without a closed form.

The reference is always autograd through ``penalty.value`` on detached copies, with the same data
loss, so the hook's in-place addition into the data gradient is checked against autograd's own
summation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import grad, vmap

from regtorch import L1, L2, ElasticNet, GroupLasso, Orthogonal, Regularizer
from regtorch._fused import _build, loss, penalty_term
from regtorch._fused.loss import node_term, uses_function, uses_kernel_node

RTOL = 1e-12
ATOL = 1e-14
# float32: the node's gradient is lam·w (one rounding) where autograd through the value computes
# (0.5·lam·2)·w in several float32 steps, and adds it to the data gradient: an ulp apart.
FLOAT32_RTOL = 3e-7
FLOAT32_ATOL = 1e-7
# The value: the C++ node sums float32 weights in float32 blocks of 16 per lane added in
# float64; the Function's value comes from add_grad_(value=True); penalty.value sums float32
# chunks added in float64 (each within ~1e-7 of the float64 sum on these sizes).
FLOAT32_VALUE_RTOL = 1e-6

PENALTIES = [pytest.param(p, id=name) for name, p in [
    ("L2", L2(0.3)), ("L1", L1(0.2)), ("ElasticNet", ElasticNet(0.2, 0.5)),
    ("GroupLasso-rows", GroupLasso(0.3)), ("GroupLasso-columns", GroupLasso(0.3, "columns")),
    ("L1+GroupLasso", L1(0.1) + GroupLasso(0.2, "tensor", "none")),
]]
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]
NODE_NAMES = {"node": "PenaltyTermBackward", "function": "_PenaltyTermBackward"}


@pytest.fixture(params=["node", "function"])
def path(request, monkeypatch):
    """Each test runs on the C++ node (kernel built) and on the Python Function (no kernel)."""
    if request.param == "node":
        kernel = _build.load_kernel()
        if kernel is None:
            if _build.disabled():
                pytest.skip(f"the fused kernel is disabled ({_build.ENV_DISABLE}=0)")
            if _build._compiler() is None:
                pytest.skip("no C++ compiler: the fused kernel cannot be built here")
            pytest.fail("the fused kernel failed to build")
    else:
        monkeypatch.setattr(loss, "load_kernel", lambda: None)
    return request.param


def leaves(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(5, 7), (4, 3, 2, 2), (6, 3)]
    out = [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes]
    out[0][1] = 0.0  # a zero row: group lasso's gradient at exactly 0, sign(0)
    return [t.requires_grad_() for t in out]


def data_loss(params):
    """A loss whose gradients are fresh tensors (as a model's are), one of them a view."""
    x = torch.linspace(-1.0, 1.0, 7, dtype=params[0].dtype)
    return ((params[0] @ x).sin().sum() + params[1].cos().sum()
            + (params[2].t() * 0.5).square().sum())


def copies(params):
    return [p.detach().clone().requires_grad_(p.requires_grad) for p in params]


def reference(penalty, params, scale=1.0, data=True):
    """Value and gradients by autograd through ``penalty.value`` (the plain path)."""
    mine = copies(params)
    value = penalty.value([p for p in mine if p.requires_grad])
    total = scale * value + (data_loss(mine) if data else 0.0)
    total.backward()
    return value.detach(), [p.grad for p in mine]


def tolerances(dtype):
    return (RTOL, ATOL) if dtype == torch.float64 else (FLOAT32_RTOL, FLOAT32_ATOL)


def check(got, want, dtype):
    rtol, atol = tolerances(dtype)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
        else:
            torch.testing.assert_close(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize("data", [True, False], ids=["with-data-loss", "term-alone"])
@pytest.mark.parametrize("scale", [1.0, -2.5], ids=["dloss=1", "dloss=-2.5"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_backward_equals_autograd(path, penalty, dtype, scale, data):
    params = leaves(dtype)
    value = penalty_term(penalty, params)
    assert value.grad_fn.name() == NODE_NAMES[path]
    total = scale * value + (data_loss(params) if data else 0.0)
    total.backward()
    want_value, want_grads = reference(penalty, params, scale, data)
    value_rtol = RTOL if dtype == torch.float64 else FLOAT32_VALUE_RTOL
    torch.testing.assert_close(value.detach(), want_value, atol=ATOL, rtol=value_rtol)
    check([p.grad for p in params], want_grads, dtype)


@pytest.mark.parametrize("penalty", PENALTIES)
def test_autograd_grad_equals_autograd(path, penalty):
    params = leaves(torch.float64)
    got = torch.autograd.grad(0.5 * penalty_term(penalty, params) + data_loss(params), params)
    _, want = reference(penalty, params, 0.5)
    check(got, want, torch.float64)
    assert all(p.grad is None for p in params)  # autograd.grad never touches .grad


def test_autograd_grad_of_some_inputs_leaves_the_others_alone(path):
    params = leaves(torch.float64)
    term = penalty_term(ElasticNet(0.2, 0.5), params)
    (got,) = torch.autograd.grad(term + data_loss(params), [params[1]], retain_graph=True)
    _, want = reference(ElasticNet(0.2, 0.5), params)
    torch.testing.assert_close(got, want[1], rtol=RTOL, atol=ATOL)
    # a later backward of the same graph: every parameter gets exactly one contribution
    (term + data_loss(params)).backward(inputs=[params[0]])
    torch.testing.assert_close(params[0].grad, want[0], rtol=RTOL, atol=ATOL)
    assert params[1].grad is None and params[2].grad is None


@pytest.mark.parametrize("penalty", [pytest.param(ElasticNet(0.2, 0.5), id="ElasticNet"),
                                     pytest.param(GroupLasso(0.3, "columns"), id="GroupLasso")])
def test_double_backward_equals_autograd(path, penalty):
    params = [p.detach().add(0.1).requires_grad_() for p in leaves(torch.float64)]  # no 0 group
    value = penalty_term(penalty, params)
    first = torch.autograd.grad(value + data_loss(params), params, create_graph=True)
    second = torch.autograd.grad(sum((g * g).sum() for g in first), params)
    mine = copies(params)
    want_first = torch.autograd.grad(penalty.value(mine) + data_loss(mine), mine,
                                     create_graph=True)
    want_second = torch.autograd.grad(sum((g * g).sum() for g in want_first), mine)
    check(first, want_first, torch.float64)
    check(second, want_second, torch.float64)


def test_gradients_accumulate_over_backwards_and_retained_graphs(path):
    params = leaves(torch.float64)
    penalty = L1(0.1) + GroupLasso(0.2)
    for p in params:
        p.grad = torch.ones_like(p)  # an existing gradient (accumulation over micro-batches)
    total = 0.5 * penalty_term(penalty, params) + data_loss(params)
    total.backward(retain_graph=True)
    total.backward()  # the same graph twice
    (penalty_term(penalty, params) + data_loss(params)).backward()  # a second graph
    _, once = reference(penalty, params, 0.5)
    _, full = reference(penalty, params, 1.0)
    check([p.grad for p in params], [1.0 + 2 * a + b for a, b in zip(once, full)],
          torch.float64)


def test_another_backward_through_the_parameters_gets_no_penalty(path):
    """Only the backward pass that runs the penalty's node gets its gradient."""
    params = leaves(torch.float64)
    term = penalty_term(L2(0.3), params)
    data_loss(params).backward()  # the term's graph is alive but not part of this backward
    _, data_only = reference(L2(0.0), params)
    check([p.grad for p in params], data_only, torch.float64)
    term.backward()
    _, want = reference(L2(0.3), params)
    check([p.grad for p in params], want, torch.float64)


def test_a_gradient_shared_between_parameters_is_not_modified_in_place(path):
    a, b = (torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    # AddBackward hands one gradient tensor to both a and b
    ((a + b).sum() + penalty_term(L2(0.3), [a])).backward()
    torch.testing.assert_close(b.grad, torch.ones_like(b), rtol=0, atol=0)
    torch.testing.assert_close(a.grad, 1.0 + 0.3 * a.detach(), rtol=RTOL, atol=ATOL)


def test_user_hooks_see_the_summed_gradient_as_with_autograd(path):
    params = leaves(torch.float64)
    seen = []
    params[0].register_hook(lambda g: seen.append(g.clone()))
    (penalty_term(L2(0.3), params) + data_loss(params)).backward()
    _, want = reference(L2(0.3), params)
    torch.testing.assert_close(seen[0], want[0], rtol=RTOL, atol=ATOL)


def test_frozen_parameters_get_no_gradient(path):
    params = leaves(torch.float64)
    params[1].requires_grad_(False)
    (penalty_term(L2(0.3), [params[0], params[2]]) + data_loss(params)).backward()
    mine = copies(params)
    (L2(0.3).value([mine[0], mine[2]]) + data_loss(mine)).backward()
    assert params[1].grad is None
    check([params[0].grad, params[2].grad], [mine[0].grad, mine[2].grad], torch.float64)


def test_non_leaf_tensors_get_an_ordinary_gradient(path):
    base = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    scaled = base * 2.0  # a non-leaf "parameter" (e.g. a reparametrized weight)
    penalty_term(ElasticNet(0.2, 0.5), [scaled]).backward()
    want = 2.0 * (0.2 * torch.sign(2.0 * base.detach()) + 0.5 * 2.0 * base.detach())
    torch.testing.assert_close(base.grad, want, rtol=RTOL, atol=ATOL)


def test_mixed_dtypes_in_one_rule(path):
    params = [torch.randn(6, 5, dtype=torch.float64, requires_grad=True),
              torch.randn(4, 5, dtype=torch.float32, requires_grad=True)]
    value = penalty_term(GroupLasso(0.3), params)
    value.backward()
    _, want = reference(GroupLasso(0.3), params, data=False)
    torch.testing.assert_close(params[0].grad, want[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(params[1].grad, want[1], rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)


def test_node_returns_the_requested_dtype_without_a_cast(path):
    params = leaves(torch.float32)
    value = penalty_term(L2(0.3), params, torch.float32)
    want = L2(0.3).value([p.detach() for p in params])
    if path == "node":
        assert value.dtype == torch.float32 and value.grad_fn.name() == "PenaltyTermBackward"
    torch.testing.assert_close(value.double(), want, rtol=FLOAT32_VALUE_RTOL, atol=0)


@pytest.mark.parametrize("size", [1, 31, 33, 16 * 32 + 17, 2**18 + 13])
def test_float32_value_is_accurate_against_numpy(path, size):
    """Block float32 sums stay within 1e-6 of the float64 sum, for sizes that end in a partial
    row of lanes and a partial block (masked in) and a large one; per row for a group lasso."""
    generator = torch.Generator().manual_seed(size)
    w = (torch.rand(size, generator=generator, dtype=torch.float64) - 0.3).float()
    x = w.double().numpy()
    got = [penalty_term(p, [w.requires_grad_()]).item() for p in (L2(1.0), L1(1.0))]
    np.testing.assert_allclose(got, [0.5 * np.sum(x * x), np.sum(np.abs(x))],
                               rtol=FLOAT32_VALUE_RTOL, atol=0)
    rows = w[: size - size % 3].reshape(3, -1) if size >= 3 else w.reshape(1, -1)
    got = penalty_term(GroupLasso(1.0, scale="none"), [rows.detach().requires_grad_()]).item()
    want = np.sum(np.sqrt(np.sum(rows.detach().double().numpy() ** 2, axis=1)))
    np.testing.assert_allclose(got, want, rtol=FLOAT32_VALUE_RTOL, atol=0)


def test_float64_value_equals_numpy(path):
    w = torch.randn(16 * 32 + 17, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = w.numpy()
    got = [penalty_term(p, [w.clone().requires_grad_()]).item() for p in (L2(1.0), L1(1.0))]
    np.testing.assert_allclose(got, [0.5 * np.sum(x * x), np.sum(np.abs(x))], rtol=RTOL, atol=0)


@pytest.mark.parametrize("penalty", [
    pytest.param(GroupLasso(0.3), id="rows"),
    pytest.param(GroupLasso(0.3, "tensor"), id="tensor"),
    pytest.param(GroupLasso(0.3, scale="none") + L1(0.1), id="rows-unscaled+L1")])
def test_group_coefficients_of_odd_shapes(path, penalty):
    """The node derives c_g from the shapes: 1-D and 0-d tensors, a zero-size one, 4-D."""
    generator = torch.Generator().manual_seed(2)
    shapes = [(6,), (), (0, 3), (3, 2, 2, 2)]
    params = [torch.randn(s, generator=generator, dtype=torch.float64).requires_grad_()
              for s in shapes]
    value = penalty_term(penalty, params)
    value.backward()
    want_value, want_grads = reference(penalty, params, data=False)
    torch.testing.assert_close(value.detach(), want_value, rtol=RTOL, atol=ATOL)
    check([p.grad for p in params], want_grads, torch.float64)


def test_value_under_no_grad_and_orthogonal_take_the_plain_path():
    params = leaves(torch.float64)
    assert not uses_function(Orthogonal(0.1), params[:1])
    value = penalty_term(Orthogonal(0.1), params[:1])
    assert "PenaltyTerm" not in value.grad_fn.name()
    with torch.no_grad():
        assert not uses_function(L2(0.1), params)
        assert penalty_term(L2(0.1), params).grad_fn is None
    assert not uses_function(L2(0.1), [])
    assert float(penalty_term(L2(0.1), [])) == 0.0
    assert not uses_function(L2(0.1), [p.detach() for p in params])


@pytest.mark.parametrize("penalty", PENALTIES)
def test_under_torch_func_grad_the_autograd_path(penalty):
    params = [p.detach() for p in leaves(torch.float64)]

    def objective(ps):
        assert not uses_function(penalty, ps)
        return penalty_term(penalty, ps) + data_loss(ps)

    got = grad(objective)(params)
    _, want = reference(penalty, [p.clone().requires_grad_() for p in params])
    check(got, want, torch.float64)


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


def test_stacked_strengths_use_the_python_function():
    stacked = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    assert not uses_kernel_node(L2(lam), [stacked])
    value = penalty_term(L2(lam), [stacked])
    assert value.grad_fn.name() == "_PenaltyTermBackward"
    value.backward()
    torch.testing.assert_close(stacked.grad, lam.view(3, 1, 1) * stacked.detach(), rtol=RTOL,
                               atol=ATOL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_regularizer_call_is_one_node_in_the_loss_dtype(path, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)
    x = torch.randn(8, 6, dtype=dtype)
    reg = Regularizer(model, ElasticNet(0.01, 0.1))
    term = reg()
    assert term.dtype == dtype
    assert term.grad_fn.name() == (NODE_NAMES[path] if path == "node" or dtype == torch.float64
                                   else "ToCopyBackward0")
    (model(x).square().mean() + term).backward()
    got = [p.grad.clone() for p in model.parameters()]
    twin = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)
    twin.load_state_dict(model.state_dict())
    penalty = reg.rules[0][1]
    (twin(x).square().mean() + penalty.value([twin[0].weight, twin[2].weight])).backward()
    check(got, [p.grad for p in twin.parameters()], dtype)


def test_regularizer_with_two_rules(path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    reg = Regularizer(model, {"0.*": GroupLasso(0.1), "2.weight": L1(0.05)})
    reg().backward()
    want = (0.1 * math.sqrt(6) * model[0].weight.detach()
            / model[0].weight.detach().norm(dim=1, keepdim=True))
    torch.testing.assert_close(model[0].weight.grad, want, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(model[2].weight.grad, 0.05 * model[2].weight.detach().sign(),
                               rtol=RTOL, atol=ATOL)


def test_regularizer_call_under_vmap_of_grad_takes_autograd():
    from torch.func import functional_call, stack_module_state

    torch.manual_seed(0)
    models = [nn.Linear(4, 3).double() for _ in range(3)]
    params, _ = stack_module_state(models)
    reg = Regularizer(models[0], L1(0.1) + L2(0.2))
    x = torch.randn(8, 4, dtype=torch.float64)

    def objective(p):
        out = functional_call(models[0], p, (x,))
        rebound = Regularizer(models[0], reg.rules[0][1], parameters=p)
        return out.square().mean() + rebound()

    got = vmap(grad(objective))(params)
    for k, m in enumerate(models):
        m.zero_grad()
        (m(x).square().mean() + Regularizer(m, reg.rules[0][1])()).backward()
        torch.testing.assert_close(got["weight"][k], m.weight.grad, rtol=RTOL, atol=ATOL)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2), nn.Linear(2, 3))


def _assign_strength(model, reg):
    reg.rules[0][1].terms[0].lam = 0.7  # a strength replaced during training


def _freeze(model, reg):
    model[2].weight.requires_grad_(False)


def _unfreeze(model, reg):
    model[2].weight.requires_grad_(False)
    reg()  # a call while it is frozen
    model[2].weight.requires_grad_(True)


def _to_float64(model, reg):
    model.double()


def _new_shape(model, reg):
    model[2].weight.data = torch.randn(4, 5)  # p.data replaced: another group size


CHANGES = [pytest.param(f, id=f.__name__.lstrip("_")) for f in
           (_assign_strength, _freeze, _unfreeze, _to_float64, _new_shape)]


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("penalty", [pytest.param(lambda: L1(0.05) + L2(0.2), id="ElasticNet"),
                                     pytest.param(lambda: GroupLasso(0.3) + L2(0.1),
                                                  id="GroupLasso+L2")])
def test_regularizer_call_follows_changes_between_calls(path, penalty, change):
    """reg() keeps nothing between calls that a change could make stale: strengths, the
    trainable set, dtypes and shapes are read at each call."""
    model = _model()
    reg = Regularizer(model, penalty())
    reg().backward()  # a first call, before the change
    change(model, reg)
    model.zero_grad(set_to_none=True)
    term = reg()
    term.backward()
    dtype = model[0].weight.dtype
    assert term.dtype == dtype
    weights = [model[i].weight for i in (0, 2, 3) if model[i].weight.requires_grad]
    want_value, want_grads = reference(reg.rules[0][1], weights, data=False)
    rtol = RTOL if dtype == torch.float64 else FLOAT32_VALUE_RTOL
    torch.testing.assert_close(term.detach().double(), want_value, rtol=rtol, atol=ATOL)
    check([w.grad for w in weights], want_grads, dtype)
    assert model[2].weight.requires_grad or model[2].weight.grad is None


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("penalty", PENALTIES)
def test_regularizer_call_without_grad_mode_is_the_value_from_the_node(penalty, dtype, mode,
                                                                       monkeypatch):
    """Under no_grad / inference_mode reg() is R(w) of the trainable weights, from the C++
    pass (the pure-PyTorch value is never asked for), a plain tensor in the loss dtype."""
    if _build.load_kernel() is None:
        pytest.skip("no fused kernel here: reg() under no_grad is penalty.value (tested above)")
    model = _model().to(dtype)
    model[2].weight.requires_grad_(False)  # frozen: not in the value
    reg = Regularizer(model, penalty)
    weights = [model[i].weight for i in (0, 3)]
    want, _ = reference(penalty, weights, data=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the pure-PyTorch value was used")

    monkeypatch.setattr(type(penalty), "value", refuse)
    with mode():
        term = reg()
    assert term.grad_fn is None and not term.requires_grad and term.dtype == dtype
    rtol = RTOL if dtype == torch.float64 else FLOAT32_VALUE_RTOL
    torch.testing.assert_close(term.double(), want, rtol=rtol, atol=ATOL)


def test_regularizer_call_falls_back_where_the_node_cannot_go():
    """The fast path hands back None and reg() takes the documented fallbacks: no gradient
    anywhere, a parameter of another type, a half-precision parameter, a [K] strength."""
    model = _model()
    reg = Regularizer(model, L2(0.2))
    weights = [model[i].weight for i in (0, 2, 3)]
    for w in weights:
        w.requires_grad_(False)
    assert node_term(reg.rules[0][1], weights) is None
    assert reg().grad_fn is None and float(reg()) == 0.0
    for w in weights:
        w.requires_grad_(True)

    class Tagged(nn.Parameter):
        pass

    model[3].weight = Tagged(model[3].weight.detach().clone())
    tagged = Regularizer(model, L2(0.2))
    assert node_term(tagged.rules[0][1], list(tagged.parameters())) is None
    cast = tagged().grad_fn  # the Function's float64 value, cast to the loss dtype
    assert cast.next_functions[0][0].name() == "_PenaltyTermBackward"
    model[3].half()
    assert node_term(L2(0.2), [model[0].weight, model[3].weight]) is None
    assert node_term(L2(torch.tensor([0.1, 0.2])), [model[0].weight]) is None
