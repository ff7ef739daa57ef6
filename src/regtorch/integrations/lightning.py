r"""regtorch in PyTorch Lightning: a callback that regularizes the LightningModule it is given.

.. code-block:: python

    from regtorch import L1
    from regtorch.integrations.lightning import Regularization

    trainer = lightning.Trainer(callbacks=[Regularization(L1(1e-3), mode="prox")])
    trainer.fit(module)

The callback binds a :class:`~regtorch.Regularizer` to the LightningModule when fitting starts
(after ``configure_model`` and ``configure_optimizers``, so it sees the parameters the strategy
trains, e.g. FSDP2's sharded ones), and applies it in one of three modes with one meaning — the
objective is the data loss returned by ``training_step`` plus R(w):

- ``"grad"``: the fused gradient ∇R is added into ``.grad`` in ``on_before_optimizer_step``:
  once per optimizer step (after all the accumulated micro-batches), after the precision plugin
  unscaled the gradients, and *before* Lightning clips them (so clipping acts on data gradient
  plus penalty gradient, as it does in ``"loss"`` mode).
- ``"loss"``: R(w) is added to the loss that ``training_step`` returns (through autograd; Lightning
  then divides it by ``accumulate_grad_batches`` with the data loss, so an optimizer step sees ∇R
  once). Automatic optimization only.
- ``"prox"``: the proximal step runs after every ``optimizer.step()``
  (:func:`regtorch.attach_prox` on the optimizer from ``configure_optimizers``, at its effective
  step size): exact zeros for L1 and group lasso. A step that a gradient scaler skips gets no
  proximal step.

Logged through ``pl_module.log`` (so through whatever logger the Trainer has):

- ``train/data_loss``: what ``training_step`` returned, per batch (without the penalty);
- ``train/penalty``: R(w) at the weights the optimizer step starts from, per optimizer step;
- ``val/data_loss``: what ``validation_step`` returned (a tensor, or a dict's ``"loss"``), as an
  epoch mean.

Strategies: single device, DDP (the penalty is the same on every rank; the data losses are
averaged over ranks) and ``ModelParallelStrategy`` (FSDP2 ``fully_shard`` in ``configure_model``;
the regularizer is bound to the sharded DTensor parameters). ``FSDPStrategy`` (FSDP1) is not
supported: it flattens parameters into one 1-D ``FlatParameter`` per wrapped module and
replaces the parameter tensors between forward and optimizer step, so neither the shapes that
selection and group penalties need nor stable tensors to bind to exist; use
``ModelParallelStrategy`` for sharded training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from torch import Tensor
from torch.optim import Optimizer

from regtorch.integrations._hooks import check_mode, owner_of
from regtorch.optim import attach_prox
from regtorch.regularizer import Regularizer

__all__ = ["Regularization"]

_NOT_SET = object()  # the module had no training_step of its own (the class's method)


class Regularization(pl.Callback):
    """Regularize the LightningModule being fitted: loss term, fused gradient or proximal step.

    The objective is

    .. math::  \\min_w \\; \\ell(w) + R(w)

    with ℓ the loss ``training_step`` returns and R the penalties (the same R in every mode; only
    how it enters the optimization differs, see :mod:`regtorch.integrations.lightning`).

    Args:
        penalty_or_rules: what :class:`~regtorch.Regularizer` takes: a penalty (applied to
            :data:`~regtorch.WEIGHTS`) or rules. Names are the LightningModule's parameter names
            (e.g. ``"model.0.weight"`` for a module that holds ``self.model``).
        mode: ``"grad"`` (fused gradient, default), ``"loss"`` (loss term) or ``"prox"``
            (proximal step).
        log: log ``train/penalty``, ``train/data_loss`` and ``val/data_loss`` (the penalty's value
            costs one extra pass over the penalized weights in ``"grad"`` and ``"prox"`` modes).

    Attributes:
        regularizer_: the :class:`~regtorch.Regularizer` bound at ``on_fit_start`` (``None``
            before); change strengths through ``regularizer_.rules``.

    Raises:
        ValueError: an unknown mode; ``"loss"`` with manual optimization; ``"grad"`` with a
            ``maximize=True`` optimizer; penalized parameters spread over several optimizers or
            missing from the optimizer (at fit start).
        TypeError: ``"prox"`` with a penalty that has no proximal step or an optimizer whose
            effective step regtorch does not know (at fit start).
    """

    def __init__(self, penalty_or_rules: Any, mode: str = "grad", *, log: bool = True) -> None:
        self.penalty_or_rules = penalty_or_rules
        self.mode = check_mode(mode)
        self.log = bool(log)
        self.regularizer_: Regularizer | None = None
        self._optimizer: Optimizer | None = None
        self._handle: Any = None
        self._pending_state: dict[str, Any] | None = None
        self._shadowed: Any = None  # the instance's own training_step attribute, if any
        self._data_loss: Tensor | None = None
        self._penalty: Tensor | None = None

    # -- binding -------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.mode == "loss" and not pl_module.automatic_optimization:
            raise ValueError("Invalid mode value: 'loss' needs automatic optimization (with manual "
                             "optimization add regularizer_() to the loss yourself, or use "
                             "mode='grad' or 'prox')")
        reg = Regularizer(pl_module, self.penalty_or_rules)
        if self._pending_state is not None:
            reg.load_state_dict(self._pending_state)
            self._pending_state = None
        self.regularizer_ = reg
        self._optimizer = owner_of(list(trainer.optimizers), reg)
        if self.mode == "grad" and any(g.get("maximize", False)
                                       for g in self._optimizer.param_groups):
            raise ValueError("Invalid optimizer: maximize=True (mode='grad' adds ∇R for a "
                             "minimized loss; negate the loss instead)")
        if self.mode == "prox":
            self._handle = attach_prox(self._optimizer, reg)
        self._wrap_training_step(pl_module)

    def _wrap_training_step(self, pl_module: pl.LightningModule) -> None:
        """Shadow ``training_step`` on the instance (Lightning and its strategy wrappers look it
        up there): record the data loss, and add R(w) to it in ``"loss"`` mode."""
        training_step = pl_module.training_step
        self._shadowed = vars(pl_module).get("training_step", _NOT_SET)

        def regularized_training_step(*args: Any, **kwargs: Any) -> Any:
            output = training_step(*args, **kwargs)
            loss = _loss_of(output)
            if loss is None:
                self._data_loss = None
                return output
            self._data_loss = loss.detach()
            if self.mode != "loss":
                return output
            penalty = self.regularizer_()  # type: ignore[misc]
            self._penalty = penalty.detach()
            total = loss + penalty
            return total if isinstance(output, Tensor) else {**output, "loss": total}

        regularized_training_step.__wrapped__ = training_step  # type: ignore[attr-defined]
        pl_module.training_step = regularized_training_step  # type: ignore[method-assign]

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._shadowed is not None:  # put back what the instance had before the fit
            if self._shadowed is _NOT_SET:
                vars(pl_module).pop("training_step", None)
            else:
                pl_module.training_step = self._shadowed  # type: ignore[method-assign]
            self._shadowed = None
        self._optimizer = None

    # -- the step ------------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Optimizer) -> None:
        reg = self.regularizer_
        if reg is None or optimizer is not self._optimizer:
            return
        if self.mode == "grad":
            value = reg.add_grad_(value=self.log)
        elif self.mode == "prox":
            value = reg.value() if self.log else None
        else:
            value = self._penalty
        if self.log and value is not None:
            pl_module.log("train/penalty", value, on_step=True, on_epoch=False)

    # -- logging -------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.log and self._data_loss is not None:
            pl_module.log("train/data_loss", self._data_loss, on_step=True, on_epoch=False,
                          sync_dist=trainer.world_size > 1)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        loss = _loss_of(outputs)
        if self.log and loss is not None:
            pl_module.log("val/data_loss", loss.detach(), on_step=False, on_epoch=True,
                          sync_dist=trainer.world_size > 1)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The penalties' strengths (restored into the regularizer bound at the next fit)."""
        if self.regularizer_ is not None:
            return {"regularizer": self.regularizer_.state_dict()}
        return {"regularizer": self._pending_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("regularizer")
        if saved is None:
            return
        if self.regularizer_ is not None:
            self.regularizer_.load_state_dict(saved)
        else:
            self._pending_state = saved

    def __repr__(self) -> str:
        return f"Regularization({self.penalty_or_rules!r}, mode={self.mode!r}, log={self.log})"


def _loss_of(output: Any) -> Tensor | None:
    """The loss in a step's output: the tensor itself, or a mapping's ``"loss"``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("loss"), Tensor):
        return output["loss"]
    return None
