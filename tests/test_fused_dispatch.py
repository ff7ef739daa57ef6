"""The penalties' dispatch point (penalties._kernel): the fused kernel when it is built and the
call is one it covers, else the pure-PyTorch path; both ways give the same results (gradients
bit for bit, values within float64 accumulation; group lasso within 2 ulp). And the same for the
proximal step attached to an optimizer (Proximal / attach_prox), which calls the kernel itself."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from regtorch import L1, L2, ElasticNet, GroupLasso, Proximal, Regularizer, attach_prox, penalties
from regtorch._fused import _build
from regtorch.optim import proximal

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


# -- the proximal step attached to an optimizer (regtorch.optim.proximal) ----------------------
# Proximal / attach_prox run the kernel's prox_step (one call per rule and param group, the
# effective step computed from the optimizer's state inside it) when it covers the case, else
# today's path: effective_steps() then reg.prox_. Both ways must agree (float64: 1e-12; the same
# exact zeros).

# float32: the kernel's √ is exactly rounded, torch's may be 1 ulp off; over a few steps of
# training those ulps grow by the optimizer's own dynamics (measured ≤ 3e-5 relative)
PROX_FLOAT32_RTOL = 1e-4
PROX_FLOAT32_ATOL = 1e-6
PROX_STEPS = 6

OPTIMIZERS = [pytest.param(make, id=name) for name, make in [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.1)),
    ("sgd-momentum", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.95))),
    ("amsgrad", lambda p: torch.optim.Adam(p, lr=0.05, amsgrad=True)),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.01)),
    ("adagrad", lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.05)),
    ("rmsprop", lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5)),
    ("adam-plain-lr", lambda p: (torch.optim.Adam(p, lr=0.05), {"preconditioned": False})),
]]
PROX_PENALTIES = [pytest.param(p, id=n) for n, p in [
    ("L1", L1(0.05)), ("L2", L2(0.3)), ("ElasticNet", ElasticNet(0.05, 0.3)),
    ("GroupLasso-rows", GroupLasso(0.5)), ("GroupLasso-columns", GroupLasso(0.5, "columns")),
    ("GroupLasso-tensor", GroupLasso(0.2, "tensor", "none")),
    ("sparse-group", L1(0.02) + GroupLasso(0.2) + L2(0.1))]]


@pytest.fixture
def prox_calls(monkeypatch):
    """Count the kernel's prox_step calls made by the proximal hook through the dispatcher
    (``_fused_prox_``; its one-call fast path, ``prox_call``, is switched off here and tested in
    tests/test_prox_call.py)."""
    ops = _build.load_kernel()
    calls = []
    monkeypatch.setattr(proximal._fused, "prox_module", lambda: None)

    def prox_step(*args):
        calls.append(len(args[0]))
        ops.prox_step(*args)

    monkeypatch.setattr(proximal._fused, "load_kernel", lambda: SimpleNamespace(
        prox_step=prox_step))
    return calls


def train_proximal(make_optimizer, penalty, dtype=torch.float64, steps=PROX_STEPS, rules=None,
                   attach=Proximal):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    made = make_optimizer(model.parameters())
    optimizer, options = made if isinstance(made, tuple) else (made, {})
    reg = Regularizer(model, copy.deepcopy(penalty) if rules is None else rules(model))
    stepper = attach(optimizer, reg, **options)
    if attach is not Proximal:
        stepper = optimizer
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=generator, dtype=torch.float64).to(dtype)
    y = torch.randn(16, 3, generator=generator, dtype=torch.float64).to(dtype)
    for _ in range(steps):
        stepper.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        stepper.step()
    return [p.detach().clone() for p in model.parameters()]


def assert_same_result(fused, lean_params, dtype=torch.float64):
    float32 = dtype == torch.float32
    for a, b in zip(fused, lean_params):
        torch.testing.assert_close(a, b, rtol=PROX_FLOAT32_RTOL if float32 else RTOL,
                                   atol=PROX_FLOAT32_ATOL if float32 else ATOL)
        if not float32:
            assert torch.equal(a == 0, b == 0)  # the same exact zeros


@pytest.mark.filterwarnings("ignore:.*mean step:UserWarning")
@pytest.mark.parametrize("penalty", PROX_PENALTIES)
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_proximal_both_ways(built, prox_calls, monkeypatch, make_optimizer, penalty):
    fused = train_proximal(make_optimizer, penalty)
    assert len(prox_calls) == PROX_STEPS  # one rule, one param group: one call per step
    monkeypatch.setattr(proximal._fused, "load_kernel", lambda: None)
    assert_same_result(fused, train_proximal(make_optimizer, penalty))
    # the threshold acted (Adam's plain lr·λ is too small to reach 0 in a few steps)
    plain_lr = isinstance(make_optimizer(nn.Linear(1, 1).parameters()), tuple)
    if not plain_lr and any(isinstance(t, L1) for t in penalty.terms):
        assert any((p == 0).any() for p in fused)


@pytest.mark.filterwarnings("ignore:.*mean step:UserWarning")
@pytest.mark.parametrize("penalty", [pytest.param(L1(0.05), id="L1"),
                                     pytest.param(GroupLasso(0.2), id="GroupLasso-rows")])
@pytest.mark.parametrize("make_optimizer", [OPTIMIZERS[0], OPTIMIZERS[2], OPTIMIZERS[5]])
def test_proximal_both_ways_float32(built, prox_calls, monkeypatch, make_optimizer, penalty):
    fused = train_proximal(make_optimizer, penalty, torch.float32)
    assert len(prox_calls) == PROX_STEPS
    monkeypatch.setattr(proximal._fused, "load_kernel", lambda: None)
    assert_same_result(fused, train_proximal(make_optimizer, penalty, torch.float32),
                       torch.float32)


def test_attach_prox_rules_and_param_groups_both_ways(built, prox_calls, monkeypatch):
    """Two rules (a group lasso and an elastic net) over two param groups with their own lr:
    one kernel call per (rule, group) that holds penalized tensors."""
    def rules(model):
        return {"0.weight": GroupLasso(0.2, "columns"), "2.weight": ElasticNet(0.05, 0.1)}

    def make(params):
        params = list(params)
        return torch.optim.Adam([{"params": params[:2], "lr": 0.05},
                                 {"params": params[2:], "lr": 0.01}])

    with pytest.warns(UserWarning, match="mean step"):
        fused = train_proximal(make, None, rules=rules, attach=attach_prox)
    assert prox_calls == [1, 1] * PROX_STEPS
    monkeypatch.setattr(proximal._fused, "load_kernel", lambda: None)
    with pytest.warns(UserWarning, match="mean step"):
        assert_same_result(fused, train_proximal(make, None, rules=rules, attach=attach_prox))


def _stacked_case():
    """The lab's K members: parameters stacked [K, ...] with [K] strengths."""
    params, _ = torch.func.stack_module_state([nn.Linear(5, 3) for _ in range(4)])
    params = {name: p.requires_grad_() for name, p in params.items()}
    reg = Regularizer(nn.Linear(5, 3), L1(torch.tensor([0.0, 0.01, 0.05, 0.1])),
                      parameters=params)
    return reg, torch.optim.Adam(list(params.values()), lr=0.05)


def _single_case(make_optimizer, dtype=torch.float32):
    model = nn.Linear(5, 3).to(dtype)
    return Regularizer(model, L1(0.05)), make_optimizer(model.parameters())


KEPT_ON_THE_PURE_PYTORCH_PATH = {
    "stacked-strength": _stacked_case,
    "bfloat16": lambda: _single_case(lambda p: torch.optim.Adam(p, lr=0.05), torch.bfloat16),
    "tensor-lr": lambda: _single_case(lambda p: torch.optim.Adam(p, lr=torch.tensor(0.05))),
    "centered-rmsprop": lambda: _single_case(lambda p: torch.optim.RMSprop(p, centered=True)),
}


@pytest.mark.parametrize("case", list(KEPT_ON_THE_PURE_PYTORCH_PATH))
def test_what_keeps_the_pure_pytorch_proximal_step(built, prox_calls, case):
    torch.manual_seed(0)
    reg, optimizer = KEPT_ON_THE_PURE_PYTORCH_PATH[case]()
    optimizer = Proximal(optimizer, reg)
    for p in reg.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert prox_calls == []  # today's path ran instead (tests/test_proximal.py covers it)
