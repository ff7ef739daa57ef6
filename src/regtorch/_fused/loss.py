r"""Loss mode: R(w) as one autograd node (private).

``loss + reg()`` through autograd records every op of the penalty's value (``pow``, ``sum``,
chunked dots, a float64 cast) and runs each one's backward: for L2 that is several passes over
every weight where one suffices. :func:`penalty_term` returns R(w) from one node instead, with the
same value and the same gradients:

- **with the fused kernel** (``loss.cpp``, built with ``kernel.cpp``): a C++ autograd node. Its
  forward reads every weight once for the value, returned in the requested dtype (no cast node).
  Its backward adds ``dL/dR · ∇R(w)`` to each leaf parameter's *summed* incoming gradient
  through a tensor pre-hook that autograd runs before the parameter's ``AccumulateGrad`` (and
  before ``torch.autograd.grad`` captures it): one pass reading w and the gradient, in place when
  autograd holds the only reference — no gradient buffer of the penalty's own, and no addition of
  one by autograd. ``loss.cpp``'s header says why that is sound under ``autograd.grad``,
  ``retain_graph``, accumulation and other backward passes through the same parameters;
  non-leaf tensors get an ordinary gradient from the node. ``reg()`` reaches it in one call,
  :func:`node_term_for`, into ``loss_term`` of the kernel's library imported as a Python module
  (no dispatcher): the trainable tensors are selected, checked and given their group
  coefficients there, so nothing is cached in Python that a frozen layer, ``model.double()``,
  a replaced ``p.data`` or a new strength could make stale. (:func:`penalty_term` takes the
  same call when every tensor it is handed needs a gradient, else the dispatcher's operator
  ``regtorch_fused::penalty_term``.)
- **without it** (``REGTORCH_FUSED=0``, no compiler, ``[K]`` strengths): a Python
  :class:`torch.autograd.Function` whose forward runs ``penalty.add_grad_(value=True)`` into
  fresh buffers and whose backward returns them scaled by the incoming gradient.

The plain autograd path (``penalty.value(params)``) is kept where neither can be used:

- under ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``...), which the lab trains
  through: a custom node without a ``vmap`` rule fails there;
- while ``torch.compile`` traces (dynamo sees the ordinary ops; no graph break);
- for penalties without a closed-form gradient (:class:`~regtorch.Orthogonal`);
- for half-precision parameters and under ``torch.autocast``;
- when no tensor needs a gradient (grad mode off, or every tensor frozen). With grad mode off
  ``reg()``'s call into ``loss_term`` still returns the value, from the node's forward pass
  without the node (the penalty logged under ``no_grad``: one read of the weights, not the
  pure-PyTorch value's chunked dots).

Double backward (``create_graph=True``) works on both nodes: their backward then builds the
gradient from differentiable ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from regtorch._fused import _build
from regtorch._fused._build import load_kernel

__all__ = ["NodeTerm", "loss_module", "node_term", "node_term_for", "penalty_term", "uses_function",
           "uses_kernel_node"]

_GROUP_CODES = {"rows": 0, "columns": 1, "tensor": 2}
_SCALE_CODES = {"sqrt": 0, "none": 1}
# loss_term's dtype argument: 0 = the loss dtype of the tensors it keeps (see its docstring).
_DTYPE_CODES = {None: 0, torch.float32: 1, torch.float64: 2}

# Half-precision parameters and autocast keep autograd: the penalty is then computed in float32
# by ``penalty.value`` (see regularizer.py), which the closed-form gradients do not do.
_DTYPES = (torch.float32, torch.float64)

_KINDS: dict[type, int] = {}  # penalty class -> 0 L1, 1 L2, 2 GroupLasso (filled on first use)


def _kinds() -> dict[type, int]:
    if not _KINDS:  # regtorch.penalties imports this package: bind its classes lazily
        from regtorch.penalties import L1, L2, GroupLasso

        _KINDS.update({L1: 0, L2: 1, GroupLasso: 2})
    return _KINDS


def _kind(term) -> int | None:
    kinds = _kinds()
    kind = kinds.get(type(term))
    if kind is None:  # a subclass of a closed-form penalty is one too
        for cls, code in kinds.items():
            if isinstance(term, cls):
                return code
    return kind


def _closed_form(penalty) -> bool:
    return all(_kind(term) is not None for term in penalty.terms)


def _transformed(params: Sequence[Tensor]) -> bool:
    """True inside ``torch.func`` transforms (or when handed their wrapped tensors)."""
    return (torch._C._are_functorch_transforms_active()
            or torch._C._functorch.is_functorch_wrapped_tensor(params[0]))


def uses_function(penalty, params: Sequence[Tensor]) -> bool:
    """Whether :func:`penalty_term` takes the custom-Function path for this call."""
    if torch.compiler.is_compiling():  # first: dynamo traces the plain path, nothing else here
        return False
    return (bool(params) and torch.is_grad_enabled() and _closed_form(penalty)
            and params[0].dtype in _DTYPES and not torch.is_autocast_enabled()
            and not _transformed(params) and any(p.requires_grad for p in params))


def _strength_args(penalty) -> tuple | None:
    """The dispatcher operator's strength arguments ``(l1, l2, group_lams, group_codes)``,
    or ``None`` when the node cannot take the penalty (a ``[K]`` strength, a term without a
    closed form)."""
    l1 = l2 = 0.0
    lams: list[float] = []
    codes: list[int] = []
    for term in penalty.terms:
        kind = _kind(term)
        lam = getattr(term, "lam", None)
        if kind is None or type(lam) is not float:  # validated strengths: a float or a tensor
            return None
        if kind == 0:
            l1 += lam
        elif kind == 1:
            l2 += lam
        else:
            lams.append(lam)
            codes.append(_GROUP_CODES[term.groups])
    return l1, l2, lams, codes


# Bound once: in a training step every attribute lookup and call here runs on cold caches.
_is_compiling = torch.compiler.is_compiling
_transforms_active = torch._C._are_functorch_transforms_active


def loss_module():
    """The kernel library's Python module (``loss_term``), or ``None`` without the kernel."""
    if load_kernel() is None:
        return None
    return _build.load_loss_module()


