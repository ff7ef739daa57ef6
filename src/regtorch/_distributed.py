r"""Penalties on DTensor parameters (FSDP2 ``fully_shard``, tensor parallel): private.

A DTensor parameter is a *local shard* on each rank plus placements on a device mesh
(``Shard(d)``: the tensor's dim ``d`` is split over that mesh dim, uneven splits included;
``Replicate()``: every rank of that mesh dim holds the same values). Every quantity a penalty needs
is a sum over elements or over the elements of a group, so it is computed from the local shard as
a *partial sum* and added across the ranks that hold the other parts:

* the value of L1 / L2 (``Σ|w|``, ``Σw²``) and of a group lasso whose groups lie inside a shard
  (rows of a ``Shard(0)`` weight) are partial over the mesh dims that shard the tensor;
* the sum of squares of a group that spans shards (columns of a ``Shard(0)`` weight, rows of a
  ``Shard(1)`` one, a whole sharded tensor) is partial over the mesh dims that shard the group's
  dims; its norm ``√(Σ_ranks s)`` is then known on every rank, and so is the value built from it.

A replicated mesh dim adds nothing (the shard is counted once, not once per replica), so
replicated parameters need no communication at all. All the partial sums a call needs are
concatenated and added with **one** ``all_reduce`` per round (one round for a value or a fused
gradient on a one-dimensional mesh; a group lasso on a mesh that both shards and spans its groups
takes a second round). Nothing reads a shard on the host (no ``.item()``), and no DTensor
reduction is used (``torch.linalg.vector_norm`` of a DTensor over a ``Shard(0)`` dim is wrong in
torch 2.13).

Gradients of ``reg()`` reach the shards: the all-reduce's backward is the identity, because
every rank computes the same R and the partial sum of rank r depends only on rank r's shard —
so ∂R/∂(local shard) is the local part of the global gradient, accumulated into the DTensor's
``.grad`` next to what FSDP2 reduce-scatters there.

Work proceeds as generators, one per (penalty term, parameter): each computes its partial sums,
registers them with a :class:`_Round` and yields; when every generator has yielded, one
collective adds the round's partial sums and every generator resumes with the global values.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Generator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from regtorch._reduce import float64_zero, sum_of_abs, sum_of_squares
from regtorch._strength import is_zero

__all__ = ["add_grad_", "check", "is_dtensor", "prox_", "uses_dtensors", "value"]

Work = Generator[None, None, Tensor | None]


def _dtensor_type() -> type | None:
    """The DTensor class, or ``None`` while nothing has imported it (then no tensor can be a
    DTensor, and regtorch does not pay for the import)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def is_dtensor(t: object) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def uses_dtensors(params: Sequence[Tensor]) -> bool:
    """Whether any of ``params`` is a DTensor (then every penalty of the group goes through this
    module)."""
    return _dtensor_type() is not None and any(is_dtensor(p) for p in params)


def check(penalty: Any, params: Sequence[Tensor]) -> None:
    """Raise if ``penalty`` cannot act on these (DTensor) parameters: a placement other than
    Shard / Replicate, a penalty kind or a stacked strength this module does not handle."""
    _terms(penalty)
    for p in params:
        _sharding(p)


def _local(t: Any) -> Any:
    """The local shard of a DTensor (differentiable under grad mode); anything else as is."""
    return t.to_local() if is_dtensor(t) else t


# -- placements ---------------------------------------------------------------------------------


def _sharding(p: Tensor) -> tuple[Any, dict[int, tuple[int, ...]]]:
    """(mesh, {tensor dim: mesh dims that shard it}) of a DTensor; (None, {}) for a tensor."""
    if not is_dtensor(p):
        return None, {}
    from torch.distributed.tensor import Replicate, Shard

    by_dim: dict[int, tuple[int, ...]] = {}
    for mesh_dim, placement in enumerate(p.placements):
        if isinstance(placement, Shard):
            dim = placement.dim % p.ndim
            by_dim[dim] = (*by_dim.get(dim, ()), mesh_dim)
        elif not isinstance(placement, Replicate):
            raise ValueError(f"regtorch penalties need parameters placed as Shard or Replicate, "
                             f"got {type(placement).__name__} ({placement}) for a tensor of shape "
                             f"{tuple(p.shape)}; redistribute it first")
    return p.device_mesh, by_dim


