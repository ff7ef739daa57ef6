r"""regtorch in the Hugging Face ``Trainer``: a ``TrainerCallback``, a loss hook, decay groups.

.. code-block:: python

    from regtorch import L1
    from regtorch.integrations.transformers import Regularization

    trainer = Trainer(model, args, train_dataset=data,
                      callbacks=[Regularization(L1(1e-3), mode="prox")])
    trainer.train()

The callback binds a :class:`~regtorch.Regularizer` to the Trainer's model when training begins
and acts on the Trainer's own optimizer (the torch optimizer inside accelerate's wrapper) through
torch's step hooks, so the Trainer's scheduler, gradient scaler and checkpoints are untouched.
The objective is the Trainer's loss plus R(w) in every mode:

- ``"grad"``: ∇R is added into ``.grad`` by :func:`regtorch.attach_grad` (a step pre-hook;
  −∇R in ``maximize`` groups): once per optimizer step, after
  gradient accumulation, after the gradient scaler unscaled the gradients and *after* the
  Trainer clipped them (``max_grad_norm``; the Trainer has no hook between the last backward and
  clipping). That is where torch's own ``weight_decay`` acts: the penalty gradient is never
  clipped. Without clipping (``max_grad_norm=0``) it equals ``"loss"`` mode.
- ``"loss"``: R(w) enters the loss through autograd. The Trainer's hook for that is
  ``compute_loss_func``: pass ``Trainer(compute_loss_func=callback.compute_loss_func(loss_fn))``.
  Each micro-batch adds its share ``items / num_items_in_batch`` of R (items counted as the
  Trainer counts them, ``labels != -100``), so the accumulated gradient holds ∇R once.
- ``"prox"``: the proximal step runs after every optimizer step (:func:`regtorch.attach_prox`,
  a post-step hook at the optimizer's effective step size): exact zeros for L1 and group
  lasso. A step the gradient scaler skips gets none.

Logged in the Trainer's own log records (``state.log_history`` and the callbacks after this one;
put it first, ``trainer.callback_handler.callbacks.insert(0, callback)``, for the ``report_to``
integrations, which the Trainer places before user callbacks), averaged over the optimizer steps
since the last record as the Trainer averages ``loss``:

- ``penalty``: R(w) at the weights each optimizer step starts from;
- ``data_loss`` (``"loss"`` mode, where the Trainer's ``loss`` includes the penalty): the loss
  without it (this process's).

In ``"grad"`` and ``"prox"`` modes the Trainer's ``loss`` (and ``eval_loss``) is the data loss.

:func:`decay_parameter_names` gives the Trainer's built-in weight decay regtorch's selection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import transformers
from torch import Tensor, nn
from torch.optim import Optimizer

from regtorch.integrations._hooks import check_mode
from regtorch.optim import attach_grad, attach_prox, param_groups
from regtorch.regularizer import Regularizer

__all__ = ["Regularization", "decay_parameter_names"]

LossFn = Callable[..., Tensor]


class Regularization(transformers.TrainerCallback):
    """Regularize the model a ``Trainer`` trains: fused gradient, loss term or proximal step.

    The objective is

    .. math::  \\min_w \\; \\ell(w) + R(w)

    with ℓ the Trainer's loss and R the penalties (the same R in every mode; see
    :mod:`regtorch.integrations.transformers` for where each mode acts).

    Args:
        penalty_or_rules: what :class:`~regtorch.Regularizer` takes: a penalty (applied to
            :data:`~regtorch.WEIGHTS`) or rules, with the model's parameter names.
        mode: ``"grad"`` (fused gradient, default), ``"loss"`` (loss term, with
            :meth:`compute_loss_func`) or ``"prox"`` (proximal step).
        log: add ``penalty`` (and in ``"loss"`` mode ``data_loss``) to the Trainer's log records
            (in ``"grad"`` and ``"prox"`` modes the value costs one extra pass over the penalized
            weights per step).

    Attributes:
        regularizer_: the :class:`~regtorch.Regularizer` bound at ``on_train_begin`` (``None``
            before); change strengths through ``regularizer_.rules``.

    Raises:
        ValueError: an unknown mode; in ``"prox"`` mode, penalized parameters the optimizer
            does not update (at ``on_train_begin``).
        TypeError: ``"prox"`` with a penalty without a proximal step or an optimizer whose
            effective step regtorch does not know (at ``on_train_begin``).
        RuntimeError: ``"loss"`` mode whose :meth:`compute_loss_func` the Trainer never called
            (at the first optimizer step).
    """

    def __init__(self, penalty_or_rules: Any, mode: str = "grad", *, log: bool = True) -> None:
        self.penalty_or_rules = penalty_or_rules
        self.mode = check_mode(mode)
        self.log = bool(log)
        self.regularizer_: Regularizer | None = None
        self._model: nn.Module | None = None
        self._handles: list[Any] = []
        self._grad: Any = None  # attach_grad's handle in "grad" mode
        self._reset()

    def _reset(self) -> None:
        self._penalty: Tensor | None = None  # R(w) of the current step ("loss" mode)
        self._data_loss: Tensor | None = None  # the current step's data loss ("loss" mode)
        self._sums: dict[str, Tensor] = {}  # per log window: sums over optimizer steps
        self._steps = 0

    # -- binding -------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, *, model: nn.Module,
                       optimizer: Optimizer, **kwargs: Any) -> None:
        self._remove_hooks()
        self._reset()
        self._model = model
        self.regularizer_ = reg = Regularizer(model, self.penalty_or_rules)
        optimizer = _torch_optimizer(optimizer)
        self._grad = None
        if self.mode == "grad":
            self._grad = attach_grad(optimizer, reg, value=self.log)
            self._handles.append(self._grad)
        # Registered after attach_grad's pre-hook, so it runs after it and reads its value.
        self._handles.append(optimizer.register_step_pre_hook(self._before_step))
        if self.mode == "prox":
            self._handles.append(attach_prox(optimizer, reg))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- the step ------------------------------------------------------------------------------
    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        """Step pre-hook: the weights are still those the gradient was taken at."""
        reg = self.regularizer_
        if reg is None:
            return
        record: dict[str, Tensor | None] = {}
        if self.mode == "grad":
            record["penalty"] = self._grad.value_ if self._grad is not None else None
        elif self.mode == "prox":
            record["penalty"] = reg.value() if self.log else None
        else:
            if self._penalty is None:
                raise RuntimeError("Regularization(mode='loss') added no penalty: pass "
                                   "Trainer(compute_loss_func=callback.compute_loss_func(loss_fn))")
            record = {"penalty": self._penalty, "data_loss": self._data_loss}
            self._penalty = self._data_loss = None
        if self.log:
            for key, value in record.items():
                if value is not None:
                    value = value.detach().double()
                    self._sums[key] = self._sums[key] + value if key in self._sums else value
            self._steps += 1

    def compute_loss_func(self, loss_fn: LossFn) -> LossFn:
        """``loss_fn`` plus this micro-batch's share of R(w), for ``Trainer(compute_loss_func=)``.

        Args:
            loss_fn: ``(outputs, labels, num_items_in_batch=None) -> loss``, normalized over the
                accumulated batch as the Trainer expects of a ``compute_loss_func``.

        Returns:
            The same function with ``items / num_items_in_batch · R(w)`` added in training, where
            ``items = (labels != -100).sum()`` (the micro-batches of one optimizer step add up
            to R(w)); in evaluation (``model.eval()``) ``loss_fn``'s loss unchanged.

        Raises:
            ValueError: the Trainer passed no ``num_items_in_batch`` (the batch had no labels).
        """

        def regularized_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Tensor:
            loss = loss_fn(outputs, labels, num_items_in_batch=num_items_in_batch)
            reg = self.regularizer_
            if reg is None or self._model is None or not self._model.training:
                return loss
            if self.mode != "loss":
                raise ValueError(f"compute_loss_func is for mode='loss' (this callback's mode is "
                                 f"{self.mode!r}: pass the loss function to the Trainer directly)")
            if num_items_in_batch is None or labels is None:
                raise ValueError("Invalid batch: mode='loss' needs labels (the penalty's share of "
                                 "each micro-batch is its labels over num_items_in_batch)")
            penalty = reg()
            share = labels.ne(-100).sum() / num_items_in_batch
            self._penalty = penalty.detach()
            data = loss.detach()
            self._data_loss = data if self._data_loss is None else self._data_loss + data
            return loss + share * penalty

        return regularized_loss

    # -- logging -------------------------------------------------------------------------------
    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if not self.log or logs is None or "loss" not in logs or not self._steps:
            return
        means = {key: float(total) / self._steps for key, total in self._sums.items()}
        logs.update(means)
        # The Trainer appended this record to its history before calling the callbacks.
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("loss") == logs["loss"]:
            last.update(means)
        self._sums, self._steps = {}, 0

    def __repr__(self) -> str:
        return f"Regularization({self.penalty_or_rules!r}, mode={self.mode!r}, log={self.log})"


def decay_parameter_names(model: nn.Module, rules: Any = None) -> list[str]:
    """The names of the parameters that :func:`~regtorch.param_groups` decays, for a Trainer.

    ``Trainer.create_optimizer`` decays the parameters named by ``get_decay_parameter_names``
    with ``args.weight_decay`` and the rest with 0; overriding it with this function gives the
    Trainer's optimizer regtorch's selection::

        class RegtorchTrainer(Trainer):
            def get_decay_parameter_names(self, model):
                return decay_parameter_names(model)

    (Or build the optimizer yourself:
    ``Trainer(optimizers=(torch.optim.AdamW(param_groups(model, 0.01), lr=...), None))``.)

    Args:
        model: the model (wrappers looked through, as by :class:`~regtorch.Regularizer`).
        rules: what to decay, as :func:`~regtorch.param_groups` takes it (``None``:
            :data:`~regtorch.WEIGHTS`).

    Returns:
        The decayed parameters' names as ``model.named_parameters()`` spells them.
    """
    groups = param_groups(model, 1.0, rules)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    return [name for name, p in model.named_parameters() if id(p) in decayed]


def _torch_optimizer(optimizer: Optimizer) -> Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer``: its state holds the
    effective steps, and its ``step`` is the one that updates the weights."""
    while isinstance(getattr(optimizer, "optimizer", None), Optimizer):
        optimizer = optimizer.optimizer  # type: ignore[attr-defined]
    return optimizer
