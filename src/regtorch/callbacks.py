"""Callbacks for a training loop: :class:`EarlyStopping`.

A callback holds its configuration (set in ``__init__``, never changed by training) apart from its
learned state (attributes with a trailing underscore, cleared by ``reset()`` and saved by
``state_dict()``), and reports through an injectable ``sink`` — by default the ``"regtorch"``
logger at INFO level — so a test can assert the exact message (the skorch convention).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EarlyStopping"]

logger = logging.getLogger("regtorch")

_MODES = ("min", "max")
_STATE_KEYS = ("best", "best_epoch", "wait", "epoch", "stopped_epoch", "diverged", "best_weights")


# --------------------------------------------------------------------------------------------
# Functional core.
# --------------------------------------------------------------------------------------------


def _is_improvement(value: float, best: float, mode: str, min_delta: float) -> bool:
    """Keras's test: ``value < best − min_delta`` (min) or ``value > best + min_delta`` (max).

    The inequality is strict, so a change of exactly ``min_delta`` is not an improvement.
    """
    if mode == "min":
        return value < best - min_delta
    return value > best + min_delta


@torch.no_grad()
def _copy_state(state: Mapping[str, Any], into: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of a ``state_dict`` that shares no memory with it (same devices and dtypes).

    When ``into`` holds tensors with the same keys, shapes, dtypes and devices (the usual case: the
    same model at a later epoch), they are overwritten in place with one fused ``_foreach_copy_``
    instead of allocating a second copy of the model; otherwise every tensor is cloned.
    Non-tensor entries (a module's ``get_extra_state()``) are deep-copied.
    """
    tensors = [(k, v) for k, v in state.items() if isinstance(v, Tensor)]
    reusable = (
        into is not None
        and into.keys() == state.keys()
        and all(isinstance(into[k], Tensor) and _same_layout(into[k], v) for k, v in tensors)
    )
    if not reusable:
        return {k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)
                for k, v in state.items()}
    if tensors:
        torch._foreach_copy_([into[k] for k, _ in tensors], [v.detach() for _, v in tensors])
    for k, v in state.items():
        if not isinstance(v, Tensor):
            into[k] = copy.deepcopy(v)
    return into


def _same_layout(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def _as_float(value: object) -> float:
    """A monitored value as a float: a real number or a 0-d real tensor (read detached)."""
    if isinstance(value, Tensor):
        if value.ndim == 0 and not value.is_complex() and value.dtype != torch.bool:
            return float(value.detach().item())
        raise TypeError(f"Invalid value: tensor of shape {tuple(value.shape)} and dtype "
                        f"{value.dtype} (expected a real number or a 0-d real tensor)")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"Invalid value: {value!r} (expected a real number or a 0-d real "
                        f"tensor, e.g. the validation data loss)")
    return float(value)


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"Invalid {name} value: {value!r} (expected an int >= 0)")
    if value < 0:
        raise ValueError(f"Invalid {name} value: {value!r} (must be >= 0)")
    return int(value)


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


# --------------------------------------------------------------------------------------------
# The callback.
# --------------------------------------------------------------------------------------------


