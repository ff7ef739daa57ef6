"""Dropout helpers: list a model's dropout modules and set all their rates at once.

torch's ``nn.Dropout*`` modules read their rate ``p`` at every forward, so changing it on a built
model takes effect at once; what torch lacks is a way to reach every one of them, including the
attention dropout of ``nn.MultiheadAttention``, which is not a module but a float attribute
``dropout`` (so a ``TransformerEncoderLayer`` has three ``nn.Dropout`` modules and a fourth rate
inside its ``self_attn``). :func:`dropout_modules` lists them all, :func:`set_dropout` sets
them all::

    set_dropout(model, 0.0)  # no dropout anywhere, even in train mode
    set_dropout(model, 0.1)  # back on

Dropout applied by a functional call in someone's ``forward`` (``F.dropout(x, 0.1)``) has no module
to reach and is left alone.
"""

from __future__ import annotations

import logging
from numbers import Real

from torch import nn

from regtorch.selection import unwrap

__all__ = ["dropout_modules", "set_dropout"]

logger = logging.getLogger("regtorch")

# Modules whose rate is ``module.p``; looked up by name so a torch without one still imports.
_DROPOUT_TYPES: tuple[type[nn.Module], ...] = tuple(
    cls for cls in (getattr(nn, name, None) for name in (
        "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
    )) if cls is not None
)


def _rate_attribute(module: nn.Module) -> str | None:
    """The attribute holding ``module``'s dropout rate, or ``None`` for a module without one."""
    if isinstance(module, nn.MultiheadAttention):
        return "dropout"  # a float read by forward (attention-weight dropout)
    if isinstance(module, _DROPOUT_TYPES):
        return "p"
    return None


def dropout_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every dropout module of ``model``, with its name, in ``named_modules()`` order.

    Dropout modules are the instances (subclasses included) of ``nn.Dropout``, ``nn.Dropout1d``,
    ``nn.Dropout2d``, ``nn.Dropout3d``, ``nn.AlphaDropout``, ``nn.FeatureAlphaDropout`` — rate
    ``module.p`` — and ``nn.MultiheadAttention`` — rate ``module.dropout``. A module shared by two
    parents is listed once, under its first name.

    Args:
        model: the model; names are those of the unwrapped model (``DataParallel``,
            ``DistributedDataParallel`` and ``torch.compile`` wrappers are looked through).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.ReLU(), nn.Dropout1d(0.2))
        >>> dropout_modules(model)
        [('1', Dropout(p=0.5, inplace=False)), ('3', Dropout1d(p=0.2, inplace=False))]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
    return [(name, module) for name, module in unwrap(model).named_modules()
            if _rate_attribute(module) is not None]


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the rate of every dropout module of ``model`` (see :func:`dropout_modules`) to ``p``.

    The rate is the probability of zeroing an element (torch's ``p``, not Keras' keep
    probability). The attention dropout of every ``nn.MultiheadAttention`` is set too, so
    ``set_dropout(transformer, 0.0)`` really turns all dropout off, even in train mode; in eval
    mode dropout is off whatever the rate.

    Args:
        model: the model (wrappers are looked through).
        p: the new rate, a real number in ``[0, 1]``.

    Returns:
        How many modules' rate changed (a module already at ``p`` is not counted).

    Raises:
        TypeError: ``p`` is not a real number (a bool included), or ``model`` is not a module.
        ValueError: ``p`` is NaN or outside ``[0, 1]``.

    Example:
        >>> layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dropout=0.1)
        >>> set_dropout(layer, 0.0)  # dropout, dropout1, dropout2 and self_attn
        4
        >>> set_dropout(layer, 0.0)
        0
        >>> layer.self_attn.dropout, layer.dropout.p
        (0.0, 0.0)
    """
    if isinstance(p, bool) or not isinstance(p, Real):
        raise TypeError(f"Invalid p value: {p!r} (expected a real number in [0, 1])")
    rate = float(p)
    if not 0.0 <= rate <= 1.0:  # NaN included
        raise ValueError(f"Invalid p value: {p!r} (must be in [0, 1])")
    modules = dropout_modules(model)
    changed = 0
    for _, module in modules:
        attribute = _rate_attribute(module)
        if getattr(module, attribute) != rate:
            setattr(module, attribute, rate)
            changed += 1
    logger.debug("regtorch: dropout rate set to %g on %d of %d dropout modules",
                 rate, changed, len(modules))
    return changed
