"""What both integrations share (private): the mode names and finding the optimizer to hook.

Each framework owns its optimizer object; regtorch acts on it only through torch's public step
hooks (:func:`regtorch.attach_prox`, :func:`regtorch.attach_grad`), so schedulers, gradient
scalers and checkpoints keep seeing the user's optimizer.
"""

from __future__ import annotations

from torch.optim import Optimizer

from regtorch.regularizer import Regularizer

__all__ = ["MODES", "check_mode", "owner_of"]

MODES = ("grad", "loss", "prox")


def check_mode(mode: object) -> str:
    if mode not in MODES:
        raise ValueError(f"Invalid mode value: {mode!r} (expected one of "
                         f"{', '.join(repr(m) for m in MODES)})")
    return mode  # type: ignore[return-value]


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
