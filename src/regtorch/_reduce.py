"""Accurate sums of w² and |w| over lists of tensors (private).

A float32 reduction over a 4096×4096 tensor that accumulates in float32 lanes is 1e-4 to 1e-3 off
in relative terms (``torch._foreach_norm`` and ``torch.dot`` on CPU both are); upcasting the whole
tensor to float64 is exact but ~20× slower. Two cheap ways keep the error below 1e-6:

* sums of squares: ``torch.dot`` over pieces of at most ``CHUNK`` = 2¹⁸ elements (views, no
  copy; under 1e-6 relative per piece, measured), the per-piece results added in float64.
  ``dot`` is the fastest float32 reduction on CPU (BLAS), faster than ``_foreach_norm``.
* plain sums (of ``|w|``): ``torch.sum``, whose CPU kernel sums in cascades (~1e-8 relative on
  16M elements), one call per tensor, results added in float64.

Half-precision tensors are reduced in float32.

The detached sums of ``add_grad_(value=True)`` (float32 and float64 only) take pieces made once
by :func:`flat_pieces` (a penalty's scratch caches them across steps) and come in two forms: one
``dot`` per piece (:func:`sum_of_dots`, the fastest and most accurate on CPU), or one
``_foreach_norm`` over every piece (:func:`foreach_sum_of_powers`: a constant number of kernel
launches whatever the number of tensors, the form for accelerators).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["CHUNK", "accumulation_dtype", "flat_pieces", "float64_zero", "foreach_sum_of_powers",
           "member_sum_of_powers", "sum_nonnegative", "sum_of_abs", "sum_of_dots", "sum_of_squares"]

CHUNK = 1 << 18
_HALF = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """dtype a reduction of ``dtype`` elements runs in: float32 for half types, else ``None``
    (the tensor's own dtype)."""
    return torch.float32 if dtype in _HALF else None


def float64_zero() -> Tensor:
    """A 0-d float64 zero: the value of an empty list of tensors."""
    return torch.zeros((), dtype=torch.float64)


def _total(parts: list[Tensor]) -> Tensor:
    return torch.stack(parts).sum(dtype=torch.float64) if parts else float64_zero()


def _squares(piece: Tensor) -> Tensor:
    if piece.dtype in _HALF:
        norm = torch.linalg.vector_norm(piece, dtype=torch.float32)
        return norm * norm
    return torch.dot(piece, piece)


def flat_pieces(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Every tensor as 1-D pieces of at most ``CHUNK`` elements, in order (views of a contiguous
    tensor; a non-contiguous one is copied by ``reshape``)."""
    out: list[Tensor] = []
    for t in tensors:
        flat = t.reshape(-1)
        if flat.numel() > CHUNK:
            out.extend(flat.split(CHUNK))
        else:
            out.append(flat)
    return out


def sum_of_squares(tensors: Sequence[Tensor]) -> Tensor:
    """``Σ_t Σ_i t_i²`` as a 0-d float64 tensor (differentiable)."""
    return _total([_squares(piece) for piece in flat_pieces(tensors)])


def sum_of_dots(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """``Σ_j a_j · b_j`` over paired 1-D float32/float64 pieces (from :func:`flat_pieces`): one
    ``dot`` per piece, the results added in float64. With ``b = a`` it is :func:`sum_of_squares`
    bit for bit; with ``b = sign(a)`` it is ``Σ|a|`` (each product ``a·sign(a) = |a|`` exactly)."""
    return _total([torch.dot(x, y) for x, y in zip(a, b)])


def foreach_sum_of_powers(pieces: Sequence[Tensor], p: int) -> Tensor:
    """``Σ_j ‖piece_j‖_p^p`` for ``p`` in (1, 2), float64, from one ``torch._foreach_norm`` over
    all the pieces (float32/float64): O(1) kernel launches in the number of tensors.

    Each piece's norm is a float32 (or float64) reduction; on CPU torch's norm kernel is less
    accurate than ``dot`` (2.5e-6 relative on a 2¹⁸-element float32 piece, vs 8e-7), which is why
    the CPU path uses :func:`sum_of_dots`.
    """
    if not pieces:
        return float64_zero()
    norms = torch.stack(torch._foreach_norm(list(pieces), p)).to(torch.float64)
    return torch.dot(norms, norms) if p == 2 else norms.sum()


def sum_of_abs(tensors: Sequence[Tensor]) -> Tensor:
    """``Σ_t Σ_i |t_i|`` as a 0-d float64 tensor (differentiable; allocates ``|t|``)."""
    return sum_nonnegative([t.abs() for t in tensors])


def sum_nonnegative(tensors: Sequence[Tensor]) -> Tensor:
    """``Σ_t Σ_i t_i`` (e.g. of ``|w|`` written into a buffer) as a 0-d float64 tensor."""
    return _total([t.sum(dtype=accumulation_dtype(t.dtype)) for t in tensors])


def member_sum_of_powers(t: Tensor, p: int) -> Tensor:
    """``Σ_i |t[k]_i|^p`` for each member ``k`` of a stacked ``[K, ...]`` tensor: shape ``[K]``,
    float64 (differentiable)."""
    flat = t.flatten(1) if t.ndim > 1 else t.unsqueeze(1)
    norms = torch.linalg.vector_norm(flat, ord=p, dim=1, dtype=accumulation_dtype(t.dtype))
    norms = norms.to(torch.float64)
    return norms * norms if p == 2 else norms