def _mesh_dims(by_dim: dict[int, tuple[int, ...]], dims: Sequence[int] | None = None
               ) -> tuple[int, ...]:
    """Mesh dims that shard any of ``dims`` (all tensor dims when ``None``), sorted."""
    chosen = by_dim if dims is None else {d: by_dim[d] for d in dims if d in by_dim}
    return tuple(sorted({m for mesh_dims in chosen.values() for m in mesh_dims}))


# -- one collective per round -------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Sum over process groups; the backward is the identity (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, groups: tuple) -> Tensor:
        y = x.clone()
        for group in groups:
            dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def _groups(mesh: Any, mesh_dims: tuple[int, ...]) -> tuple:
    """Process groups whose successive all-reduces add over ``mesh_dims`` of ``mesh``: the world
    group in one call when the mesh is the world, else one group per mesh dim."""
    if len(mesh_dims) == mesh.ndim and mesh.size() == dist.get_world_size():
        return (None,)
    return tuple(mesh.get_group(d) for d in mesh_dims)


class _Round:
    """Partial sums registered by the work of one round, added across ranks at once."""

    def __init__(self) -> None:
        self._entries: dict[tuple, list[Tensor]] = {}
        self._results: dict[tuple, list[Tensor]] = {}

    def add(self, partial: Tensor, mesh: Any, mesh_dims: tuple[int, ...]) -> tuple[tuple, int]:
        """Register ``partial`` (any shape); returns a handle for :meth:`result`."""
        key = (mesh, mesh_dims)
        entries = self._entries.setdefault(key, [])
        entries.append(partial)
        return key, len(entries) - 1

    def result(self, handle: tuple[tuple, int]) -> Tensor:
        key, index = handle
        return self._results[key][index]

    def run(self) -> None:
        for key, entries in self._entries.items():
            mesh, mesh_dims = key
            flat = torch.cat([e.reshape(-1).to(torch.float64) for e in entries])
            summed = _AllReduceSum.apply(flat, _groups(mesh, mesh_dims))
            pieces = summed.split([e.numel() for e in entries])
            self._results[key] = [s.view(e.shape) for s, e in zip(pieces, entries)]
        self._entries = {}


def _run(works: list[Callable[[_Round], Work]]) -> list[Tensor | None]:
    """Drive the generators round by round, one collective per round; their return values."""
    results: list[Tensor | None] = [None] * len(works)
    live: dict[int, Work] = {}
    current = _Round()
    for i, make in enumerate(works):
        gen = make(current)
        live[i] = gen
    while live:
        for i, gen in list(live.items()):
            try:
                next(gen)
            except StopIteration as stop:
                results[i] = stop.value
                del live[i]
        if live:
            current.run()
    return results


# Each work function below is a generator over a shared _Round: it registers partial sums with
# ``round.add`` and yields once per round it needs; ``round.result`` then has the global sums.


def _sum_value(partial: Tensor, p: Tensor, by_dim: dict, mesh: Any, rnd: _Round) -> Work:
    """A value that is a plain sum over the elements of ``p``'s local shard."""
    mesh_dims = _mesh_dims(by_dim)
    if not mesh_dims:
        return partial
    handle = rnd.add(partial, mesh, mesh_dims)
    yield
    return rnd.result(handle)


# -- the penalties ----------------------------------------------------------------------------


def _terms(penalty: Any) -> tuple:
    from regtorch.penalties import L1, L2, GroupLasso, Orthogonal

    for term in penalty.terms:
        if not isinstance(term, (L1, L2, GroupLasso, Orthogonal)):
            raise TypeError(f"{term!r} does not support DTensor parameters")
        if isinstance(term.lam, Tensor):
            raise ValueError(f"{term!r}: stacked [K] strengths do not support DTensor "
                             f"parameters")
    return penalty.terms