class EarlyStopping:
    r"""Stop training when a monitored value stops improving, and keep the best weights.

    Call :meth:`step` once per epoch with the monitored value and the model; it returns ``True``
    when training should stop. The semantics are those of Keras's ``EarlyStopping``:

    - Epochs are counted from 0: the ``k``-th call to :meth:`step` is epoch ``k − 1`` (the index
      is the number of previous calls, ``epoch_`` before the call).
    - Calls with epoch ``< start_from_epoch`` are a warm-up: their value is not monitored (no best,
      no waiting) and :meth:`step` returns ``False``.
    - The first monitored value is always an improvement (``best_`` starts at ``+inf`` for
      ``mode="min"``, ``−inf`` for ``mode="max"``). After that a value improves when

      .. math::

          v < \text{best} − \text{min\_delta} \quad (\text{min}), \qquad
          v > \text{best} + \text{min\_delta} \quad (\text{max});

      the inequality is strict: a change of exactly ``min_delta`` does not count.
    - On an improvement: ``best_ = v``, ``best_epoch_ = epoch``, ``wait_ = 0`` and, with
      ``restore_best``, the model's weights are copied. Otherwise ``wait_ += 1``, and training
      stops when ``wait_ >= patience`` (``patience=0``: at the first epoch without improvement).
    - With a ``baseline`` ``b``, an improvement resets ``wait_`` to 0 only if it also beats the
      baseline (``v < b − min_delta``, resp. ``v > b + min_delta``); one that does not still
      becomes the best (weights copied) but counts as a waiting epoch, ``wait_ += 1``, without
      stopping at that epoch. So a run that never reaches the baseline stops ``patience``
      epochs after its start, at the first epoch that does not improve — Keras's rule exactly:
      with values ``0.9, 0.8, 0.7, 0.71, 0.72, 0.73``, ``patience=5``, ``baseline=0.5`` it
      stops at epoch 4 (after 5 epochs) and restores epoch 2.
    - A NaN or infinite value means the run diverged: training stops at once, at any epoch,
      warm-up included (Keras needs a separate ``TerminateOnNaN``; here it is never silently
      skipped). The value is not monitored: ``best_`` and ``wait_`` keep their values.

    When training stops, and ``restore_best`` is true and a best epoch was seen, the best weights
    are loaded back into the model; ``stopped_epoch_`` and ``diverged_`` record the stop and one
    message goes to ``sink``. If training instead runs to its last epoch, the model keeps its last
    weights: call :meth:`restore` to load the best ones (Keras restores at the end of ``fit``
    either way; a plain loop has no such end, so here it is one explicit call).

    After :meth:`step` has returned ``True`` the stopper keeps working normally if called again
    (nothing is reset: each further non-improving epoch stops — and restores — again, an
    improvement resumes the count from 0), so a loop may, say, lower the learning rate and go on
    after a divergence. Call :meth:`reset` to start a new, independent run.

    **Monitor the validation data loss** — the criterion alone, not ``criterion + reg()``. The
    penalty's value depends on its strength λ: with it the monitored number of runs with different
    λ cannot be compared, and the stopper rewards the optimizer for shrinking the weights rather
    than for fitting held-out data. (In Keras, ``val_loss`` includes the regularization losses of
    ``model.losses``; regtorch recommends the data loss explicitly.) ::

        stopper = EarlyStopping(patience=5)
        for epoch in range(max_epochs):
            train_one_epoch(model, reg)                    # loss = criterion(...) + reg()
            model.eval()
            with torch.no_grad():
                val = criterion(model(x_val), y_val)       # data loss only
            if stopper.step(val, model):                   # best weights put back on stop
                break

    Args:
        mode: ``"min"`` (a loss) or ``"max"`` (an accuracy): the direction of improvement.
        patience: epochs without improvement after which training stops (an int ≥ 0).
        min_delta: the smallest change that counts as an improvement (finite, ≥ 0).
        start_from_epoch: number of warm-up epochs not monitored (an int ≥ 0).
        baseline: the value to reach (a finite real number), or ``None``: until a monitored
            value beats it, improvements do not reset the patience count (see above).
        restore_best: keep a copy of the best epoch's weights (its ``state_dict``: parameters and
            buffers, on the model's device) and load it back when stopping. Costs one copy of the
            model in memory; with ``False`` nothing is copied and the model is never touched.
        sink: called with one message per stop; default: ``logging.getLogger("regtorch").info``.

    Attributes:
        best_: the best monitored value (``±inf`` before the first monitored epoch).
        best_epoch_: the epoch of ``best_``, ``None`` before the first monitored epoch.
        wait_: epochs since the last improvement.
        epoch_: number of :meth:`step` calls so far (the index the next call gets).
        stopped_epoch_: the epoch of the latest stop, ``None`` while training goes on.
        diverged_: ``True`` when the latest stop was caused by a NaN or infinite value.

    Raises:
        ValueError: ``mode`` is not ``"min"`` or ``"max"``, ``patience`` or ``start_from_epoch``
            is negative, ``min_delta`` is negative, NaN or infinite, ``baseline`` is NaN or
            infinite.
        TypeError: ``patience`` or ``start_from_epoch`` is not an int (``bool`` included),
            ``min_delta`` or ``baseline`` is not a real number, ``restore_best`` is not a bool,
            ``sink`` is not callable.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> stopper = EarlyStopping(patience=2, sink=print)
        >>> for val_loss in [0.9, 0.5, 0.6, 0.55, 0.4]:
        ...     if stopper.step(val_loss, model):
        ...         break
        EarlyStopping: stopped at epoch 3 (no improvement for 2 epochs); best 0.5 at epoch 1;
        weights restored
        >>> stopper.best_, stopper.best_epoch_, stopper.stopped_epoch_, stopper.diverged_
        (0.5, 1, 3, False)
        >>> stopper.step(float("nan"), model)
        EarlyStopping: stopped at epoch 4: monitored value is nan (diverged); best 0.5 at epoch 1;
        weights restored
        True
    """

    def __init__(self, *, mode: str = "min", patience: int = 10, min_delta: float = 0.0,
                 start_from_epoch: int = 0, baseline: float | None = None,
                 restore_best: bool = True, sink: Callable[[str], None] | None = None) -> None:
        if mode not in _MODES:
            raise ValueError(f"Invalid mode value: {mode!r} (expected 'min' or 'max')")
        if isinstance(min_delta, bool) or not isinstance(min_delta, Real):
            raise TypeError(f"Invalid min_delta value: {min_delta!r} (expected a real number)")
        if not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"Invalid min_delta value: {min_delta!r} (must be finite and >= 0)")
        if baseline is not None:
            if isinstance(baseline, bool) or not isinstance(baseline, Real):
                raise TypeError(f"Invalid baseline value: {baseline!r} (expected a real number "
                                f"or None)")
            if not math.isfinite(baseline):
                raise ValueError(f"Invalid baseline value: {baseline!r} (must be finite)")
            baseline = float(baseline)
        if not isinstance(restore_best, bool):
            raise TypeError(f"Invalid restore_best value: {restore_best!r} (expected a bool)")
        if sink is not None and not callable(sink):
            raise TypeError(f"Invalid sink value: {sink!r} (expected a callable taking a str)")
        self.mode = mode
        self.patience = _check_count(patience, "patience")
        self.min_delta = float(min_delta)
        self.start_from_epoch = _check_count(start_from_epoch, "start_from_epoch")
        self.baseline = baseline
        self.restore_best = restore_best
        self.sink = sink if sink is not None else logger.info
        self.reset()

    def reset(self) -> None:
        """Clear the learned state (and drop the weight copy): the start of a new run."""
        self.best_ = math.inf if self.mode == "min" else -math.inf
        self.best_epoch_: int | None = None
        self.wait_ = 0
        self.epoch_ = 0
        self.stopped_epoch_: int | None = None
        self.diverged_ = False
        self._best_weights: dict[str, Any] | None = None

    # -- the epoch step ----------------------------------------------------------------------
    def step(self, value: float | Tensor, model: nn.Module | None = None) -> bool:
        """Record one epoch's monitored value; ``True`` means stop now.

        Args:
            value: the monitored value, a real number or a 0-d tensor (read with ``.item()``,
                which waits for the GPU) — preferably the validation *data* loss.
            model: the model whose best weights to keep and restore; required when
                ``restore_best`` is true, unused otherwise.

        Returns:
            ``True`` when training should stop (patience exhausted or a NaN/infinite value);
            the best weights are then already back in the model (with ``restore_best``).

        Raises:
            TypeError: ``value`` is not a real number or a 0-d real tensor.
            ValueError: ``restore_best`` is true and ``model`` is ``None``.
        """
        current = _as_float(value)
        if self.restore_best and model is None:
            raise ValueError("Invalid model value: None (EarlyStopping(restore_best=True).step "
                             "needs the model to keep its best weights; pass step(value, model) "
                             "or use restore_best=False)")
        epoch = self.epoch_
        self.epoch_ += 1
        if not math.isfinite(current):
            return self._stop(epoch, model, f": monitored value is {current} (diverged)",
                              diverged=True)
        if epoch < self.start_from_epoch:
            return False
        if _is_improvement(current, self.best_, self.mode, self.min_delta):
            self.best_, self.best_epoch_ = current, epoch
            if self.restore_best:
                self._best_weights = _copy_state(model.state_dict(), into=self._best_weights)
            # Only a value that also beats the baseline restarts the count (Keras).
            if self.baseline is None or _is_improvement(current, self.baseline, self.mode,
                                                        self.min_delta):
                self.wait_ = 0
            else:
                self.wait_ += 1
            return False
        self.wait_ += 1
        if self.wait_ >= self.patience:
            if self.baseline is not None and not _is_improvement(self.best_, self.baseline,
                                                                 self.mode, self.min_delta):
                why = f" (baseline {self.baseline:.6g} not beaten for {_epochs(self.wait_)})"
            else:
                why = f" (no improvement for {_epochs(self.wait_)})"
            return self._stop(epoch, model, why, diverged=False)
        return False

    def _stop(self, epoch: int, model: nn.Module | None, reason: str, *, diverged: bool) -> bool:
        self.stopped_epoch_, self.diverged_ = epoch, diverged
        if self.best_epoch_ is None:
            best = "no best value yet"
        else:
            best = f"best {self.best_:.6g} at epoch {self.best_epoch_}"
        if not self.restore_best:
            weights = "weights not restored (restore_best=False)"
        elif self._best_weights is None:
            weights = "no best weights to restore"
        else:
            model.load_state_dict(self._best_weights)
            weights = "weights restored"
        self.sink(f"EarlyStopping: stopped at epoch {epoch}{reason}; {best}; {weights}")
        return True

    # -- best weights ------------------------------------------------------------------------
    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (``model.load_state_dict``, strict).

        The model gets its own copy: training it further does not change the stored weights.

        Raises:
            ValueError: no weights are stored (``restore_best=False``, or no monitored epoch yet).
        """
        if self._best_weights is None:
            why = ("restore_best=False" if not self.restore_best
                   else "no epoch has been monitored yet")
            raise ValueError(f"EarlyStopping has no best weights to restore ({why})")
        model.load_state_dict(self._best_weights)

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The learned state, best weights included (copies), for checkpoint-resume.

        The configuration is not saved: build the stopper with the same arguments before
        :meth:`load_state_dict`.
        """
        weights = None if self._best_weights is None else _copy_state(self._best_weights)
        return {"best": self.best_, "best_epoch": self.best_epoch_, "wait": self.wait_,
                "epoch": self.epoch_, "stopped_epoch": self.stopped_epoch_,
                "diverged": self.diverged_, "best_weights": weights}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the learned state saved by :meth:`state_dict` (the weights are copied).

        Raises:
            ValueError: a key of :meth:`state_dict` is missing.
        """
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise ValueError(f"Invalid state_dict: missing {', '.join(missing)} (expected the "
                             f"keys of EarlyStopping.state_dict(): {', '.join(_STATE_KEYS)})")
        weights = state_dict["best_weights"]
        self.best_ = float(state_dict["best"])
        self.best_epoch_ = state_dict["best_epoch"]
        self.wait_ = int(state_dict["wait"])
        self.epoch_ = int(state_dict["epoch"])
        self.stopped_epoch_ = state_dict["stopped_epoch"]
        self.diverged_ = bool(state_dict["diverged"])
        self._best_weights = None if weights is None else _copy_state(weights)

    def __repr__(self) -> str:
        return (f"EarlyStopping(mode={self.mode!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, start_from_epoch={self.start_from_epoch}, "
                f"baseline={self.baseline}, restore_best={self.restore_best})")
