"""The three ways to apply a penalty mean the same thing, and match ``torch.optim`` itself.

DESIGN "Invariants": a penalty as a loss term (``reg()``) and as a fused gradient
(``reg.add_grad_()``) give the same gradients; SGD and Adam with ``L2(lam)`` follow the trajectory
of torch's built-in ``weight_decay=lam`` on the same parameters (:func:`regtorch.param_groups`),
and Adam's L2 penalty is not AdamW's decoupled decay. The references are ``torch.optim``'s own
``weight_decay`` and plain autograd, never regtorch's code.

Everything runs in float64 (``dtype=`` passed explicitly; the global default dtype is untouched),
except the GradScaler test, which exercises mixed-precision plumbing in float32.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from regtorch import (
    L1,
    L2,
    WEIGHTS,
    ElasticNet,
    GroupLasso,
    Orthogonal,
    Penalty,
    Regularizer,
    param_groups,
)

F64 = torch.float64

# (1) and (2) compute the same float64 numbers up to the order of a few roundings.
GRAD_RTOL, GRAD_ATOL = 1e-12, 1e-14
# Over 30 optimizer steps the roundings of (1)/(2) and of torch's ``weight_decay`` drift apart by
# far less than this; an implementation error (a missing ½, a penalized bias) is orders larger.
TRAJECTORY_ATOL = 1e-10
STEPS = 30
LAM = 0.1


# --------------------------------------------------------------------------------------------
# A small MLP with biases and a LayerNorm, and fixed data.
# --------------------------------------------------------------------------------------------


def make_mlp(dtype: torch.dtype = F64, seed: int = 0) -> nn.Sequential:
    """Linear → LayerNorm → Tanh → Linear, every parameter (LayerNorm gain included) drawn from a
    private generator so that each parameter has a non-trivial gradient."""
    model = nn.Sequential(
        nn.Linear(5, 8, dtype=dtype),
        nn.LayerNorm(8, dtype=dtype),
        nn.Tanh(),
        nn.Linear(8, 3, dtype=dtype),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=dtype))
        model[1].weight.add_(1.0)  # LayerNorm gains around 1, as after initialization
    return model


def make_batches(dtype: torch.dtype = F64, steps: int = STEPS,
                 seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=gen, dtype=dtype),
             torch.randn(16, 3, generator=gen, dtype=dtype)) for _ in range(steps)]


def data_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def assert_same_parameters(model: nn.Module, reference: nn.Module, *, atol: float,
                           context: str) -> None:
    """Every parameter, selected or not, matches the reference's (``rtol=0``)."""
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0.0, atol=atol,
                                   msg=lambda m, name=name: f"{context}, {name}: {m}")


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


# --------------------------------------------------------------------------------------------
# (1) loss term and (2) fused gradient: the same gradients.
# --------------------------------------------------------------------------------------------

PENALTIES = [
    pytest.param(L2(LAM), id="L2"),
    pytest.param(L1(LAM), id="L1"),
    pytest.param(ElasticNet(LAM, 2 * LAM), id="ElasticNet"),
    pytest.param(GroupLasso(LAM, groups="rows"), id="GroupLasso-rows"),
    pytest.param(GroupLasso(LAM, groups="columns"), id="GroupLasso-columns"),
    pytest.param(GroupLasso(LAM, groups="tensor"), id="GroupLasso-tensor"),
    pytest.param(GroupLasso(LAM, groups="rows", scale="none"), id="GroupLasso-rows-unscaled"),
    pytest.param(Orthogonal(LAM, mode="rows"), id="Orthogonal-rows"),
    pytest.param(Orthogonal(LAM, mode="columns"), id="Orthogonal-columns"),
    pytest.param(L1(LAM) + GroupLasso(LAM, groups="columns") + Orthogonal(LAM) + L2(LAM),
                 id="Sum-L1+GroupLasso+Orthogonal+L2"),
]


def grads_with_loss_term(model: nn.Module, reg: Regularizer, batch) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (data_loss(model, batch) + reg()).backward()
    return [p.grad.clone() for p in model.parameters()]


def grads_with_add_grad(model: nn.Module, reg: Regularizer, batch) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    data_loss(model, batch).backward()
    reg.add_grad_()
    return [p.grad.clone() for p in model.parameters()]


