"""The attached proximal step's fast path: one call into C++ per training step (``prox_call`` in
``regtorch/_fused/prox.cpp``, reached by ``ProxHandle._call_prox_``).

It must do exactly what the kernel path through the dispatcher does (``ProxHandle._fused_prox_``:
``_covered_calls``, ``_kernel_step``, ``_coefficient``, then ``prox_step``): the same parameters,
bit for bit, float32 and float64, for every optimizer family and penalty form; and whatever may
change between two steps (strengths, lr, eps, betas, amsgrad, momentum, dampening, centered,
lr_decay, which parameters have a gradient or require one, the optimizer's state object and
entries, dtypes, contiguity, param groups) must be read at that step, never cached. Where it does
not cover a case it answers ``None`` having changed nothing, and the Python path runs. That path
is itself tested against the optimizer's own step plus a NumPy prox (tests/test_fused.py,
tests/test_fused_dispatch.py, tests/test_proximal.py); here it is the reference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from regtorch import L1, L2, ElasticNet, GroupLasso, Proximal, Regularizer, _fused, attach_prox
from regtorch.optim import proximal

STEPS = 6

OPTIMIZERS = [pytest.param(make, id=name) for name, make in [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.1)),
    ("sgd-momentum", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.95))),
    ("amsgrad", lambda p: torch.optim.Adam(p, lr=0.05, amsgrad=True)),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.01)),
    ("adagrad", lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.05)),
    ("adagrad-no-decay", lambda p: torch.optim.Adagrad(p, lr=0.1)),
    ("rmsprop", lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5)),
    ("adam-plain-lr", lambda p: (torch.optim.Adam(p, lr=0.05), {"preconditioned": False})),
    ("rmsprop-plain-lr", lambda p: (torch.optim.RMSprop(p, lr=0.01),
                                    {"preconditioned": False})),
]]
PENALTIES = [pytest.param(p, id=n) for n, p in [
    ("L1", L1(0.05)), ("L2", L2(0.3)), ("ElasticNet", ElasticNet(0.05, 0.3)),
    ("GroupLasso-rows", GroupLasso(0.5)), ("GroupLasso-columns", GroupLasso(0.5, "columns")),
    ("GroupLasso-tensor", GroupLasso(0.2, "tensor", "none")),
    ("sparse-group", L1(0.02) + GroupLasso(0.2) + L2(0.1))]]

pytestmark = pytest.mark.filterwarnings("ignore:.*mean step:UserWarning")


@pytest.fixture(scope="module")
def module():
    found = _fused.prox_module()
    if found is None:
        pytest.skip("the fused kernel is unavailable (no C++ compiler, or REGTORCH_FUSED=0)")
    return found


@pytest.fixture
def answers(monkeypatch, module):
    """prox_call's answers, one per step (True: it ran; None: not covered)."""
    seen: list = []

    def prox_call(*args):
        seen.append(module.prox_call(*args))
        return seen[-1]

    monkeypatch.setattr(proximal._fused, "prox_module", lambda: SimpleNamespace(
        prox_call=prox_call))
    return seen


