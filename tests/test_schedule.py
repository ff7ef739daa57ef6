"""exponential_decay against its closed form lr_t = max(lr_0·rate^t, min_lr), per param group, and
against the seed's TensorFlow loop (one step ahead, ends one multiplication below the floor)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from regtorch import L1, Proximal, Regularizer, exponential_decay


def two_groups(lr0=(0.2, 0.05)) -> torch.optim.SGD:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    return torch.optim.SGD([{"params": model[0].parameters(), "lr": lr0[0]},
                            {"params": model[1].parameters(), "lr": lr0[1]}], lr=1.0)


def lrs_over(optimizer, scheduler, steps: int) -> list[list[float]]:
    """The learning rate of each group used by each optimizer step."""
    used = []
    for _ in range(steps):
        used.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return used


@pytest.mark.parametrize(("rate", "min_lr"), [(0.9, 0.0), (0.9, 0.01), (0.5, 0.03), (1.0, 0.01)],
                         ids=["no-floor", "floor", "floor-reached-early", "constant"])
def test_closed_form_with_floor_and_two_groups(rate, min_lr):
    optimizer = two_groups()
    used = lrs_over(optimizer, exponential_decay(optimizer, rate, min_lr), 60)
    for t, lrs in enumerate(used):
        assert lrs == [max(0.2 * rate ** t, min_lr), max(0.05 * rate ** t, min_lr)]
    if min_lr > 0 and rate < 1:
        assert used[-1] == [min_lr, min_lr]  # exactly the floor, never below


def test_seed_tensorflow_loop_is_one_step_ahead_and_ends_below_the_floor():
    """Seed 002: ``if lr > lr_min: lr *= lr_decay`` before every update (lr 0.2, 0.995, 1e-6)."""
    lr0, rate, lr_min, steps = 0.2, 0.995, 1e-6, 2600
    tf_used, lr = [], lr0
    for _ in range(steps):
        if lr > lr_min:
            lr *= rate
        tf_used.append(lr)
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=lr0)
    ours = [lrs[0] for lrs in lrs_over(optimizer, exponential_decay(optimizer, rate, lr_min),
                                       steps)]
    floor_step = next(k for k, v in enumerate(ours) if v == lr_min)
    assert floor_step == math.ceil(math.log(lr_min / lr0) / math.log(rate))  # 2442
    # Update k of the TF loop uses what ours uses at k + 1 (it multiplies first); repeated
    # multiplication drifts from the power by a few ulps, hence rtol 1e-12.
    for k in range(floor_step - 1):
        assert tf_used[k] == pytest.approx(ours[k + 1], rel=1e-12)
    assert ours[-1] == lr_min
    assert tf_used[-1] < lr_min and tf_used[-1] / rate > lr_min  # one multiplication below


def test_state_dict_resumes_the_same_sequence():
    optimizer = two_groups()
    scheduler = exponential_decay(optimizer, 0.8, 0.01)
    lrs_over(optimizer, scheduler, 7)
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved = copy.deepcopy(scheduler.state_dict())
    expected = lrs_over(optimizer, scheduler, 20)

    # torch's resume order: build optimizer and scheduler, then load both states.
    resumed_optimizer = two_groups()
    resumed = exponential_decay(resumed_optimizer, 0.8, 0.01)
    resumed_optimizer.load_state_dict(saved_optimizer)
    resumed.load_state_dict(saved)
    assert lrs_over(resumed_optimizer, resumed, 20) == expected


def test_drives_the_proximal_step():
    model = nn.Linear(4, 1)
    optimizer = Proximal(torch.optim.SGD(model.parameters(), lr=0.4), Regularizer(model, L1(0.1)))
    scheduler = exponential_decay(optimizer, 0.5, 0.1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    for t in range(4):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        assert optimizer.effective_steps() == [max(0.4 * 0.5 ** t, 0.1)]
        scheduler.step()


def test_zero_initial_lr_group_stays_zero():
    optimizer = two_groups(lr0=(0.2, 0.0))
    used = lrs_over(optimizer, exponential_decay(optimizer, 0.5), 4)
    assert [lrs[1] for lrs in used] == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"rate": 0.0}, ValueError, "rate value: 0.0"),
    ({"rate": -0.5}, ValueError, "rate value: -0.5"),
    ({"rate": 1.5}, ValueError, "rate value: 1.5"),
    ({"rate": float("nan")}, ValueError, "rate value: nan"),
    ({"rate": 0.9, "min_lr": -1e-3}, ValueError, "min_lr value: -0.001"),
    ({"rate": 0.9, "min_lr": float("nan")}, ValueError, "min_lr value: nan"),
    ({"rate": 0.9, "min_lr": float("inf")}, ValueError, "min_lr value: inf"),
    ({"rate": 0.9, "min_lr": 0.1}, ValueError, r"min_lr value: 0.1 \(above the initial lr 0.05"),
    ({"rate": "0.9"}, TypeError, "rate value: '0.9'"),
    ({"rate": True}, TypeError, "rate value: True"),
    ({"rate": 0.9, "min_lr": None}, TypeError, "min_lr value: None"),
], ids=["rate-0", "rate-negative", "rate-above-1", "rate-nan", "min-lr-negative", "min-lr-nan",
        "min-lr-inf", "min-lr-above-lr0", "rate-str", "rate-bool", "min-lr-none"])
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        exponential_decay(two_groups(), **kwargs)
