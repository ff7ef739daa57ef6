"""What both integrations share (private): the mode names and the optimizer hooks they install.

Each framework owns its optimizer object; regtorch acts on it only through torch's public
step hooks, so schedulers, gradient scalers and checkpoints keep seeing the user's optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from regtorch.regularizer import Regularizer

__all__ = ["MODES", "attach_grad", "check_mode", "owner_of", "prox_hook"]

MODES = ("grad", "loss", "prox")


def check_mode(mode: object) -> str:
    if mode not in MODES:
        raise ValueError(f"Invalid mode value: {mode!r} (expected one of "
                         f"{', '.join(repr(m) for m in MODES)})")
    return mode  # type: ignore[return-value]


def prox_hook(optimizer: Optimizer, regularizer: Regularizer) -> RemovableHandle:
    """Run ``regularizer``'s proximal step after every ``optimizer.step()``, at the optimizer's
    effective step size; a step the optimizer skips (a gradient scaler that found inf) gets none."""
    try:
        from regtorch.optim import attach_prox  # type: ignore[attr-defined]
    except ImportError:  # until regtorch.attach_prox lands: the same hook over Proximal's steps
        from regtorch.optim import Proximal

        steps = Proximal(optimizer, regularizer)

        def prox(_optimizer: Optimizer, _args: Any, _kwargs: Any) -> None:
            regularizer.prox_(steps.effective_steps())

        return optimizer.register_step_post_hook(prox)
    return attach_prox(optimizer, regularizer)


def attach_grad(optimizer: Optimizer, regularizer: Regularizer,
                record: Callable[[Tensor], None] | None) -> RemovableHandle:
    """Add ∇R into ``.grad`` right before every ``optimizer.step()`` updates the weights: after a
    gradient scaler unscaled the gradients and after gradient clipping, which is where torch's
    own ``weight_decay`` acts; ``record`` gets R(w) (detached) when given."""

    def add_grad(_optimizer: Optimizer, _args: Any, _kwargs: Any) -> None:
        value = regularizer.add_grad_(value=record is not None)
        if record is not None:
            record(value)  # type: ignore[arg-type]

    return optimizer.register_step_pre_hook(add_grad)


def owner_of(optimizers: list[Optimizer], regularizer: Regularizer) -> Optimizer:
    """The one optimizer that updates every penalized trainable parameter."""
    penalized = {id(p): name for name, p in regularizer.named_parameters() if p.requires_grad}
    owners = [o for o in optimizers
              if any(id(p) in penalized for g in o.param_groups for p in g["params"])]
    if len(owners) != 1:
        raise ValueError(f"Invalid optimizers: {len(owners)} of the {len(optimizers)} optimizers "
                         f"update penalized parameters (regtorch's integrations need exactly "
                         f"one optimizer that updates all of them)")
    owned = {id(p) for g in owners[0].param_groups for p in g["params"]}
    missing = [name for key, name in penalized.items() if key not in owned]
    if missing:
        raise ValueError(f"Penalized parameters not updated by the optimizer: "
                         f"{', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}")
    return owners[0]
