"""attach_grad: the fused gradient before each step of the user's optimizer, right under maximize.

References, never the code under test: torch's own ``weight_decay`` (SGD, Adam), with and without
``maximize``, which ``L2(λ)`` must equal; plain unscaled training for GradScaler.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regtorch import L1, L2, Regularizer, attach_grad

F64 = torch.float64
RTOL = 1e-12
LAM = 0.3


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(F64)


def batch():
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(16, 6, generator=gen, dtype=F64),
            torch.randn(16, 3, generator=gen, dtype=F64))


def backward(model, x, y):
    nn.functional.mse_loss(model(x), y).backward()


def torch_decay_groups(model, lam):
    """weight_decay on the weights only, as L2 on WEIGHTS penalizes them."""
    weights = [m.weight for m in (model[0], model[2])]
    biases = [m.bias for m in (model[0], model[2])]
    return [{"params": weights, "weight_decay": lam}, {"params": biases, "weight_decay": 0.0}]


@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
@pytest.mark.parametrize("make", [
    lambda groups, **kw: torch.optim.SGD(groups, lr=0.05, momentum=0.5, **kw),
    lambda groups, **kw: torch.optim.Adam(groups, lr=0.01, **kw),
], ids=["sgd-momentum", "adam"])
def test_l2_equals_torch_weight_decay(make, maximize):
    x, y = batch()
    ours, theirs = mlp(), mlp()
    optimizer = make(ours.parameters(), maximize=maximize)
    attach_grad(optimizer, Regularizer(ours, L2(LAM)))
    reference = make(torch_decay_groups(theirs, LAM), maximize=maximize)
    for _ in range(10):
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            backward(model, x, y)
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-14)


def test_add_grad_by_hand_under_maximize_ascends_the_penalty():
    """Why attach_grad exists: reg.add_grad_() cannot see maximize, and by hand it pushes the
    weights up the penalty (torch's weight_decay pulls them down)."""
    x, y = batch()
    by_hand, theirs = mlp(), mlp()
    reg = Regularizer(by_hand, L2(LAM))
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.05, maximize=True)
    reference = torch.optim.SGD(torch_decay_groups(theirs, LAM), lr=0.05, maximize=True)
    for _ in range(10):
        for model, opt in ((by_hand, optimizer), (theirs, reference)):
            opt.zero_grad()
            backward(model, x, y)
        reg.add_grad_()
        optimizer.step()
        reference.step()
    assert by_hand[0].weight.norm() > theirs[0].weight.norm()


def test_only_the_maximizing_group_is_flipped():
    x, y = batch()
    ours, theirs = mlp(), mlp()
    optimizer = torch.optim.SGD([{"params": ours[0].parameters(), "maximize": True},
                                 {"params": ours[2].parameters()}], lr=0.05)
    attach_grad(optimizer, Regularizer(ours, L2(LAM)))
    reference = torch.optim.SGD([
        {"params": [theirs[0].weight], "maximize": True, "weight_decay": LAM},
        {"params": [theirs[0].bias], "maximize": True},
        {"params": [theirs[2].weight], "weight_decay": LAM},
        {"params": [theirs[2].bias]}], lr=0.05)
    for _ in range(5):
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            backward(model, x, y)
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-14)


def test_grad_scaler_unscales_first_and_a_skipped_step_adds_nothing():
    x, y = batch()
    scaled, plain = mlp(), mlp()
    optimizer = torch.optim.SGD(scaled.parameters(), lr=0.1)
    attach_grad(optimizer, Regularizer(scaled, L1(0.05)))
    reference = torch.optim.SGD(plain.parameters(), lr=0.1)
    reg = Regularizer(plain, L1(0.05))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for _ in range(3):
        optimizer.zero_grad()
        scaler.scale(nn.functional.mse_loss(scaled(x), y)).backward()
        scaler.step(optimizer)
        scaler.update()
        reference.zero_grad()
        backward(plain, x, y)
        reg.add_grad_()
        reference.step()
    for a, b in zip(scaled.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-14)
    before = [p.detach().clone() for p in scaled.parameters()]
    optimizer.zero_grad()
    scaler.scale(nn.functional.mse_loss(scaled(x), y)).backward()
    scaled[0].weight.grad[0, 0] = float("inf")
    scaler.step(optimizer)
    for a, b in zip(scaled.parameters(), before):
        assert torch.equal(a, b)


def test_value_and_remove():
    x, y = batch()
    model = mlp()
    reg = Regularizer(model, L2(LAM))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay put
    handle = attach_grad(optimizer, reg, value=True)
    assert handle.value_ is None
    backward(model, x, y)
    optimizer.step()
    torch.testing.assert_close(handle.value_, reg.value(), rtol=RTOL, atol=0)
    handle.remove()
    handle.remove()
    assert not handle.attached and "removed from SGD" in repr(handle)
    optimizer.zero_grad()
    backward(model, x, y)
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


@pytest.mark.parametrize(("args", "match"), [
    (("sgd", None), "Invalid optimizer"),
    ((None, "reg"), "Invalid regularizer"),
], ids=["optimizer", "regularizer"])
def test_bad_arguments(args, match):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reg = Regularizer(model, L2(0.1))
    real = [optimizer if a is None else a for a in args[:1]] + [reg if a is None else a
                                                                 for a in args[1:]]
    with pytest.raises(TypeError, match=match):
        attach_grad(*real)