def _group_sumsq(term: Any, p: Tensor, local: Tensor) -> tuple[tuple[int, ...], Tensor | None]:
    """(dims of a group, local sum of squares per group with keepdim, float64)."""
    dims = term._reduce_dims(p)
    if not dims:
        return dims, None
    return dims, torch.linalg.vector_norm(local, 2, dim=dims, keepdim=True,
                                          dtype=torch.float64).square()


def _safe_sqrt(x: Tensor) -> Tensor:
    from regtorch.penalties import _safe_sqrt as sqrt

    return sqrt(x)


def _group_norms(term: Any, p: Tensor, local: Tensor, by_dim: dict, mesh: Any, rnd: _Round
                 ) -> Generator[None, None, tuple[tuple[int, ...], Tensor, bool]]:
    """Global ‖w_g‖₂ of the groups that meet the local shard (keepdim, float64), and whether
    they are *replicated* (the same groups on every rank of the mesh dims sharding ``p``)."""
    dims, sumsq = _group_sumsq(term, p, local)
    if sumsq is None:  # groups are single elements
        return dims, local.abs().to(torch.float64), False
    spanning = _mesh_dims(by_dim, dims)
    if spanning:
        handle = rnd.add(sumsq, mesh, spanning)
        yield
        sumsq = rnd.result(handle)
    return dims, _safe_sqrt(sumsq), True


def _value_work(term: Any, p: Tensor, rnd: _Round) -> Work:
    from regtorch.penalties import L1, L2, GroupLasso

    mesh, by_dim = _sharding(p)
    local = _local(p)
    if isinstance(term, L1):
        return (yield from _sum_value(term.lam * sum_of_abs([local]), p, by_dim, mesh, rnd))
    if isinstance(term, L2):
        return (yield from _sum_value(0.5 * term.lam * sum_of_squares([local]), p, by_dim, mesh,
                                      rnd))
    if isinstance(term, GroupLasso):
        dims, norms, _ = yield from _group_norms(term, p, local, by_dim, mesh, rnd)
        partial = term.lam * term._coefficient(p, dims) * norms.sum()
        # Groups inside a shard add across the mesh dims that shard the other (group-index) dims.
        rest = [d for d in range(p.ndim) if d not in dims]
        return (yield from _sum_value(partial, p, {d: by_dim[d] for d in rest if d in by_dim},
                                      mesh, rnd))
    # Orthogonal: the Gram matrix of the whole tensor (gathered; differentiable).
    full = p.full_tensor() if is_dtensor(p) else p
    return term.value([full])


def value(penalties: Sequence[tuple[Any, Sequence[Tensor]]]) -> list[Tensor]:
    """R per (penalty, params) pair, global on every rank (differentiable), one collective per
    round over all of them."""
    works, owners = [], []
    for index, (penalty, params) in enumerate(penalties):
        for term in _terms(penalty):
            for p in params:
                works.append(functools.partial(_value_work, term, p))
                owners.append(index)
    totals = [float64_zero() for _ in penalties]
    for owner, result in zip(owners, _run(works)):
        totals[owner] = totals[owner] + result.to(totals[owner].device)
    return totals