def model_for(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


Change = Callable[[int, nn.Module, torch.optim.Optimizer, Regularizer], None]


def train(make_optimizer, penalty, *, dtype=torch.float64, steps=STEPS,
          change: Change | None = None, after_backward: Change | None = None, model=None,
          attach=Proximal):
    """Train a small MLP with the proximal step attached; ``change(step, ...)`` runs before each
    step, ``after_backward`` between backward and the optimizer's step. Returns the parameters
    and the optimizer's state tensors after the last step."""
    model = model_for(dtype) if model is None else model
    made = make_optimizer([p for p in model.parameters() if p.requires_grad])
    optimizer, options = made if isinstance(made, tuple) else (made, {})
    reg = Regularizer(model, copy.deepcopy(penalty) if not callable(penalty) else penalty(model))
    stepper = attach(optimizer, reg, **options)
    stepper = stepper if attach is Proximal else optimizer
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    for step in range(steps):
        if change is not None:
            change(step, model, optimizer, reg)
        stepper.zero_grad()
        dtype_now = next(model.parameters()).dtype
        nn.functional.mse_loss(model(x.to(dtype_now)), y.to(dtype_now)).backward()
        if after_backward is not None:
            after_backward(step, model, optimizer, reg)
        stepper.step()
    state = [v.clone() for s in optimizer.state.values() for v in s.values()
             if isinstance(v, torch.Tensor)]
    return [p.detach().clone() for p in model.parameters()], state


def todays_path(monkeypatch, *args, **kwargs):
    """The same training with the fast path off: ``_fused_prox_`` through the dispatcher."""
    monkeypatch.setattr(proximal._fused, "prox_module", lambda: None)
    return train(*args, **kwargs)


def assert_identical(fast, today):
    for mine, theirs in zip(fast[0] + fast[1], today[0] + today[1], strict=True):
        assert mine.dtype == theirs.dtype
        assert torch.equal(mine, theirs), (mine - theirs).abs().max()


@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_one_call_equals_the_kernel_path_bit_for_bit(answers, monkeypatch, make_optimizer,
                                                     penalty):
    fast = train(make_optimizer, penalty)
    assert answers == [True] * STEPS  # it ran at every step
    assert_identical(fast, todays_path(monkeypatch, make_optimizer, penalty))


@pytest.mark.parametrize("penalty", [PENALTIES[0], PENALTIES[2], PENALTIES[3], PENALTIES[6]])
@pytest.mark.parametrize("make_optimizer", [OPTIMIZERS[1], OPTIMIZERS[2], OPTIMIZERS[4],
                                            OPTIMIZERS[5], OPTIMIZERS[7]])
def test_one_call_equals_the_kernel_path_in_float32(answers, monkeypatch, make_optimizer,
                                                    penalty):
    fast = train(make_optimizer, penalty, dtype=torch.float32)
    assert answers == [True] * STEPS
    assert_identical(fast, todays_path(monkeypatch, make_optimizer, penalty,
                                       dtype=torch.float32))


def test_two_rules_over_two_param_groups_with_attach_prox(answers, monkeypatch):
    def rules(model):
        return {"0.weight": GroupLasso(0.2, "columns"), "2.weight": ElasticNet(0.05, 0.1)}

    def make(params):
        params = list(params)
        return torch.optim.Adam([{"params": params[:2], "lr": 0.05},
                                 {"params": params[2:], "lr": 0.01}])

    fast = train(make, rules, attach=attach_prox)
    assert answers == [True] * STEPS
    assert_identical(fast, todays_path(monkeypatch, make, rules, attach=attach_prox))


# -- what may change between two steps ---------------------------------------------------------
# (name, optimizer, penalty, the change before step k, prox_call's expected answers)


def _at(step: int, action: Callable[[nn.Module, torch.optim.Optimizer, Regularizer], None]):
    def change(k, model, optimizer, reg):
        if k == step:
            action(model, optimizer, reg)
    return change


def _group(key, value):
    def action(model, optimizer, reg):
        for group in optimizer.param_groups:
            group[key] = value
    return action


def _term(index, name, value):
    def action(model, optimizer, reg):
        setattr(reg.rules[0][1].terms[index], name, value)
    return action


def _reload_state(model, optimizer, reg):  # a new state object (and new tensors)
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))


def _drop_state_entry(model, optimizer, reg):  # the optimizer re-initializes it (step 1)
    del optimizer.state[model[2].weight]


def _freeze_first_layer(model, optimizer, reg):
    model[0].weight.requires_grad_(False)


def _to_float64(model, optimizer, reg):
    model.double()


def _non_contiguous(model, optimizer, reg):
    weight = model[2].weight
    weight.data = weight.data.t().contiguous().t()
    assert not weight.is_contiguous()


ADAM = OPTIMIZERS[2].values[0]
SGD_MOMENTUM = OPTIMIZERS[1].values[0]
ALL_TRUE = [True] * STEPS

