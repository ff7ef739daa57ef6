"""Accurate sums of |w| and w² over lists of tensors (private).

A float32 norm over a 4096×4096 tensor, as ``torch._foreach_norm`` computes it on CPU, is 1e-4 to
1e-3 off in relative terms; upcasting the whole tensor to float64 is exact but ~20× slower. We
split large tensors into chunks of ``CHUNK`` elements (a view each, no copy), take every chunk's
norm in one fused ``_foreach_norm`` call, and add the partial results in float64: ~4e-7 relative
error at the cost of the float32 pass. Half-precision tensors are reduced in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["CHUNK", "accumulation_dtype", "member_sum_of_powers", "sum_of_powers"]

CHUNK = 1 << 16
_HALF = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """dtype a reduction of ``dtype`` elements runs in: float32 for half types, else ``None``
    (the tensor's own dtype)."""
    return torch.float32 if dtype in _HALF else None


def _chunks(tensors: Sequence[Tensor]) -> list[Tensor]:
    out: list[Tensor] = []
    for t in tensors:
        if t.numel() > CHUNK:
            out.extend(t.reshape(-1).split(CHUNK))
        else:
            out.append(t)
    return out


def sum_of_powers(tensors: Sequence[Tensor], p: int) -> Tensor:
    """``Σ_t Σ_i |t_i|^p`` for ``p`` in {1, 2} as a 0-d float64 tensor (differentiable)."""
    chunks = _chunks(tensors)
    if not chunks:
        return torch.zeros((), dtype=torch.float64)
    if any(c.dtype in _HALF for c in chunks):
        half = [c for c in chunks if c.dtype in _HALF]
        full = [c for c in chunks if c.dtype not in _HALF]
        parts = [*torch._foreach_norm(half, ord=p, dtype=torch.float32),
                 *(torch._foreach_norm(full, ord=p) if full else ())]
    else:
        parts = torch._foreach_norm(chunks, ord=p)
    norms = torch.stack(parts).to(torch.float64)
    return torch.dot(norms, norms) if p == 2 else norms.sum()


def member_sum_of_powers(t: Tensor, p: int) -> Tensor:
    """``Σ_i |t[k]_i|^p`` for each member ``k`` of a stacked ``[K, ...]`` tensor: shape ``[K]``,
    float64 (differentiable)."""
    flat = t.flatten(1) if t.ndim > 1 else t.unsqueeze(1)
    norms = torch.linalg.vector_norm(flat, ord=p, dim=1, dtype=accumulation_dtype(t.dtype))
    norms = norms.to(torch.float64)
    return norms * norms if p == 2 else norms