def _add_grad_work(term: Any, p: Tensor, g: Tensor, want_value: bool, rnd: _Round) -> Work:
    from regtorch.penalties import L1, L2, GroupLasso, _norm_floor

    mesh, by_dim = _sharding(p)
    local, grad = _local(p), _local(g)
    if isinstance(term, (L1, L2)):
        if not is_zero(term.lam):
            if isinstance(term, L1):
                grad.add_(torch.sign(local), alpha=term.lam)
            else:
                grad.add_(local, alpha=term.lam)
        if not want_value:
            return None
        partial = (term.lam * sum_of_abs([local]) if isinstance(term, L1)
                   else 0.5 * term.lam * sum_of_squares([local]))
        return (yield from _sum_value(partial, p, by_dim, mesh, rnd))
    if isinstance(term, GroupLasso):
        dims, norms, _ = yield from _group_norms(term, p, local, by_dim, mesh, rnd)
        c = term._coefficient(p, dims)
        if not is_zero(term.lam):
            scale = (term.lam * c) / norms.clamp_min(_norm_floor(local.dtype))
            grad.addcmul_(local, scale.to(local.dtype))
        if not want_value:
            return None
        partial = term.lam * c * norms.sum()
        rest = [d for d in range(p.ndim) if d not in dims]
        return (yield from _sum_value(partial, p, {d: by_dim[d] for d in rest if d in by_dim},
                                      mesh, rnd))
    # Orthogonal: autograd through the gathered tensor; its backward keeps the local part.
    with torch.enable_grad():
        leaf = p.detach().requires_grad_()
        total = term.value([leaf.full_tensor() if is_dtensor(leaf) else leaf])
        (gradient,) = torch.autograd.grad(total, [leaf])
    grad.add_(_local(gradient))
    return total.detach() if want_value else None


def add_grad_(penalties: Sequence[tuple[Any, Sequence[Tensor], Sequence[Tensor]]],
              want_value: bool) -> list[Tensor] | None:
    """``grads += ∇R`` on the local shards, per (penalty, params, grads); R per penalty when
    ``want_value`` (global on every rank)."""
    works, owners = [], []
    for index, (penalty, params, grads) in enumerate(penalties):
        for term in _terms(penalty):
            for p, g in zip(params, grads):
                works.append(functools.partial(_add_grad_work, term, p, g, want_value))
                owners.append(index)
    results = _run(works)
    if not want_value:
        return None
    totals = [float64_zero() for _ in penalties]
    for owner, result in zip(owners, results):
        if result is not None:
            totals[owner] = totals[owner] + result.to(totals[owner].device)
    return totals


def _prox_work(penalty: Any, p: Tensor, step: Any, rnd: _Round) -> Work:
    """The proximal step of a penalty with one (L1, L2, GroupLasso) prox, on ``p``'s shard."""
    from regtorch.penalties import L1, L2, GroupLasso, _norm_floor

    mesh, by_dim = _sharding(p)
    local = _local(p)
    step = _local(step)
    terms = penalty.terms
    l1 = sum(t.lam for t in terms if isinstance(t, L1))
    l2 = sum(t.lam for t in terms if isinstance(t, L2))
    groups = [t for t in terms if isinstance(t, GroupLasso)]
    if l1:
        tau = step * l1
        local.sub_(local.clamp(-tau, tau) if isinstance(tau, Tensor)
                   else local.clamp(min=-tau, max=tau))
    if groups:
        term = groups[0]
        lam = sum(g.lam for g in groups)
        dims = term._reduce_dims(p)
        tau = step * lam
        if isinstance(tau, Tensor) and dims:  # one step per group: the group's mean step
            tau_sum = tau.expand_as(local).sum(dim=dims, keepdim=True, dtype=torch.float64)
            spanning = _mesh_dims(by_dim, dims)
            if spanning:
                handle = rnd.add(tau_sum, mesh, spanning)
                yield
                tau_sum = rnd.result(handle)
            size = 1
            for d in dims:
                size *= p.shape[d]
            tau = (tau_sum / size).to(local.dtype)
        _, norms, _ = yield from _group_norms(term, p, local, by_dim, mesh, rnd)
        norms = norms.to(local.dtype).clamp_min_(_norm_floor(local.dtype))
        local.mul_((1.0 - tau * term._coefficient(p, dims) / norms).clamp_min_(0.0))
    if l2:
        local.div_(1.0 + step * l2)
    return None


def prox_(penalties: Sequence[tuple[Any, Sequence[Tensor], Sequence[Any]]]) -> None:
    """``w ← prox_{t·R}(w)`` on the local shards, per (penalty, params, steps)."""
    works = []
    for penalty, params, steps in penalties:
        if not penalty.has_prox:
            penalty.prox_([], [])  # raises the penalty's own TypeError
        _terms(penalty)
        for p, step in zip(params, steps):
            works.append(functools.partial(_prox_work, penalty, p, step))
    _run(works)