CHANGES = [pytest.param(*case, id=case[0]) for case in [
    ("l1-strength", ADAM, L1(0.05), _at(3, _term(0, "lam", 0.2)), ALL_TRUE),
    ("elastic-net-l2-strength", ADAM, ElasticNet(0.05, 0.3), _at(2, _term(1, "lam", 0.0)),
     ALL_TRUE),
    ("group-lasso-strength-and-groups", ADAM, L1(0.02) + GroupLasso(0.2),
     _at(2, lambda m, o, r: (_term(1, "lam", 0.6)(m, o, r),
                             _term(1, "groups", "columns")(m, o, r))),
     ALL_TRUE),
    ("group-lasso-scale", SGD_MOMENTUM, GroupLasso(0.2), _at(3, _term(0, "scale", "none")),
     ALL_TRUE),
    ("lr", ADAM, L1(0.05), _at(2, _group("lr", 0.2)), ALL_TRUE),
    ("lr-int", OPTIMIZERS[0].values[0], L1(0.05), _at(2, _group("lr", 1)), ALL_TRUE),
    ("lr-tensor", lambda p: torch.optim.Adam(p, lr=0.05, foreach=False), L1(0.05),
     _at(2, _group("lr", torch.tensor(0.02, dtype=torch.float64))), [True, True] + [None] * 4),
    ("eps", ADAM, L1(0.05), _at(2, _group("eps", 1e-3)), ALL_TRUE),
    ("betas", ADAM, L1(0.05), _at(3, _group("betas", (0.5, 0.7))), ALL_TRUE),
    ("betas-list", ADAM, L1(0.05), _at(3, _group("betas", [0.5, 0.7])), ALL_TRUE),
    ("amsgrad-off", OPTIMIZERS[3].values[0], L1(0.05), _at(3, _group("amsgrad", False)),
     ALL_TRUE),
    ("momentum", SGD_MOMENTUM, L1(0.05), _at(2, _group("momentum", 0.5)), ALL_TRUE),
    ("dampening", SGD_MOMENTUM, L1(0.05), _at(2, _group("dampening", 0.6)), ALL_TRUE),
    ("rmsprop-momentum", OPTIMIZERS[7].values[0], L1(0.05), _at(2, _group("momentum", 0.2)),
     ALL_TRUE),
    ("rmsprop-centered-off", lambda p: torch.optim.RMSprop(p, lr=0.01, centered=True),
     L1(0.05), _at(3, _group("centered", False)), [None] * 3 + [True] * 3),
    ("adagrad-lr-decay", OPTIMIZERS[5].values[0], L1(0.05), _at(2, _group("lr_decay", 0.0)),
     ALL_TRUE),
    ("adagrad-lr-decay-on", OPTIMIZERS[6].values[0], L1(0.05), _at(2, _group("lr_decay", 0.2)),
     ALL_TRUE),
    ("state-reloaded", ADAM, L1(0.05), _at(3, _reload_state), ALL_TRUE),
    ("state-entry-dropped", ADAM, L1(0.05), _at(3, _drop_state_entry), ALL_TRUE),
    ("frozen-half-way", ADAM, L1(0.05), _at(2, _freeze_first_layer), ALL_TRUE),
    ("to-float64", OPTIMIZERS[0].values[0], L1(0.05), _at(3, _to_float64), ALL_TRUE),
    ("non-contiguous", ADAM, ElasticNet(0.05, 0.3), _at(2, _non_contiguous), ALL_TRUE),
]]


@pytest.mark.parametrize(("name", "make_optimizer", "penalty", "change", "expected"), CHANGES)
def test_what_changes_between_steps_is_read_at_the_step(answers, monkeypatch, name,
                                                        make_optimizer, penalty, change,
                                                        expected):
    dtype = torch.float32 if name == "to-float64" else torch.float64
    fast = train(make_optimizer, penalty, change=change, dtype=dtype)
    assert answers == expected
    assert_identical(fast, todays_path(monkeypatch, make_optimizer, penalty, change=change,
                                       dtype=dtype))


def test_a_gradient_dropped_before_the_step_is_read_at_the_step(answers, monkeypatch):
    def drop(k, model, optimizer, reg):
        if k % 2:
            model[2].weight.grad = None

    fast = train(ADAM, L1(0.05), after_backward=drop)
    assert answers == ALL_TRUE
    assert_identical(fast, todays_path(monkeypatch, ADAM, L1(0.05), after_backward=drop))


def test_a_param_group_added_later_is_found(answers, monkeypatch):
    """The second layer is frozen and left out of the optimizer, then unfrozen and added: the
    optimizer's parameter count changes, prox_call defers to the Python path, which finds the
    new members; from the next step on prox_call covers them."""
    def make_model():
        model = model_for(torch.float64)
        model[2].requires_grad_(False)
        return model

    def add(k, model, optimizer, reg):
        if k == 3:
            model[2].requires_grad_(True)
            optimizer.add_param_group({"params": list(model[2].parameters()), "lr": 0.01})

    fast = train(ADAM, L1(0.05), change=add, model=make_model())
    assert answers == [True] * 3 + [None] + [True] * 2
    assert_identical(fast, todays_path(monkeypatch, ADAM, L1(0.05), change=add,
                                       model=make_model()))


# -- not covered: None, nothing changed --------------------------------------------------------

