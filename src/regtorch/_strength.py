"""Regularization strengths: validation and broadcasting (private).

A strength is either a Python number (one model) or a 1-D tensor of shape ``[K]`` whose entry ``k``
applies to slice ``k`` of parameters stacked along a leading member dimension ``[K, ...]``
(K models trained at once, e.g. with :func:`torch.func.stack_module_state`).
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

__all__ = ["Strength", "as_tensor_like", "check_members", "is_zero", "validate_strength"]

Strength = float | Tensor


def validate_strength(value: object, name: str) -> Strength:
    """Return ``value`` as a float or a ``[K]`` tensor, or raise naming ``name`` and the value.

    Raises:
        TypeError: ``value`` is not a real number or a floating-point tensor.
        ValueError: ``value`` is negative, NaN or infinite, or a tensor that is not 0-d or 1-d.
    """
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"Invalid {name} value: a strength tensor must be floating point, "
                            f"got dtype {value.dtype}")
        if value.ndim == 0:
            return validate_strength(value.item(), name)
        if value.ndim != 1:
            raise ValueError(f"Invalid {name} value: a strength tensor must have shape [K] "
                             f"(one strength per stacked member), got shape {tuple(value.shape)}")
        bad = ~torch.isfinite(value) | (value < 0)
        if bool(bad.any()):
            raise ValueError(f"Invalid {name} value: {value[bad][0].item()} in {value.tolist()} "
                             f"(strengths must be finite and >= 0)")
        return value.detach()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"Invalid {name} value: {value!r} (expected a non-negative number "
                        f"or a [K] tensor)")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Invalid {name} value: {value} (strengths must be finite and >= 0)")
    return value


def is_zero(value: Strength) -> bool:
    """True for the constant 0, which lets a penalty skip its work (a tensor is never skipped)."""
    return not isinstance(value, Tensor) and value == 0.0


def as_tensor_like(value: Strength, param: Tensor) -> Strength:
    """``value`` ready to broadcast against ``param``: a float stays a float, a ``[K]`` tensor
    becomes a ``[K, 1, ..., 1]`` view in ``param``'s dtype and device."""
    if not isinstance(value, Tensor):
        return value
    value = value.to(dtype=param.dtype, device=param.device)
    return value.view((-1,) + (1,) * (param.ndim - 1))


def check_members(value: Strength, param: Tensor, where: str) -> None:
    """Raise if a ``[K]`` strength does not match ``param``'s leading (member) dimension."""
    if isinstance(value, Tensor) and (param.ndim == 0 or param.shape[0] != value.shape[0]):
        raise ValueError(f"{where}: a strength of shape [{value.shape[0]}] needs parameters "
                         f"stacked as [{value.shape[0]}, ...], got shape {tuple(param.shape)}")
