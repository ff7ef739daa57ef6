r"""Penalties: what a regularization term is — its value, its gradient, its proximal step.

Each penalty is a small configuration object (its strengths) whose methods act on a *list* of
tensors, so one call covers every selected parameter; updates of gradients and weights are fused
``torch._foreach_*`` kernels, and per-tensor work (a sign into a reused buffer, group norms) is a
single pass per tensor with no Python work per element:

* ``value(params)`` — :math:`R(w)`, a differentiable 0-d float64 tensor (float32 and half
  parameters are reduced in chunks and added in float64, so the value stays accurate on large
  models);
* ``add_grad_(params, grads, value=False)`` — ``grads += ∇R(params)`` in place, optionally returning
  :math:`R` (detached) when it comes almost free;
* ``prox_(params, steps)`` — ``params ← prox_{t·R}(params)`` in place, ``steps[i]`` a float or a
  tensor broadcastable to ``params[i]``.

Where a C++ compiler is available, the L1, L2, elastic-net and group-lasso gradients (with their
value) and the L1/L2/elastic-net proximal steps with float steps run through regtorch's fused
kernel instead: one pass over the weights, the value summed in float64, the same gradients
(``_kernel`` below is the one dispatch point; ``docs/performance.md`` says when it applies).

Conventions (``lam`` ≥ 0; the table in the README maps them to torch, Keras, Paddle, scikit-learn):

- ``L2(lam)``: :math:`R = λ/2·Σw²`, gradient :math:`λw`, prox :math:`w/(1 + tλ)`;
- ``L1(lam)``: :math:`R = λ·Σ|w|`, gradient :math:`λ·sign(w)`, prox
  :math:`sign(w)·max(|w| − tλ, 0)` (exact zeros);
- ``ElasticNet(l1, l2)`` = ``L1(l1) + L2(l2)``: sums; prox soft-thresholds by :math:`t·l1`, then
  divides by :math:`1 + t·l2`;
- ``GroupLasso(lam, groups, scale)``: :math:`R = λ·Σ_g c_g‖w_g‖₂`, gradient
  :math:`λc_g·w_g/‖w_g‖` (0 at :math:`w_g = 0`), prox :math:`w_g·max(1 − tλc_g/‖w_g‖, 0)` (whole
  groups become exactly 0);
- ``Orthogonal(lam, mode)``: Keras ``OrthogonalRegularizer``; gradient by autograd; no prox.

Precision: every value is computed in float32 or the parameter's wider dtype — float16 and
bfloat16 parameters in float32, and also under ``torch.autocast`` (whose lower-precision matrix
products :class:`Orthogonal` opts out of) — and returned as float64.

Strengths are plain attributes (``penalty.lam = 1e-3`` during training works) validated on
assignment. A strength may be a tensor of shape ``[K]``: the parameters are then taken as ``K``
models stacked along a leading member dimension ``[K, ...]`` and member ``k`` gets strength ``k``.
Penalties add: ``L1(a) + L2(b)`` is an :class:`ElasticNet`, and any sum is a :class:`Sum` whose
terms are the very objects that were added (changing ``a.lam`` changes the sum).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from regtorch import _fused
from regtorch._reduce import (
    CHUNK,
    accumulation_dtype,
    flat_pieces,
    float64_zero,
    foreach_sum_of_powers,
    member_sum_of_powers,
    sum_of_abs,
    sum_of_dots,
    sum_of_squares,
)
from regtorch._strength import Strength, as_tensor_like, check_members, is_zero, validate_strength

__all__ = ["L1", "L2", "ElasticNet", "GroupLasso", "Orthogonal", "Penalty", "Sum"]

Steps = Sequence["float | Tensor"]

# Keras normalizes rows by x / max(‖x‖, epsilon) with its backend epsilon 1e-7.
_KERAS_EPSILON = 1e-7


# --------------------------------------------------------------------------------------------
# Functional kernels on lists of tensors.
# --------------------------------------------------------------------------------------------


class Scratch:
    """Per-call-site state reused across steps, so that a step allocates nothing and recomputes
    nothing that only depends on shapes or strengths:

    * buffers shaped like a list of parameters (:meth:`like`);
    * 1-D pieces of at most ``CHUNK`` elements of the parameters and buffers (:meth:`pieces`),
      the views a value is reduced over;
    * ``[K]`` strengths as one ``[K, 1, ..., 1]`` view per parameter in its dtype and device
      (:meth:`member_strengths`);
    * per-parameter metadata a penalty derives from shapes (:meth:`memo`);
    * the per-piece results of a value and the float64 weights they are summed with
      (:meth:`sums`).

    Every cache is checked against what it was made from at each use. Buffers and metadata are
    keyed on the identity, shape, dtype and device of the parameters (freezing a layer or moving
    the model recomputes them once); pieces also on each tensor's storage address and strides
    (``p.data = ...`` makes new ones); member strengths on the strength tensor itself and its
    version counter, so both assigning a new tensor (``penalty.lam = t``) and changing it in place
    (``penalty.lam.mul_(2)``) are seen at the next step. While ``torch.compile`` traces, the
    pieces and strengths are recomputed instead (nothing to guard on in a graph).
    """

    __slots__ = ("_bufs", "_key", "_memo", "_pieces", "_strengths", "_sums")

    def __init__(self) -> None:
        self._bufs: list[Tensor] = []
        self._key: tuple | None = None
        self._memo: dict[object, tuple[tuple, object]] = {}
        self._pieces: dict[int, tuple[tuple, list[Tensor]]] = {}  # 0: parameters, 1: buffers
        self._strengths: tuple[Tensor, int, tuple, list[Tensor]] | None = None
        self._sums: tuple[tuple, list[Tensor], Tensor, Tensor] | None = None

    def like(self, params: Sequence[Tensor]) -> list[Tensor]:
        key = tuple([(id(p), p.shape, p.dtype, p.device) for p in params])
        if key != self._key:
            self._bufs = [torch.empty_like(p, memory_format=torch.preserve_format)
                          for p in params]
            self._key = key
            self._pieces.pop(1, None)
        return self._bufs

    def pieces(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """:func:`~regtorch._reduce.flat_pieces` of ``tensors`` (a list of parameters or of this
        scratch's buffers), made once while every tensor keeps its storage, shape and strides."""
        if torch.compiler.is_compiling():
            return flat_pieces(tensors)
        slot = 1 if tensors is self._bufs else 0
        hit = self._pieces.get(slot)
        if slot == 1 and hit is not None:  # this scratch's buffers: like() drops their pieces
            return hit[1]
        key = tuple((id(t), t.data_ptr(), t.shape, t.stride()) for t in tensors)
        if hit is None or hit[0] != key:
            hit = self._pieces[slot] = (key, flat_pieces([t.detach() for t in tensors]))
        return hit[1]

    def sums(self, weights: tuple[float, ...],
             dtype: torch.dtype) -> tuple[list[Tensor], Tensor, Tensor]:
        """``(slots, buffer, vector)``: one 0-d slot per weight (views of one CPU ``dtype``
        buffer, to reduce into with ``out=``) and the weights as a float64 vector, made once per
        weights and dtype; ``dot(buffer.to(float64), vector)`` is the weighted sum of what the
        slots hold."""
        key = (weights, dtype)
        hit = self._sums
        if hit is None or hit[0] != key:
            buffer = torch.empty(len(weights), dtype=dtype)
            hit = self._sums = (key, list(buffer.unbind()), buffer,
                                torch.tensor(weights, dtype=torch.float64))
        return hit[1], hit[2], hit[3]

    def member_strengths(self, lam: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
        """:func:`_per_param` of ``lam``, made once per strength tensor, version and layout."""
        if torch.compiler.is_compiling() or lam.is_inference():
            return _per_param(lam, params)
        layout = tuple((id(p), p.shape, p.dtype, p.device) for p in params)
        hit = self._strengths
        if hit is None or hit[0] is not lam or hit[1] != lam._version or hit[2] != layout:
            hit = self._strengths = (lam, lam._version, layout, _per_param(lam, params))
        return hit[3]

    def memo(self, owner: object, params: Sequence[Tensor], compute):
        """``compute()``, cached per ``owner`` until the parameters, their shapes or their device
        change."""
        key = (tuple(map(id, params)), tuple(p.shape for p in params),
               params[0].device if params else None)
        hit = self._memo.get(owner)
        if hit is None or hit[0] != key:
            hit = self._memo[owner] = (key, compute())
        return hit[1]


def _buffers(params: Sequence[Tensor], scratch: Scratch | None) -> list[Tensor]:
    return scratch.like(params) if scratch is not None else [torch.empty_like(p) for p in params]


def _pieces(tensors: Sequence[Tensor], scratch: Scratch | None) -> list[Tensor]:
    return scratch.pieces(tensors) if scratch is not None else flat_pieces(tensors)


def _per_param(lam: Strength, params: Sequence[Tensor]) -> list[Tensor]:
    """A ``[K]`` strength as one ``[K, 1, ..., 1]`` view per (stacked) parameter."""
    out = []
    for p in params:
        check_members(lam, p, "stacked strength")
        out.append(as_tensor_like(lam, p))
    return out


def _member_strengths(lam: Tensor, params: Sequence[Tensor],
                      scratch: Scratch | None) -> list[Tensor]:
    """:func:`_per_param`, cached in ``scratch`` when there is one."""
    return scratch.member_strengths(lam, params) if scratch is not None else _per_param(lam, params)


_LEAN_DTYPES = (torch.float32, torch.float64)


def _stacked_value(lam: Tensor, params: Sequence[Tensor], p: int) -> Tensor:
    """``Σ_k lam_k · Σ_params Σ_i |w[k]_i|^p`` (float64) for parameters stacked as ``[K, ...]``:
    the members' sums of every parameter stacked as one ``[P, K]`` tensor, then one dot with the
    strengths in float64 (a fixed number of ops after the per-parameter reductions)."""
    if not params:
        return float64_zero()
    per_member = torch.stack([member_sum_of_powers(t, p) for t in params]).sum(dim=0)
    return torch.dot(per_member, lam.to(dtype=torch.float64, device=per_member.device))


def _multi_tensor(params: Sequence[Tensor]) -> bool:
    """Whether the pure-PyTorch path takes its multi-tensor form (a constant number of kernel
    launches: ``_foreach_*`` ops and one ``_foreach_norm``) rather than its per-tensor one (a
    ``sign``/``dot`` per tensor). On CPU a launch is a function call and per-tensor ``dot`` and
    ``sign(out=)`` measured fastest (``benchmarks/bench_penalty.py``); on an accelerator each
    launch costs microseconds, so the number of launches is what counts."""
    return not params[0].is_cpu


def _taus(lam: Strength, steps: Steps, params: Sequence[Tensor]) -> tuple[list, bool]:
    """Thresholds ``t_i · lam`` per parameter, and whether they are all plain floats."""
    lams = _per_param(lam, params) if isinstance(lam, Tensor) else [lam] * len(params)
    taus = [s * lam_i for s, lam_i in zip(steps, lams)]
    return taus, all(not isinstance(t, Tensor) for t in taus)


def _add_sign_(params: Sequence[Tensor], grads: Sequence[Tensor], lam: float | list[Tensor],
               signs: list[Tensor]) -> None:
    """``grads += lam · sign(params)`` through the buffers ``signs`` (``lam`` a float, or one
    ``[K, 1, ..., 1]`` strength per parameter).

    On CPU, ``sign(p, out=buffer)`` per tensor reads each weight once; there is no single-pass
    foreach form (``_foreach_copy_`` + ``_foreach_sign_`` makes two passes, ``_foreach_sign.out``
    allocates and copies), and the per-tensor kernels measured faster in
    ``benchmarks/bench_penalty.py``. Elsewhere the two foreach ops keep the launches O(1). The
    accumulation into ``.grad`` is one fused kernel.
    """
    if _multi_tensor(params):
        torch._foreach_copy_(signs, params)
        torch._foreach_sign_(signs)
    else:
        for p, buffer in zip(params, signs):
            torch.sign(p, out=buffer)
    if isinstance(lam, list):
        torch._foreach_addcmul_(grads, signs, lam)
    else:
        torch._foreach_add_(grads, signs, alpha=lam)


def _lean(params: Sequence[Tensor], *strengths: Strength) -> bool:
    """Whether a call takes the lean CPU forms (:func:`_elementwise_grad_`,
    :meth:`GroupLasso._flat_grad_`): CPU float32/float64 parameters, float strengths, not
    traced by ``torch.compile``, not a DTensor, a ``torch.func`` wrapper or another subclass.
    Without a scratch they run on a fresh one (the same results)."""
    if torch.compiler.is_compiling():  # first: nothing below needs tracing
        return False
    first = params[0]
    return (first.dtype in _LEAN_DTYPES and not _multi_tensor(params)
            and type(first) in (Tensor, torch.nn.Parameter)
            and not torch._C._functorch.is_functorch_wrapped_tensor(first)
            and not any(isinstance(s, Tensor) for s in strengths))


def _elementwise_grad_(params: Sequence[Tensor], grads: Sequence[Tensor], l1: float, l2: float,
                       value: object, scratch: Scratch) -> Tensor | None:
    r"""``grads += l1·sign(w)``, then ``grads += l2·w`` (the fused kernel's order, so the same
    gradients bit for bit); with ``value``,

    .. math::  l_1 \sum |w| + \frac{l_2}{2} \sum w^2

    from one BLAS ``dot`` per piece of at most ``CHUNK`` elements (``Σ|w| = Σ w·sign(w)`` from
    the signs the gradient just wrote; ``Σw² = dot(w, w)``) into the scratch's result slots, then
    one float64 ``dot`` of those results with the cached weights ``[l1, …, l2/2, …]``: the
    pieces' float32 results are added in float64, one op for any number of tensors and terms.
    CPU float32/float64 tensors with float strengths (:func:`_lean`); passes over the weights:
    L2 two (the update, one ``dot``), L1 three (sign, update, ``dot``), elastic net five.
    """
    signs = None
    if l1 != 0.0:
        signs = scratch.like(params)
        for p, buffer in zip(params, signs):
            torch.sign(p, out=buffer)
        torch._foreach_add_(grads, signs, alpha=l1)
    if l2 != 0.0:
        torch._foreach_add_(grads, params, alpha=l2)
    if not value:
        return None
    pieces = scratch.pieces(params)
    pairs: list[tuple[Tensor, Tensor]] = []
    weights: list[float] = []
    if signs is not None:
        pairs.extend(zip(pieces, scratch.pieces(signs)))
        weights.extend([l1] * len(pieces))
    if l2 != 0.0:
        pairs.extend(zip(pieces, pieces))
        weights.extend([0.5 * l2] * len(pieces))
    if not pairs:
        return float64_zero()
    slots, results, vector = scratch.sums(tuple(weights), params[0].dtype)
    for (x, y), out in zip(pairs, slots):
        torch.dot(x, y, out=out)
    return torch.dot(results.to(torch.float64), vector)


def _soft_threshold_(params: Sequence[Tensor], taus: list, all_float: bool,
                     scratch: Scratch | None) -> None:
    """``w ← w − clamp(w, −τ, τ)`` = ``sign(w)·max(|w| − τ, 0)``; ``w − w`` is an exact zero.

    On CPU, per tensor into the buffers: a float τ is one ``clamp`` and one subtraction (two
    passes); a tensor τ (an element-wise step) is ``w − τ`` into the buffer, ``w + τ`` in place
    and their median with 0, ``clamp(0, w − τ, w + τ)`` (three passes, nothing allocated),
    equal element for element to ``w − clamp(w, −τ, τ)``: where |w| > τ, ``w ∓ τ`` rounds as the
    subtraction does, elsewhere the result is an exact 0. Elsewhere the foreach ops (a constant
    number of launches)."""
    clipped = _buffers(params, scratch)
    if not _multi_tensor(params):
        zero = None
        for p, t, buffer in zip(params, taus, clipped):
            if isinstance(t, Tensor):
                if zero is None:
                    zero = torch.zeros((), dtype=p.dtype, device=p.device)
                torch.sub(p, t, out=buffer)
                p.add_(t)
                torch.clamp(zero, buffer, p, out=p)
            else:
                torch.clamp(p, -t, t, out=buffer)
                p.sub_(buffer)
        return
    torch._foreach_copy_(clipped, params)
    if all_float:
        torch._foreach_clamp_min_(clipped, [-t for t in taus])
        torch._foreach_clamp_max_(clipped, taus)
    else:
        taus = [t if isinstance(t, Tensor) else torch.tensor(t, dtype=p.dtype, device=p.device)
                for t, p in zip(taus, params)]
        torch._foreach_maximum_(clipped, torch._foreach_neg(taus))
        torch._foreach_minimum_(clipped, taus)
    torch._foreach_sub_(params, clipped)


def _shrink_(params: Sequence[Tensor], taus: list, all_float: bool) -> None:
    """``w ← w / (1 + τ)``."""
    if all_float:
        torch._foreach_div_(params, [1.0 + t for t in taus])
    else:
        for p, t in zip(params, taus):
            p.div_(1.0 + t)


_KERNEL_DTYPES = (torch.float32, torch.float64)


def _kernel(params: Sequence[Tensor], *strengths: Strength):
    """The fused kernel's ops when they can take this call, else ``None`` (the pure-PyTorch path).

    The single dispatch point between the two paths, which give the same gradients bit for bit
    (``tests/test_fused.py``; ``tests/test_fused_dispatch.py`` runs the penalties both ways). The
    kernel takes plain CPU float32/float64 tensors with float strengths; stacked ``[K]``
    strengths, half types, other devices, DTensors, ``torch.func`` transforms and
    ``torch.compile`` tracing keep the pure-PyTorch path. Only the first tensor is inspected (a
    rule's tensors share device and kind); the kernel stages any odd one through a float copy.
    """
    if torch.compiler.is_compiling():  # first: nothing below needs tracing
        return None
    if not params:
        return None
    for strength in strengths:
        if isinstance(strength, Tensor):
            return None
    first = params[0]
    if (first.dtype not in _KERNEL_DTYPES or not first.is_cpu
            or type(first) not in (Tensor, torch.nn.Parameter)
            or torch._C._functorch.is_functorch_wrapped_tensor(first)):
        return None
    return _fused.load_kernel()


def _kernel_grad(op, *args, value) -> Tensor | None:
    """``op(*args, value)`` (a kernel gradient op), returning its value only when asked."""
    total = op(*args, bool(value))  # callers may pass any truthy object as ``value``
    return total if value else None


# --------------------------------------------------------------------------------------------
# Penalty objects.
# --------------------------------------------------------------------------------------------


class Penalty:
    """Base class of all penalties; see the module docstring for the method contracts.

    Subclasses list their strength attributes in ``_strength_names``; each is validated on
    assignment (finite, ≥ 0, a number or a ``[K]`` tensor).
    """

    _strength_names: ClassVar[tuple[str, ...]] = ()
    has_prox: ClassVar[bool] = False

    def __setattr__(self, name: str, value: object) -> None:
        if name in self._strength_names:
            value = validate_strength(value, name)
        super().__setattr__(name, value)

    # -- composition ---------------------------------------------------------------------------
    def __add__(self, other: object) -> Penalty:
        if not isinstance(other, Penalty):
            return NotImplemented
        return _add(self, other)

    def __radd__(self, other: object) -> Penalty:
        # ``sum([L1(a), L2(b)])`` starts from 0.
        if isinstance(other, (int, float)) and other == 0:
            return self
        return NotImplemented

    @property
    def terms(self) -> tuple[Penalty, ...]:
        """The atomic penalties this penalty is the sum of (itself, for an atomic penalty)."""
        return (self,)

    # -- strengths -----------------------------------------------------------------------------
    def strengths(self) -> dict[str, Strength]:
        """Current strengths by name (floats, or ``[K]`` tensors)."""
        return {name: getattr(self, name) for name in self._strength_names}

    def load_strengths(self, strengths: dict[str, Strength]) -> None:
        """Set strengths from :meth:`strengths`' output (validated)."""
        expected = list(self.strengths())
        unknown = set(strengths) - set(expected)
        if unknown:
            raise ValueError(f"Unknown strength(s) {sorted(unknown)} for {self!r}; "
                             f"expected {expected}")
        for name, value in strengths.items():
            if isinstance(value, Tensor):
                value = value.clone()
            setattr(self, name, value)

    # -- applicability ---------------------------------------------------------------------------
    def check(self, param: Tensor) -> None:
        """Raise ``ValueError`` if this penalty cannot act on ``param`` (shape, member dim)."""
        for name in self._strength_names:
            check_members(getattr(self, name), param, f"{type(self).__name__}.{name}")

    # -- math ----------------------------------------------------------------------------------
    def value(self, params: Sequence[Tensor]) -> Tensor:
        raise NotImplementedError

    def add_grad_(self, params: Sequence[Tensor], grads: Sequence[Tensor], *,
                  value: bool = False, scratch: Scratch | None = None) -> Tensor | None:
        raise NotImplementedError

    def prox_(self, params: Sequence[Tensor], steps: Steps, *,
              scratch: Scratch | None = None) -> None:
        raise TypeError(f"{self!r} has no proximal step; apply it as a loss term (reg()) "
                        f"or a gradient (reg.add_grad_())")

    def __repr__(self) -> str:
        args = ", ".join(_format_strength(getattr(self, n)) for n in self._strength_names)
        return f"{type(self).__name__}({args}{self._extra_repr()})"

    def _extra_repr(self) -> str:
        return ""


def _format_strength(value: Strength) -> str:
    if isinstance(value, Tensor):
        return f"tensor[{value.shape[0]}]({value.min().item():g}..{value.max().item():g})"
    return f"{value:g}"


def _stacked(lam: Strength) -> bool:
    return isinstance(lam, Tensor)


class L2(Penalty):
    r"""Squared-L2 penalty (ridge, Tikhonov), half-scaled as in torch's ``weight_decay``.

    .. math::  R(w) = \frac{λ}{2} \sum_i w_i^2, \qquad ∇R = λw, \qquad
               \mathrm{prox}_{tR}(w) = \frac{w}{1 + tλ}

    ``L2(lam)`` as a gradient is exactly ``torch.optim.SGD/Adam(weight_decay=lam)`` (the L2
    penalty, *not* AdamW's decoupled decay) and Paddle's ``L2Decay(lam)``; Keras ``L2(l)``
    (``l·Σw²``, no ½) is ``L2(2·l)``.

    Args:
        lam: strength λ ≥ 0, or a ``[K]`` tensor for parameters stacked as ``[K, ...]``.

    Example:
        >>> w = torch.tensor([3.0, -4.0])
        >>> L2(0.1).value([w])  # 0.1/2 · (9 + 16)
        tensor(1.2500, dtype=torch.float64)
    """

    _strength_names = ("lam",)
    has_prox = True

    def __init__(self, lam: Strength) -> None:
        self.lam = lam

    def value(self, params: Sequence[Tensor]) -> Tensor:
        if _stacked(self.lam):
            return sum(((0.5 * lam.reshape(-1) * member_sum_of_powers(p, 2)).sum()
                        for p, lam in zip(params, _per_param(self.lam, params))), float64_zero())
        return 0.5 * self.lam * sum_of_squares(params)

    def add_grad_(self, params, grads, *, value=False, scratch=None):
        if not params:
            return float64_zero() if value else None
        ops = _kernel(params, self.lam)
        if ops is not None:  # gradient and value in one pass
            return _kernel_grad(ops.elementwise_grad, params, grads, 0.0, self.lam, value=value)
        if _lean(params, self.lam):
            return _elementwise_grad_(params, grads, 0.0, self.lam, value, scratch or Scratch())
        if _stacked(self.lam):
            lams = _member_strengths(self.lam, params, scratch)
            torch._foreach_addcmul_(grads, params, lams)
            if not value:
                return None
            return 0.5 * _stacked_value(self.lam, params, 2)
        if not is_zero(self.lam):  # a zero constant adds nothing: skip the pass
            torch._foreach_add_(grads, params, alpha=self.lam)
        if not value:
            return None
        if params[0].dtype not in _LEAN_DTYPES:
            return self.value(params)
        pieces = _pieces(params, scratch)
        if _multi_tensor(params):
            return 0.5 * self.lam * foreach_sum_of_powers(pieces, 2)
        return 0.5 * self.lam * sum_of_dots(pieces, pieces)  # = value(params), bit for bit

    def prox_(self, params, steps, *, scratch=None):
        if _elementwise_prox_(params, steps, 0.0, self.lam):
            return
        _shrink_(params, *_taus(self.lam, steps, params))


class L1(Penalty):
    r"""L1 penalty (lasso).

    .. math::  R(w) = λ \sum_i |w_i|, \qquad ∇R = λ\,\mathrm{sign}(w) \;(0 \text{ at } w=0),
               \qquad \mathrm{prox}_{tR}(w) = \mathrm{sign}(w)\max(|w| − tλ, 0)

    A (sub)gradient never makes a weight exactly zero; the proximal step does. Equals Keras
    ``L1(lam)`` and Paddle ``L1Decay(lam)``; scikit-learn ``Lasso(alpha)`` with an ``MSELoss`` is
    ``L1(2·alpha)``.

    Args:
        lam: strength λ ≥ 0, or a ``[K]`` tensor for parameters stacked as ``[K, ...]``.

    Example:
        >>> w = torch.tensor([0.5, -2.0, 0.05])
        >>> L1(1.0).prox_([w], [0.1]); w
        tensor([ 0.4000, -1.9000,  0.0000])
    """

    _strength_names = ("lam",)
    has_prox = True

    def __init__(self, lam: Strength) -> None:
        self.lam = lam

    def value(self, params: Sequence[Tensor]) -> Tensor:
        if _stacked(self.lam):
            return sum(((lam.reshape(-1) * member_sum_of_powers(p, 1)).sum()
                        for p, lam in zip(params, _per_param(self.lam, params))), float64_zero())
        return self.lam * sum_of_abs(params)

    def add_grad_(self, params, grads, *, value=False, scratch=None):
        if not params:
            return float64_zero() if value else None
        ops = _kernel(params, self.lam)
        if ops is not None:  # gradient and value in one pass
            return _kernel_grad(ops.elementwise_grad, params, grads, self.lam, 0.0, value=value)
        if not is_zero(self.lam) and _lean(params, self.lam):
            return _elementwise_grad_(params, grads, self.lam, 0.0, value, scratch or Scratch())
        if _stacked(self.lam):
            lams = _member_strengths(self.lam, params, scratch)
            _add_sign_(params, grads, lams, _buffers(params, scratch))
            if not value:
                return None
            return _stacked_value(self.lam, params, 1)
        lean = params[0].dtype in _LEAN_DTYPES
        if is_zero(self.lam) or not lean:
            total = self.value(params) if value else None
            if not is_zero(self.lam):
                _add_sign_(params, grads, self.lam, _buffers(params, scratch))
            return total
        signs = _buffers(params, scratch)
        _add_sign_(params, grads, self.lam, signs)
        if not value:
            return None
        # Σ|w| = Σ w·sign(w) from the signs the gradient just wrote: no pass to write |w|.
        if _multi_tensor(params):
            return self.lam * foreach_sum_of_powers(_pieces(params, scratch), 1)
        return self.lam * sum_of_dots(_pieces(params, scratch), _pieces(signs, scratch))

    def prox_(self, params, steps, *, scratch=None):
        if _elementwise_prox_(params, steps, self.lam, 0.0):
            return
        _soft_threshold_(params, *_taus(self.lam, steps, params), scratch)


class _GroupLayout(NamedTuple):
    """What a group lasso derives from parameter shapes, cached across steps, and the strength
    it last scaled the coefficients by (``scaled`` is ``[lam · c]`` for ``lam = scaled_by``)."""

    dims: list[tuple[int, ...]]
    coefficients: list[float]
    coefficient_vector: Tensor  # float64, on the parameters' device
    floors: list[float]
    scaled: list
    scaled_by: list  # [lam]: a one-element cell, so the tuple stays immutable

    def scaled_coefficients(self, lam: float) -> list[float]:
        """``[lam · c_i]`` (made once per value of ``lam``; the same floats as recomputed)."""
        if torch.compiler.is_compiling() or self.scaled_by[0] != lam:
            self.scaled[:] = [lam * c for c in self.coefficients]
            self.scaled_by[0] = lam
        return self.scaled


class GroupLasso(Penalty):
    r"""Group lasso (Yuan & Lin, 2006): whole groups of weights go to exactly zero together.

    .. math::  R(w) = λ \sum_g c_g ‖w_g‖_2, \qquad ∇_{w_g} R = λ c_g \frac{w_g}{‖w_g‖_2}
               \;(0 \text{ where } w_g = 0), \qquad
               \mathrm{prox}_{tR}(w)_g = w_g \max\Big(1 − \frac{tλc_g}{‖w_g‖_2}, 0\Big)

    Groups of a tensor ``w``: ``"rows"`` = slices ``w[i]`` along dim 0 (a Linear's output units, a
    conv's filters; each element of a 1-D tensor is its own group), ``"columns"`` = slices
    ``w[:, j]`` along dim 1 (input features/channels; a 1-D tensor raises), ``"tensor"`` = the whole
    tensor. ``c_g = √|g|`` (``scale="sqrt"``, the group size in elements) or 1 (``scale="none"``).
    With ``groups="tensor", scale="none"`` this is the popular blog ``Regularization`` class
    (λ · Σ ‖W‖₂, un-squared). The gradient divides by ``max(‖w_g‖, √tiny)`` of the dtype, which
    differs from the exact one only for groups with norm below ~1e-19 (float32).

    Under an element-wise step (e.g. Adam's ``lr/(√v̂+ε)``) the prox uses one scalar per group:
    the *mean* step over the group's elements.

    Args:
        lam: strength λ ≥ 0, or a ``[K]`` tensor for parameters stacked as ``[K, ...]``.
        groups: ``"rows"``, ``"columns"`` or ``"tensor"``.
        scale: ``"sqrt"`` or ``"none"``.

    Example:
        >>> w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
        >>> GroupLasso(1.0, scale="none").prox_([w], [1.0]); w  # row norms 5 and 0.5
        tensor([[2.4000, 3.2000],
                [0.0000, 0.0000]])
    """

    _strength_names = ("lam",)
    has_prox = True
    _GROUPS = ("rows", "columns", "tensor")
    _SCALES = ("sqrt", "none")

    def __init__(self, lam: Strength, groups: str = "rows", scale: str = "sqrt") -> None:
        if groups not in self._GROUPS:
            raise ValueError(f"Invalid groups value: {groups!r} (expected one of {self._GROUPS})")
        if scale not in self._SCALES:
            raise ValueError(f"Invalid scale value: {scale!r} (expected one of {self._SCALES})")
        self.lam = lam
        self.groups = groups
        self.scale = scale

    def _extra_repr(self) -> str:
        return f", groups={self.groups!r}, scale={self.scale!r}"

    def check(self, param: Tensor) -> None:
        super().check(param)
        self._reduce_dims(param)

    def _reduce_dims(self, param: Tensor) -> tuple[int, ...]:
        """Dims summed over within one group (member dim excluded)."""
        m = int(_stacked(self.lam))
        ndim = param.ndim - m
        if self.groups == "columns" and ndim < 2:
            raise ValueError(f"GroupLasso(groups='columns') needs tensors with >= 2 dims, "
                             f"got shape {tuple(param.shape)}")
        if self.groups == "rows":
            return tuple(range(m + 1, m + ndim))
        if self.groups == "columns":
            return (m, *range(m + 2, m + ndim))
        return tuple(range(m, m + ndim))

    def _coefficient(self, param: Tensor, dims: tuple[int, ...]) -> float:
        if self.scale == "none":
            return 1.0
        return math.sqrt(_group_size(param.shape, dims))

    def _group_norms(self, param: Tensor, dims: tuple[int, ...]) -> Tensor:
        """‖w_g‖₂ with keepdim (broadcastable to ``param``); ``|w|`` when groups are elements.

        Accurate on large groups: a whole large tensor is reduced in chunks added in float64, a
        group of more than ``CHUNK`` elements otherwise in float64; half types in float32.
        """
        if not dims:
            return param.abs()
        if len(dims) == param.ndim and param.numel() > CHUNK:
            return _safe_sqrt(sum_of_squares([param])).reshape((1,) * param.ndim)
        size = _group_size(param.shape, dims)
        dtype = accumulation_dtype(param.dtype)
        if size > CHUNK and param.dtype == torch.float32:
            dtype = torch.float64
        return torch.linalg.vector_norm(param, 2, dim=dims, keepdim=True, dtype=dtype)

    def value(self, params: Sequence[Tensor]) -> Tensor:
        total = float64_zero()
        for p in params:
            dims = self._reduce_dims(p)
            norms = self._group_norms(p, dims).to(torch.float64)
            total = total + self._weighted_sum(norms, p, dims)
        return total

    def _weighted_sum(self, norms: Tensor, p: Tensor, dims: tuple[int, ...]) -> Tensor:
        c = self._coefficient(p, dims)
        if _stacked(self.lam):
            per_member = norms.flatten(1).sum(dim=1)
            return (self.lam.to(norms) * c * per_member).sum()
        return self.lam * c * norms.sum()

    def _layout(self, params: Sequence[Tensor]) -> _GroupLayout:
        dims = [self._reduce_dims(p) for p in params]
        coefficients = [self._coefficient(p, d) for p, d in zip(params, dims)]
        device = params[0].device if params else None
        return _GroupLayout(dims, coefficients,
                            torch.tensor(coefficients, dtype=torch.float64, device=device),
                            [_norm_floor(p.dtype) for p in params], [], [None])

    def _cached_layout(self, params: Sequence[Tensor], scratch: Scratch | None) -> _GroupLayout:
        if scratch is None:
            return self._layout(params)
        return scratch.memo((self, self.groups, self.scale, _stacked(self.lam)), params,
                            lambda: self._layout(params))

    def add_grad_(self, params, grads, *, value=False, scratch=None):
        if not params or (is_zero(self.lam) and not value):
            return float64_zero() if value else None
        layout = self._cached_layout(params, scratch)
        ops = _kernel(params, self.lam)
        if ops is not None:  # norms, gradient and value in one call
            return _kernel_grad(ops.group_grad, params, grads, self.lam,
                                _GROUP_CODES[self.groups], layout.coefficients, value=value)
        flat = None
        if _lean(params, self.lam):
            flat = (_flat_norms(params, layout) if scratch is None else
                    scratch.memo((self, "flat", params[0].dtype, self.groups, self.scale),
                                 params, lambda: _flat_norms(params, layout)))
        if flat is not None:
            return self._flat_grad_(params, grads, value, layout, flat)
        norms = [self._group_norms(p, d) for p, d in zip(params, layout.dims)]
        total = None
        if value:  # from the norms the gradient needs anyway
            if _stacked(self.lam):
                # Σ_k lam_k Σ_p c_p Σ_g ‖w[k]_g‖: a [P, K] matrix of the members' norm sums,
                # weighted by the cached coefficients, then one dot with the strengths.
                per_member = torch.stack([n.flatten(1).sum(dim=1, dtype=torch.float64)
                                          for n in norms])
                weighted = layout.coefficient_vector.to(per_member.device) @ per_member
                total = torch.dot(weighted, self.lam.to(dtype=torch.float64,
                                                        device=weighted.device))
            else:
                per_tensor = torch.stack(torch._foreach_norm(norms, ord=1)).to(torch.float64)
                vector = layout.coefficient_vector
                if vector.device != per_tensor.device:  # norms of a DTensor's local shards
                    vector = vector.to(per_tensor.device)
                total = self.lam * torch.dot(per_tensor, vector)
        if is_zero(self.lam):
            return total
        # w_g / max(‖w_g‖, √tiny): exactly 0 for a zero group, finite for a tiny one.
        torch._foreach_clamp_min_(norms, layout.floors)
        if _stacked(self.lam):
            torch._foreach_reciprocal_(norms)
            torch._foreach_mul_(norms, _member_strengths(self.lam, params, scratch))
            torch._foreach_mul_(norms, layout.coefficients)
            torch._foreach_addcmul_(grads, params, norms)
        else:
            torch._foreach_addcdiv_(grads, params, norms, layout.scaled_coefficients(self.lam))
        return total

    def _flat_grad_(self, params, grads, value, layout: _GroupLayout,
                    flat: tuple[Tensor, list[Tensor], Tensor]) -> Tensor | None:
        """The lean CPU path: every group norm written by one ``vector_norm(out=)`` per tensor
        into one cached buffer (no allocation per step); the value is one float64 ``dot`` of
        those norms with the cached per-group ``c_g``, times λ; the floor is one ``clamp_min_``
        over the buffer; the gradient one ``_foreach_addcdiv_`` — the same gradients as the
        per-tensor norms, one pass over the weights for the norms and one for the update."""
        buffer, views, coefficients = flat
        for p, dims, out in zip(params, layout.dims, views):
            torch.linalg.vector_norm(p, 2, dim=dims, keepdim=True, out=out)
        total = self.lam * torch.dot(buffer.to(torch.float64), coefficients) if value else None
        if is_zero(self.lam):
            return total
        buffer.clamp_min_(layout.floors[0])
        torch._foreach_addcdiv_(grads, params, views, layout.scaled_coefficients(self.lam))
        return total

    def prox_(self, params, steps, *, scratch=None):
        if not params:
            return
        layout = self._cached_layout(params, scratch)
        lams = (_member_strengths(self.lam, params, scratch) if _stacked(self.lam)
                else [self.lam] * len(params))
        for p, step, lam, dims, c, floor in zip(params, steps, lams, layout.dims,
                                                layout.coefficients, layout.floors):
            tau = step * lam
            if isinstance(tau, Tensor) and dims:
                tau = tau.expand_as(p).mean(dim=dims, keepdim=True)  # one step per group
            norms = self._group_norms(p, dims).clamp_min_(floor)
            factor = (1.0 - tau * c / norms).clamp_min_(0.0)
            p.mul_(factor)


class Orthogonal(Penalty):
    r"""Keras ``OrthogonalRegularizer``: pushes the rows (or columns) of a matrix to be orthogonal.

    .. math::  R(W) = \frac{λ}{2} \cdot \frac{\sum_{i≠j} |\hat w_i · \hat w_j|}{n(n−1)/2},
               \qquad \hat w_i = \frac{w_i}{\max(‖w_i‖_2, 10^{-7})}

    over the ``n`` rows (``mode="rows"``) or columns (``mode="columns"``) of a tensor viewed as a
    matrix (a tensor with more than 2 dims is viewed as ``(dim0, rest)`` for rows and
    ``(dim1, rest)`` for columns); 0 when ``n < 2``. Keras stores a Dense kernel as ``(in, out)``,
    torch a Linear weight as ``(out, in)``: Keras ``mode="rows"`` on a Dense layer is
    ``mode="columns"`` on the equivalent ``nn.Linear``. There is no proximal step; the gradient is
    taken by autograd.

    Args:
        lam: strength λ ≥ 0 (Keras' ``factor``), or a ``[K]`` tensor for stacked parameters.
        mode: ``"rows"`` or ``"columns"``.

    Example:
        >>> Orthogonal(1.0).value([torch.tensor([[1.0, 0.0], [1.0, 1.0]])])  # ½·2·|cos 45°|/1
        tensor(0.7071, dtype=torch.float64)
    """

    _strength_names = ("lam",)
    _MODES = ("rows", "columns")

    def __init__(self, lam: Strength, mode: str = "rows") -> None:
        if mode not in self._MODES:
            raise ValueError(f"Invalid mode value: {mode!r} (expected one of {self._MODES})")
        self.lam = lam
        self.mode = mode

    def _extra_repr(self) -> str:
        return f", mode={self.mode!r}"

    def check(self, param: Tensor) -> None:
        super().check(param)
        if param.ndim - _stacked(self.lam) < 2:
            raise ValueError(f"Orthogonal needs a matrix (>= 2 dims), got shape "
                             f"{tuple(param.shape)}")

    def _member_values(self, p: Tensor) -> Tensor:
        """Unweighted penalty of each member, shape ``[M]`` (M = 1 when not stacked)."""
        self.check(p)
        w = p if _stacked(self.lam) else p.unsqueeze(0)
        if self.mode == "columns":
            w = w.movedim(2, 1)
        w = w.reshape(w.shape[0], w.shape[1], math.prod(w.shape[2:]))
        n = w.shape[1]
        if n < 2:
            return torch.zeros(w.shape[0], dtype=torch.float64, device=p.device)
        acc = accumulation_dtype(p.dtype) or p.dtype
        w = w.to(acc)
        # Under autocast the Gram matrix product would run in the autocast dtype (bf16 on CPU:
        # 2e-3 off); the penalty is computed in float32 or the parameter's wider dtype.
        with torch.autocast(p.device.type, enabled=False):
            unit = w / torch.linalg.vector_norm(w, dim=2, keepdim=True).clamp_min(_KERAS_EPSILON)
            gram = unit @ unit.transpose(1, 2)
        off_diagonal = gram.abs().sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).abs().sum(1)
        return off_diagonal.to(torch.float64) / (n * (n - 1))

    def value(self, params: Sequence[Tensor]) -> Tensor:
        total = float64_zero()
        for p in params:
            per_member = self._member_values(p)
            lam = self.lam.to(per_member) if _stacked(self.lam) else self.lam
            total = total + (lam * per_member).sum()
        return total

    def add_grad_(self, params, grads, *, value=False, scratch=None):
        if is_zero(self.lam) and not value:
            return None
        if not params:
            return float64_zero() if value else None
        # Autocast off for the backward too: under autocast, autograd would compute the Gram
        # matrix's gradient products in the autocast dtype. torch.func (not autograd.grad) so
        # that torch.compile traces it without a graph break.
        with torch.autocast(params[0].device.type, enabled=False):
            gradients, total = torch.func.grad_and_value(self.value)(list(params))
        torch._foreach_add_(grads, gradients)
        return total.detach() if value else None


class Sum(Penalty):
    """A sum of penalties: value and gradient add up; the proximal step exists when the sum is of
    L2, L1 and group-lasso terms of one grouping (or is otherwise unavailable: ``has_prox``).

    The prox of ``a·‖w‖₁ + GroupLasso(b) + L2(c)`` is exact for non-overlapping groups:
    soft-threshold by ``t·a``, then group-shrink by ``t·b``, then divide by ``1 + t·c`` (sparse
    group lasso, Friedman, Hastie & Tibshirani 2010; the L2 factor factors out of any positively
    homogeneous penalty).

    The terms are the very penalty objects that were added: changing a term's strength changes the
    sum. Build sums with ``+``.
    """

    def __init__(self, *terms: Penalty) -> None:
        flat: list[Penalty] = []
        for term in terms:
            if not isinstance(term, Penalty):
                raise TypeError(f"Invalid penalty: {term!r} (expected a regtorch penalty)")
            flat.extend(term.terms)
        object.__setattr__(self, "_terms", tuple(flat))

    @property
    def terms(self) -> tuple[Penalty, ...]:
        return self._terms

    @property
    def has_prox(self) -> bool:  # type: ignore[override]
        if not all(isinstance(t, (L1, L2, GroupLasso)) for t in self.terms):
            return False
        return len({(t.groups, t.scale) for t in self.terms if isinstance(t, GroupLasso)}) <= 1

    def strengths(self) -> dict[str, Strength]:
        return {f"{i}.{name}": value for i, term in enumerate(self.terms)
                for name, value in term.strengths().items()}

    def load_strengths(self, strengths: dict[str, Strength]) -> None:
        per_term: list[dict[str, Strength]] = [{} for _ in self.terms]
        for key, value in strengths.items():
            index, _, name = key.partition(".")
            if not index.isdigit() or int(index) >= len(self.terms):
                raise ValueError(f"Unknown strength {key!r} for {self!r}")
            per_term[int(index)][name] = value
        for term, values in zip(self.terms, per_term):
            term.load_strengths(values)

    def check(self, param: Tensor) -> None:
        for term in self.terms:
            term.check(param)

    def value(self, params):
        return sum((t.value(params) for t in self.terms), float64_zero())

    def add_grad_(self, params, grads, *, value=False, scratch=None):
        pair = self._elastic_net_strengths()
        ops = _kernel(params, *pair) if pair is not None else None
        if ops is not None:  # L1 then L2, as the terms would, in one pass
            return _kernel_grad(ops.elementwise_grad, params, grads, *pair, value=value)
        if pair is not None and params and _lean(params, *pair):
            return _elementwise_grad_(params, grads, *pair, value, scratch or Scratch())
        values = [t.add_grad_(params, grads, value=value, scratch=scratch) for t in self.terms]
        if not value:
            return None
        total = values[0] if values else float64_zero()  # == 0 + values[0]: no extra op
        for v in values[1:]:
            total = total + v
        return total

    def _elastic_net_strengths(self) -> tuple[Strength, Strength] | None:
        """(l1, l2) when this sum is exactly ``L1 + L2`` in that order, else ``None``."""
        terms = self.terms
        if len(terms) == 2 and type(terms[0]) is L1 and type(terms[1]) is L2:
            return terms[0].lam, terms[1].lam
        return None

    def prox_(self, params, steps, *, scratch=None):
        if not self.has_prox:
            raise TypeError(f"{self!r} has no proximal step: only sums of L1, L2 and one kind of "
                            f"GroupLasso have one")
        pair = self._elastic_net_strengths()
        if pair is not None and _elementwise_prox_(params, steps, *pair):
            return
        l1 = _sum_strengths(t.lam for t in self.terms if isinstance(t, L1))
        l2 = _sum_strengths(t.lam for t in self.terms if isinstance(t, L2))
        groups = [t for t in self.terms if isinstance(t, GroupLasso)]
        if not is_zero(l1):
            _soft_threshold_(params, *_taus(l1, steps, params), scratch)
        if groups:
            merged = GroupLasso(_sum_strengths(g.lam for g in groups), groups[0].groups,
                                groups[0].scale)
            merged.prox_(params, steps)
        if not is_zero(l2):
            _shrink_(params, *_taus(l2, steps, params))

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)