class NodeTerm:
    """``reg()``'s fast path for one rule: ``term(params, dtype=None)`` returns R(w) over the
    tensors of ``params`` that require a gradient from the C++ node, or ``None`` when the node
    cannot take the call (then the caller takes :func:`penalty_term`'s paths).

    ``None`` comes back without the kernel; while ``torch.compile`` traces or ``torch.func``
    transforms run (checked here); with CUDA autocast on (under grad mode); when no tensor
    requires a gradient or one that does is not a plain CPU float32/float64 tensor (checked in
    C++); for a ``[K]`` strength. Only the kinds of the penalty's terms are kept (a term's class
    never changes); strengths, groupings, the trainable set, dtypes and shapes are read at every
    call, so nothing can go stale. ``dtype``: the value's dtype; ``None`` for the loss dtype
    (float64 when a kept tensor is float64, else float32, as
    :meth:`regtorch.Regularizer.__call__` documents). A plain object (not a closure), so a
    Regularizer holding one still deep-copies and pickles.
    """

    __slots__ = ("kinds",)

    def __init__(self, kinds: tuple) -> None:
        self.kinds = kinds

    def __call__(self, params: Sequence[Tensor], dtype: torch.dtype | None = None):
        if _is_compiling() or _transforms_active():  # first: nothing below is traced
            return None
        module = loss_module()
        if module is None:
            return None
        l1 = l2 = 0.0
        groups: tuple = ()
        for t, kind in self.kinds:
            lam = t.lam
            if type(lam) is not float:  # a [K] strength
                return None
            if kind == 1:
                l2 += lam
            elif kind == 0:
                l1 += lam
            else:
                groups += ((lam, _GROUP_CODES[t.groups], _SCALE_CODES[t.scale]),)
        return module.loss_term(params, l1, l2, groups, _DTYPE_CODES[dtype])


def node_term_for(penalty) -> NodeTerm | None:
    """The :class:`NodeTerm` of ``penalty``, or ``None`` when a term has no closed form."""
    kinds = tuple((term, _kind(term)) for term in penalty.terms)
    if any(kind is None for _, kind in kinds):
        return None
    return NodeTerm(kinds)