def assert_same_grads(model: nn.Module, got: list[torch.Tensor],
                      expected: list[torch.Tensor]) -> None:
    for (name, _), g, e in zip(model.named_parameters(), got, expected):
        torch.testing.assert_close(g, e, rtol=GRAD_RTOL, atol=GRAD_ATOL,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("penalty", PENALTIES)
def test_loss_term_and_add_grad_give_the_same_gradients(penalty: Penalty) -> None:
    model = make_mlp()
    reg = Regularizer(model, penalty)
    batch = make_batches(steps=1)[0]

    expected = grads_with_loss_term(model, reg, batch)
    got = grads_with_add_grad(model, reg, batch)

    assert_same_grads(model, got, expected)
    # The penalty acted on the weights only: biases and the LayerNorm keep the data gradient.
    model.zero_grad(set_to_none=True)
    data_loss(model, batch).backward()
    selected = {id(p) for p in reg.parameters()}
    for p, g in zip(model.parameters(), got):
        if id(p) in selected:
            assert not torch.equal(g, p.grad), "the penalty changed no selected gradient"
        else:
            assert torch.equal(g, p.grad)


@pytest.mark.parametrize("penalty", PENALTIES)
def test_add_grad_value_is_the_loss_term_value(penalty: Penalty) -> None:
    model = make_mlp()
    reg = Regularizer(model, penalty)
    model.zero_grad(set_to_none=True)
    got = reg.add_grad_(value=True)
    torch.testing.assert_close(got, reg().detach(), rtol=GRAD_RTOL, atol=0.0)


def test_rules_loss_term_and_add_grad_give_the_same_gradients() -> None:
    """Several rules at once: each parameter gets its own rule's gradient, once."""
    model = make_mlp()
    reg = Regularizer(model, {"3.*": L1(LAM) + L2(LAM), WEIGHTS: GroupLasso(LAM),
                              "1.weight": L2(LAM)})
    batch = make_batches(steps=1)[0]
    assert_same_grads(model, grads_with_add_grad(model, reg, batch),
                      grads_with_loss_term(model, reg, batch))


ZEROED = [
    pytest.param(L2(LAM), id="L2"),
    pytest.param(L1(LAM), id="L1"),
    pytest.param(GroupLasso(LAM, groups="rows"), id="GroupLasso-rows"),
    pytest.param(GroupLasso(LAM, groups="columns"), id="GroupLasso-columns"),
    # Regression: sqrt(Σw²) has a NaN autograd gradient at 0 unless guarded (found at 8a20f7b).
    pytest.param(GroupLasso(LAM, groups="tensor"), id="GroupLasso-tensor"),
    pytest.param(Orthogonal(LAM), id="Orthogonal"),
]


@pytest.mark.parametrize("penalty", ZEROED)
def test_loss_term_gradient_at_an_all_zero_weight_is_finite_and_matches_add_grad(
        penalty: Penalty) -> None:
    """A zero-initialized layer (common for residual branches and output heads): the norm is not
    differentiable at 0, the subgradient 0 is the one both modes must use."""
    model = make_mlp()
    with torch.no_grad():
        model[3].weight.zero_()
    reg = Regularizer(model, penalty)
    batch = make_batches(steps=1)[0]

    expected = grads_with_add_grad(model, reg, batch)
    got = grads_with_loss_term(model, reg, batch)

    assert all(torch.isfinite(g).all() for g in got)
    assert_same_grads(model, got, expected)


# --------------------------------------------------------------------------------------------
# Trajectories: regtorch's L2 equals torch's weight_decay on the selected parameters.
# --------------------------------------------------------------------------------------------

OptimizerFactory = Callable[..., torch.optim.Optimizer]

OPTIMIZERS = [
    pytest.param(lambda params: torch.optim.SGD(params, lr=0.05), id="SGD"),
    pytest.param(lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
                 id="SGD-momentum0.9"),
    pytest.param(lambda params: torch.optim.Adam(params, lr=0.01), id="Adam"),
]


def train_step_loss_term(model, optimizer, reg, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    (data_loss(model, batch) + reg()).backward()
    optimizer.step()


def train_step_add_grad(model, optimizer, reg, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    data_loss(model, batch).backward()
    reg.add_grad_()
    optimizer.step()


def train_step_plain(model, optimizer, reg, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    data_loss(model, batch).backward()
    optimizer.step()


MODES = [
    pytest.param(train_step_loss_term, id="loss-term"),
    pytest.param(train_step_add_grad, id="add_grad"),
]


@pytest.mark.parametrize("step", MODES)
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_l2_follows_builtin_weight_decay_on_selected_parameters(
        make_optimizer: OptimizerFactory, step: Callable) -> None:
    model = make_mlp()
    reference = copy.deepcopy(model)
    reg = Regularizer(model, L2(LAM))
    optimizer = make_optimizer(model.parameters())
    groups = param_groups(reference, weight_decay=LAM)
    reference_optimizer = make_optimizer(groups)
    # The built-in decay acts on the very parameters regtorch penalizes (by position).
    positions = {id(p): i for i, p in enumerate(model.parameters())}
    reference_positions = {id(p): i for i, p in enumerate(reference.parameters())}
    assert [reference_positions[id(p)] for p in groups[0]["params"]] == \
        [positions[id(p)] for p in reg.parameters()]

    for k, batch in enumerate(make_batches()):
        step(model, optimizer, reg, batch)
        train_step_plain(reference, reference_optimizer, None, batch)
        assert_same_parameters(model, reference, atol=TRAJECTORY_ATOL, context=f"step {k}")

    # Not vacuous: the decay moved the trajectory far beyond the tolerance (0.39 to 0.88 here).
    unregularized = make_mlp()
    plain_optimizer = make_optimizer(unregularized.parameters())
    for batch in make_batches():
        train_step_plain(unregularized, plain_optimizer, None, batch)
    assert max_difference(unregularized, reference) > 0.1


# AdamW's decoupled decay (w ← w − lr·λ·w, outside the adaptive scaling) is not the L2 penalty
# (λw added to the gradient, then divided by √v̂): after 30 steps they are at least this far
# apart (0.35 measured on this problem).
ADAMW_GAP = 0.05


def test_adam_l2_differs_from_adamw() -> None:
    adam_model = make_mlp()
    adamw_model = copy.deepcopy(adam_model)
    reg = Regularizer(adam_model, L2(LAM))
    adam = torch.optim.Adam(adam_model.parameters(), lr=0.01)
    adamw = torch.optim.AdamW(param_groups(adamw_model, weight_decay=LAM), lr=0.01)

    for batch in make_batches():
        train_step_add_grad(adam_model, adam, reg, batch)
        train_step_plain(adamw_model, adamw, None, batch)

    assert max_difference(adam_model, adamw_model) > ADAMW_GAP


# --------------------------------------------------------------------------------------------
# Zero strength changes nothing, bit for bit.
# --------------------------------------------------------------------------------------------

ZERO_PENALTIES = [
    pytest.param(L2(0.0), id="L2(0)"),
    pytest.param(L1(0.0), id="L1(0)"),
    pytest.param(ElasticNet(0.0, 0.0), id="ElasticNet(0,0)"),
    pytest.param(GroupLasso(0.0), id="GroupLasso(0)"),
]


def train_step_prox(model, optimizer, reg, batch) -> None:
    train_step_plain(model, optimizer, reg, batch)
    reg.prox_(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("step", [*MODES, pytest.param(train_step_prox, id="prox")])
@pytest.mark.parametrize("penalty", ZERO_PENALTIES)
def test_zero_strength_trains_exactly_like_no_regularization(penalty: Penalty,
                                                             step: Callable) -> None:
    model = make_mlp()
    reference = copy.deepcopy(model)
    reg = Regularizer(model, penalty)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)

    for k, batch in enumerate(make_batches()):
        step(model, optimizer, reg, batch)
        train_step_plain(reference, reference_optimizer, None, batch)
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert torch.equal(p, q), f"step {k}, {name}"


# --------------------------------------------------------------------------------------------
# Mixed precision: add_grad_ goes between unscale_ and step.
# --------------------------------------------------------------------------------------------

SCALE = 2.0**10
# A power-of-two loss scale is undone exactly by unscale_ (barring underflow, absent here), so
# the scaled run is in practice bit-identical; the tolerance is float32 rounding headroom.
SCALER_ATOL = 1e-6
SCALER_LAM = 0.5  # large, so that dividing it by SCALE is visible after 30 steps


def train_float32(lam: float, order: str) -> nn.Module:
    """Train a float32 MLP with ``L2(lam)`` by add_grad_, with or without a GradScaler.

    order: "no-scaler"; "unscale-then-add_grad" (documented); "add_grad-then-unscale" (wrong).
    """
    model = make_mlp(torch.float32)
    reg = Regularizer(model, L2(lam))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    for batch in make_batches(torch.float32):
        optimizer.zero_grad(set_to_none=True)
        loss = data_loss(model, batch)
        if order == "no-scaler":
            loss.backward()
            reg.add_grad_()
            optimizer.step()
            continue
        scaler.scale(loss).backward()
        if order == "unscale-then-add_grad":
            scaler.unscale_(optimizer)
            reg.add_grad_()
        elif order == "add_grad-then-unscale":
            reg.add_grad_()
            scaler.unscale_(optimizer)
        else:
            raise ValueError(order)
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() == SCALE  # no step was skipped for inf/NaN
    return model


def test_grad_scaler_with_add_grad_after_unscale_matches_unscaled_training() -> None:
    expected = train_float32(SCALER_LAM, "no-scaler")
    got = train_float32(SCALER_LAM, "unscale-then-add_grad")
    assert_same_parameters(got, expected, atol=SCALER_ATOL, context="GradScaler")


def test_grad_scaler_with_add_grad_before_unscale_divides_the_penalty_by_the_scale() -> None:
    """The documented pitfall: before unscale_, .grad holds SCALE·∇loss; adding λw there and then
    dividing everything by SCALE trains with λ/SCALE."""
    wrong = train_float32(SCALER_LAM, "add_grad-then-unscale")
    right = train_float32(SCALER_LAM, "no-scaler")
    weakened = train_float32(SCALER_LAM / SCALE, "no-scaler")

    assert max_difference(wrong, right) > 0.1  # 1.17 measured
    assert_same_parameters(wrong, weakened, atol=SCALER_ATOL, context="λ/scale")