def _stepped(make=ADAM, penalty=None, dtype=torch.float64):
    """A handle after one step (so the optimizer has state), with a gradient left in place."""
    model = model_for(dtype)
    optimizer = make(model.parameters())
    reg = Regularizer(model, penalty if penalty is not None else L1(0.05))
    handle = attach_prox(optimizer, reg)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nn.functional.mse_loss(model(x.to(dtype)), torch.zeros(16, 3, dtype=dtype)).backward()
    optimizer.step()
    return model, optimizer, reg, handle


def _moment_shape(model, optimizer, reg):
    optimizer.state[model[2].weight]["exp_avg_sq"] = torch.ones(3)


def _step_not_a_tensor(model, optimizer, reg):
    optimizer.state[model[2].weight]["step"] = 1.0


def _moment_missing(model, optimizer, reg):
    del optimizer.state[model[2].weight]["exp_avg_sq"]


def _half_weight(model, optimizer, reg):
    model[2].weight.data = model[2].weight.data.half()
    model[2].weight.grad = model[2].weight.grad.half()


def _tensor_strength(model, optimizer, reg):  # a [K] strength, set past validation
    reg.rules[-1][1].terms[-1].__dict__["lam"] = torch.tensor([0.05], dtype=torch.float64)


def _group_subclass(model, optimizer, reg):
    optimizer.param_groups[0] = type("Group", (dict,), {})(optimizer.param_groups[0])


def _state_a_plain_mapping(model, optimizer, reg):
    class Mapping(dict):
        pass
    optimizer.state = Mapping(optimizer.state)


def _subclass_strength_type(model, optimizer, reg):
    reg.rules[0][1].terms[0].__dict__["lam"] = type("Float", (float,), {})(0.05)


NOT_COVERED = [pytest.param(*case[:2], case[2] if len(case) > 2 else ADAM, id=case[0])
               for case in [
    ("moment-of-another-shape", _moment_shape),
    ("step-not-a-tensor", _step_not_a_tensor),
    ("moment-missing", _moment_missing),
    ("float16-weight", _half_weight),
    ("tensor-strength", _tensor_strength),
    ("float-subclass-strength", _subclass_strength_type),
    ("lr-tensor", lambda m, o, r: _group("lr", torch.tensor(0.05))(m, o, r)),
    # (Adam reads no momentum: out of range there, only the pre-step check refuses it)
    ("sgd-momentum-out-of-range", lambda m, o, r: _group("momentum", 1.0)(m, o, r),
     SGD_MOMENTUM),
    ("sgd-dampening-missing", lambda m, o, r: o.param_groups[0].pop("dampening"), SGD_MOMENTUM),
    ("rmsprop-centered", lambda m, o, r: _group("centered", True)(m, o, r),
     OPTIMIZERS[7].values[0]),
    ("eps-missing", lambda m, o, r: o.param_groups[0].pop("eps")),
    ("betas-a-string", lambda m, o, r: _group("betas", "ab")(m, o, r)),
    ("amsgrad-not-a-bool", lambda m, o, r: _group("amsgrad", 0)(m, o, r)),
    ("group-a-dict-subclass", _group_subclass),
    ("state-a-dict-subclass", _state_a_plain_mapping),
]]


@pytest.mark.parametrize(("name", "spoil", "make"), NOT_COVERED)
def test_not_covered_changes_nothing(module, name, spoil, make):
    # two rules: the first one covered, so "nothing changed" means the whole call bailed out
    model, optimizer, reg, handle = _stepped(
        make, penalty={"0.weight": L1(0.05), "2.weight": ElasticNet(0.05, 0.1)})
    spoil(model, optimizer, reg)
    before = [p.detach().clone() for p in model.parameters()]
    assert handle._call_prox_() is False
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p.detach(), q)


def test_covered_call_on_the_same_setup_changes_the_weights(module):
    """The control of the test above: unspoiled, the same call runs and thresholds."""
    model, _, _, handle = _stepped(
        penalty={"0.weight": L1(0.05), "2.weight": ElasticNet(0.05, 0.1)})
    before = [p.detach().clone() for p in model.parameters()]
    assert handle._call_prox_() is True
    assert not torch.equal(model[0].weight.detach(), before[0])
    assert not torch.equal(model[2].weight.detach(), before[2])


def test_nothing_updated_runs_and_changes_nothing(module):
    model, optimizer, _, handle = _stepped()
    optimizer.zero_grad()  # every grad None
    before = [p.detach().clone() for p in model.parameters()]
    assert handle._call_prox_() is True
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p.detach(), q)