def node_term(penalty, params: Sequence[Tensor], dtype: torch.dtype | None = None):
    """``node_term_for(penalty)(params, dtype)``: R(w) from the C++ node, or ``None``."""
    term = node_term_for(penalty)
    return None if term is None else term(params, dtype)


def _kernel_terms(penalty, params: Sequence[Tensor], scratch):
    """The dispatcher operator's arguments ``(l1, l2, group_lams, group_codes, coefficients)``
    for this call, or ``None`` when the node cannot take it (a ``[K]`` strength, a tensor that
    is not a plain CPU float32/float64 one)."""
    for p in params:
        if (p.dtype not in _DTYPES or not p.is_cpu
                or type(p) not in (Tensor, torch.nn.Parameter)):
            return None
    args = _strength_args(penalty)
    if args is None:
        return None
    l1, l2, lams, codes = args
    coefficients: list[float] = []
    for term in penalty.terms:
        if _kind(term) == 2:
            # the same cached layout add_grad_ uses (coefficients c_g per tensor)
            key = (term, term.groups, term.scale, False)
            layout = (scratch.memo(key, params, lambda t=term: t._layout(params))
                      if scratch is not None else term._layout(params))
            coefficients.extend(layout.coefficients)
    return l1, l2, lams, codes, coefficients


def uses_kernel_node(penalty, params: Sequence[Tensor]) -> bool:
    """Whether :func:`penalty_term` takes the C++ node for this call."""
    return (uses_function(penalty, params) and load_kernel() is not None
            and _kernel_terms(penalty, params, None) is not None)


def penalty_term(penalty, params: Sequence[Tensor], dtype: torch.dtype = torch.float64,
                 scratch=None) -> Tensor:
    """R(w) of ``penalty`` over ``params`` as a 0-d tensor to add to a loss.

    Args:
        penalty: a regtorch penalty.
        params: the tensors it acts on.
        dtype: the value's dtype when the C++ node computes it (summed in float64, rounded
            once); the other paths return float64 and leave the cast to the caller.
        scratch: the call site's :class:`~regtorch.penalties.Scratch` (caches group layouts).

    Returns:
        ``penalty.value(params)``, differentiable with the gradients of
        ``penalty.add_grad_``; through autograd in the cases the module docstring lists.
    """
    if not uses_function(penalty, params):
        return penalty.value(params)
    ops = load_kernel()
    if ops is not None:
        if all(p.requires_grad for p in params):  # the node's own selection changes nothing
            term = node_term(penalty, params, dtype)
            if term is not None:
                return term
        terms = _kernel_terms(penalty, params, scratch)
        if terms is not None:
            return ops.penalty_term(params, *terms, dtype)
    return _PenaltyTerm.apply(penalty, *params)


class _PenaltyTerm(torch.autograd.Function):
    """R(w) forward, computed together with ∇R(w) by one ``add_grad_(value=True)`` into fresh
    buffers (one pass with the fused kernel); backward returns ``grad_output · ∇R(w)``."""

    @staticmethod
    def forward(ctx, penalty, *params: Tensor) -> Tensor:
        grads = [torch.zeros_like(p) for p in params]
        value = penalty.add_grad_(list(params), grads, value=True)
        ctx.penalty = penalty
        ctx.grads = grads
        ctx.save_for_backward(*params)
        return value

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        needed = ctx.needs_input_grad[1:]
        params = list(ctx.saved_tensors)
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
            leaves = [p for p, need in zip(params, needed) if need]
            value = ctx.penalty.value(params)
            found = iter(torch.autograd.grad(value, leaves, grad_output, create_graph=True,
                                             allow_unused=True))
            return (None, *(next(found) if need else None for need in needed))
        grads, ctx.grads = ctx.grads, None  # handed to autograd, which may keep them
        if grads is None:  # a second backward through a retained graph: compute them again
            grads = [torch.zeros_like(p) for p in params]
            ctx.penalty.add_grad_(params, grads)
        # The usual case is d(loss)/d(R) = 1: skip the scaling pass (a CPU scalar costs no sync).
        if grad_output.device.type != "cpu" or float(grad_output) != 1.0:
            torch._foreach_mul_(grads, grad_output.to(grads[0].dtype))
        return (None, *(g if need else None for g, need in zip(grads, needed)))
