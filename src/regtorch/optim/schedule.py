r"""Exponential learning-rate decay with a floor, as a torch ``LRScheduler``.

.. math::  \mathrm{lr}_t = \max(\mathrm{lr}_0 \cdot \mathrm{rate}^t,\ \mathrm{min\_lr})

per parameter group, with ``t`` the number of ``scheduler.step()`` calls so far. It is torch's own
:class:`~torch.optim.lr_scheduler.LambdaLR` with a picklable factor, so ``state_dict()``, resuming
and chaining behave like every torch scheduler. Plateau-driven decay is torch's
:class:`~torch.optim.lr_scheduler.ReduceLROnPlateau`; regtorch does not re-implement it.
"""

from __future__ import annotations

import math
from numbers import Real

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["exponential_decay"]


class _ExponentialFactor:
    """``lr_t / lr_0 = max(rate**t, floor)`` (a class, not a lambda, so LambdaLR can save it)."""

    def __init__(self, rate: float, floor: float) -> None:
        self.rate = rate
        self.floor = floor

    def __call__(self, t: int) -> float:
        return max(self.rate ** t, self.floor)


def _real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"Invalid {name} value: {value!r} (expected a real number)")
    return float(value)


def exponential_decay(optimizer: Optimizer, rate: float, min_lr: float = 0.0) -> LambdaLR:
    r"""Multiply every group's learning rate by ``rate`` per ``step()``, never below ``min_lr``.

    .. math::  \mathrm{lr}_t = \max(\mathrm{lr}_0 \cdot \mathrm{rate}^t,\ \mathrm{min\_lr})

    ``lr_0`` is each param group's learning rate when the scheduler is created, ``t`` the number
    of ``scheduler.step()`` calls: the first optimizer step uses ``lr_0``. Call ``step()`` once
    per optimizer step for the per-step decay of the TensorFlow recipe, or once per epoch.

    The TensorFlow loop this replaces (``if lr > lr_min: lr *= rate`` *before* each update) is one
    step ahead: its update ``k`` uses ``lr_0·rate^(k+1)``, and it stops one multiplication
    *below* the floor (the first value ``≤ min_lr``), where this schedule stays exactly at
    ``min_lr``.

    Args:
        optimizer: a torch optimizer (or :class:`~regtorch.optim.Proximal`).
        rate: the factor per step, in ``(0, 1]`` (1 keeps the rate constant).
        min_lr: the floor, ``≥ 0`` and at most every group's initial learning rate.

    Returns:
        A :class:`torch.optim.lr_scheduler.LambdaLR`.

    Raises:
        ValueError: ``rate`` not in ``(0, 1]``, ``min_lr`` negative or not finite, or above a
            group's initial learning rate (the floor would *raise* that rate).
        TypeError: ``rate`` or ``min_lr`` is not a real number.

    Example:
        >>> optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.2)
        >>> scheduler = exponential_decay(optimizer, rate=0.5, min_lr=0.03)
        >>> lrs = []
        >>> for _ in range(5):
        ...     lrs.append(optimizer.param_groups[0]["lr"])
        ...     optimizer.step()
        ...     scheduler.step()
        >>> [round(lr, 6) for lr in lrs]
        [0.2, 0.1, 0.05, 0.03, 0.03]
    """
    rate = _real(rate, "rate")
    min_lr = _real(min_lr, "min_lr")
    if not 0.0 < rate <= 1.0:  # also rejects NaN
        raise ValueError(f"Invalid rate value: {rate} (must be in (0, 1])")
    if not (math.isfinite(min_lr) and min_lr >= 0.0):
        raise ValueError(f"Invalid min_lr value: {min_lr} (must be finite and >= 0)")
    factors = []
    for index, group in enumerate(optimizer.param_groups):
        lr0 = float(group.get("initial_lr", group["lr"]))
        if min_lr > lr0:
            raise ValueError(f"Invalid min_lr value: {min_lr} (above the initial lr {lr0} of "
                             f"param group {index}: the floor would raise its learning rate)")
        factors.append(_ExponentialFactor(rate, min_lr / lr0 if lr0 > 0 else 0.0))
    return LambdaLR(optimizer, factors)