def _flat_norms(params: Sequence[Tensor],
                layout: _GroupLayout) -> tuple[Tensor, list[Tensor], Tensor] | None:
    """For :meth:`GroupLasso._flat_grad_`: one buffer for every group norm of ``params`` (same
    dtype), its views in each tensor's keepdim norm shape, and the float64 vector of each group's
    ``c_g``; ``None`` when a tensor's norms need another form (``_group_norms``: groups of single
    elements, a whole tensor of more than ``CHUNK`` elements, float32 groups of more than
    ``CHUNK`` elements summed in float64)."""
    counts, shapes = [], []
    for p, dims in zip(params, layout.dims):
        size = _group_size(p.shape, dims)
        if (not dims or p.numel() == 0 or p.dtype != params[0].dtype or size > CHUNK
                or (len(dims) == p.ndim and p.numel() > CHUNK)):
            return None
        shapes.append(tuple(1 if d in dims else n for d, n in enumerate(p.shape)))
        counts.append(p.numel() // size)
    buffer = torch.empty(sum(counts), dtype=params[0].dtype)
    views = [piece.view(shape) for piece, shape in zip(buffer.split(counts), shapes)]
    coefficients = torch.tensor([c for c, n in zip(layout.coefficients, counts) for _ in range(n)],
                                dtype=torch.float64)
    return buffer, views, coefficients


def _group_size(shape: Sequence[int], dims: Sequence[int]) -> int:
    """Number of elements in one group: the product of ``shape`` over ``dims`` (a plain loop:
    ``math.prod`` over a generator is a graph break under ``torch.compile``)."""
    size = 1
    for d in dims:
        size *= shape[d]
    return size


_GROUP_CODES = {"rows": 0, "columns": 1, "tensor": 2}


def _elementwise_prox_(params, steps, l1: Strength, l2: Strength) -> bool:
    """The proximal step of ``l1·‖w‖₁ + l2/2·‖w‖²`` by the fused kernel (one pass) when it can
    take the call (float steps: SGD's), returning whether it did."""
    ops = _kernel(params, l1, l2)
    if ops is None or not all(isinstance(t, float) for t in steps):
        return False
    ops.elementwise_prox(params, steps, l1, l2)
    return True


_NORM_FLOORS = {dtype: torch.finfo(dtype).tiny ** 0.5
                for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _norm_floor(dtype: torch.dtype) -> float:
    """Smallest norm a group-lasso gradient divides by: √tiny (1e-19 in float32), so that
    ``lam · c / norm`` cannot overflow to inf and turn a zero group's ``0 · inf`` into NaN.
    (A table, not ``functools.cache``: torch.compile warns about traced caches.)"""
    floor = _NORM_FLOORS.get(dtype)
    return floor if floor is not None else torch.finfo(dtype).tiny ** 0.5


def _safe_sqrt(x: Tensor) -> Tensor:
    """√x with gradient 0 (not NaN) at x = 0, like the gradient of ``vector_norm`` at 0."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).sqrt(), 0.0)


def _sum_strengths(strengths) -> Strength:
    total: Strength = 0.0
    for s in strengths:
        total = total + s
    return total


class ElasticNet(Sum):
    r"""Elastic net (Zou & Hastie, 2005): ``L1(l1) + L2(l2)``.

    .. math::  R(w) = l_1 \sum_i |w_i| + \frac{l_2}{2} \sum_i w_i^2, \qquad
               \mathrm{prox}_{tR}(w) = \frac{\mathrm{sign}(w)\max(|w| − t l_1, 0)}{1 + t l_2}

    Keras ``L1L2(l1, l2)`` is ``ElasticNet(l1, 2·l2)``; scikit-learn ``ElasticNet(alpha,
    l1_ratio=ρ)`` with an ``MSELoss`` is ``ElasticNet(2·alpha·ρ, 2·alpha·(1−ρ))``.

    Args:
        l1: L1 strength ≥ 0 (float or ``[K]`` tensor).
        l2: L2 strength ≥ 0 (float or ``[K]`` tensor).

    Example:
        >>> L1(0.1) + L2(0.01)
        ElasticNet(l1=0.1, l2=0.01)
    """

    def __init__(self, l1: Strength, l2: Strength) -> None:
        super().__init__(L1(l1), L2(l2))

    @classmethod
    def _of(cls, l1: L1, l2: L2) -> ElasticNet:
        net = cls.__new__(cls)
        Sum.__init__(net, l1, l2)
        return net

    @property
    def l1(self) -> Strength:
        return self.terms[0].lam

    @l1.setter
    def l1(self, value: Strength) -> None:
        self.terms[0].lam = value

    @property
    def l2(self) -> Strength:
        return self.terms[1].lam

    @l2.setter
    def l2(self, value: Strength) -> None:
        self.terms[1].lam = value

    def strengths(self) -> dict[str, Strength]:
        return {"l1": self.l1, "l2": self.l2}

    def load_strengths(self, strengths: dict[str, Strength]) -> None:
        Penalty.load_strengths(self, strengths)  # by name, through the l1/l2 properties

    def __repr__(self) -> str:
        return f"ElasticNet(l1={_format_strength(self.l1)}, l2={_format_strength(self.l2)})"


def _add(a: Penalty, b: Penalty) -> Penalty:
    if type(a) is L1 and type(b) is L2:
        return ElasticNet._of(a, b)
    if type(a) is L2 and type(b) is L1:
        return ElasticNet._of(b, a)
    return Sum(a, b)
