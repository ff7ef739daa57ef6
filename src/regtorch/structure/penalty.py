r"""Group lasso over coupled channel groups, and a controller that reaches a target sparsity.

:class:`ChannelLasso` is a :class:`~regtorch.Penalty` whose groups are the channels of
:func:`~regtorch.channel_groups`: one group is the union of the channel's penalized slices across
every tensor it spans (a residual stream channel spans every producer feeding the additions):

.. math::  R(w) = λ \sum_g c_g \lVert w_g \rVert_2, \qquad
           ∇_{w_g} R = λ c_g \frac{w_g}{\lVert w_g \rVert_2} \; (0 \text{ at } w_g = 0), \qquad
           \mathrm{prox}_{tR}(w)_g = w_g \max\Bigl(1 − \frac{t_g λ c_g}{\lVert w_g \rVert_2},
           0\Bigr)

with :math:`c_g = \sqrt{|g|}` (``scale="sqrt"``, :math:`|g|` the number of penalized elements of the
group) or 1 (``scale="none"``). The whole group shrinks as one, across tensors, and becomes exactly
zero together.

**Keeping the scale of scale-free families** (``keep_scale=True``). Under BatchNorm, some
families of channels have a joint scale that the next normalizations undo
(:meth:`~regtorch.structure.ChannelGroups.scale_free`: e.g. the channels between a block's two
convolutions, or a residual stream feeding only normalized convolutions). On such a family the
loss does not resist the group lasso at any scale, so λ large enough to zero some of its channels
shrinks all of them together, toward the norms' ε, and the network degrades (measured in
``benchmarks/bench_compact.py``). With ``keep_scale=True`` the proximal step is followed by a
rescaling of each scale-free family back to its norm before the step,

.. math::  w_g \leftarrow w_g' \, \frac{\lVert w_f \rVert_2}{\lVert w_f' \rVert_2}
           \quad (g \in f), \qquad w' = \mathrm{prox}_{tR}(w)

(:math:`w_f` the family's penalized entries; nothing changes where :math:`w_f' = 0`), which does
not change the model's function there (up to ε) and leaves exact zeros at zero: the penalty then
acts on the channels' sizes relative to their family — weak channels go to zero, the others keep
the family's scale. This step is not the proximal step of :math:`R` (by design); value and
gradient are unchanged. ``keep_scale="all"`` rescales the families of
``scale_free(exact=False)`` too (e.g. the channels before a linear head, whose scale the loss
resists only weakly).

The step :math:`t_g` of a group is the mean of the steps of its elements: with one scalar step for
every parameter (SGD, SGD with momentum at one learning rate) it is that step and the proximal step
is exact; with per-parameter learning rates it is their element-weighted mean; with element-wise
steps (Adam's ``lr/(√v̂+ε)``, Adagrad, RMSprop, as :class:`~regtorch.Proximal` passes them) it is the
mean of the element-wise steps over the group's elements — a scalar per group, so the group still
shrinks as one (the fixed point is then that of the group lasso under this diagonal metric
averaged per group, an approximation of the Euclidean one).

Which slices are penalized (``roles``): by default (``"auto"``) every ``norm`` slice
(BatchNorm/InstanceNorm weight and bias, depthwise-conv entries) and the ``out`` (producer weight
rows) and ``bias`` slices of the producers whose output does *not* feed an affine normalization
directly (:attr:`~regtorch.structure.ChannelGroups.normalized`). A convolution followed by
BatchNorm computes the same function at any scale of its rows, so a penalty on those rows is not
resisted by the loss: it shrinks every row of the layer at once, and at a λ that zeroes a fraction
of the channels it collapses the network (measured in ``benchmarks/bench_compact.py``). On such a
layer the norm's weight and bias carry the channel's scale; with both zero the channel emits
exactly 0 and :func:`~regtorch.compact` removes it, rows included. Where no norm follows, the rows
and bias are the channel's scale and are penalized. An explicit subset of
``("out", "bias", "norm")`` penalizes those roles everywhere. Consumer input columns (``in``) are
never penalized: they overlap the next group's rows, and with them the proximal step would no
longer be exact. Running statistics (``buffer``) are not parameters: never penalized, removed with
the channel by :func:`~regtorch.compact`.

**Stacked members.** With a ``[K]`` strength and ``parameters=`` tensors stacked ``[K, ...]``
(K copies of the model, as :func:`torch.func.stack_module_state` makes them), member ``k`` is
penalized at ``lam[k]`` on its own slice: norms, steps and shrink factors are per member and
per group, the value is :math:`\sum_k` of the members' values, and nothing couples the members.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from regtorch._distributed import is_dtensor
from regtorch._strength import check_members
from regtorch.penalties import Penalty, Scratch
from regtorch.structure.graph import AUTO, PENALIZED_ROLES, ChannelGroups

__all__ = ["ChannelLasso", "ChannelSparsity"]


_DTENSOR_REFUSAL = (
    "ChannelLasso does not support DTensor parameters (FSDP2 fully_shard, tensor parallel): a "
    "channel group spans slices of several tensors, each sharded its own way, and its norm is not "
    "reduced across ranks; train and compact the unsharded model, or shard after compact")


class _Layout:
    """Per tensor name: the dim its channels index and the group of each index (−1: none)."""

    def __init__(self, groups: ChannelGroups, roles: str | tuple[str, ...], scale: str,
                 parameters: Mapping[str, Tensor] | None) -> None:
        self.dims: dict[str, int] = {}
        self.group_of: dict[str, Tensor] = {}
        sizes = [0] * len(groups.groups)
        for group in groups.groups:
            # Every tensor with a penalizable slice is known (it may be bound by
            # ``groups.selector``); only the slices ``roles`` picks get a group, the others -1.
            penalized = set(groups.penalized(group, roles))
            for s in group.of(*PENALIZED_ROLES):
                tensor = groups.tensor(s.tensor)
                if self.dims.setdefault(s.tensor, s.dim) != s.dim:
                    raise ValueError(f"ChannelLasso: {s.tensor} has channel slices along dims "
                                     f"{self.dims[s.tensor]} and {s.dim}")
                if s.tensor not in self.group_of:
                    self.group_of[s.tensor] = torch.full((tensor.shape[s.dim],), -1,
                                                         dtype=torch.long)
                if s not in penalized:
                    continue
                self.group_of[s.tensor][list(s.indices)] = group.index
                sizes[group.index] += len(s.indices) * tensor.numel() // tensor.shape[s.dim]
        self.count = len(sizes)
        self.coefficients = torch.tensor(
            [math.sqrt(n) if scale == "sqrt" else 1.0 for n in sizes], dtype=torch.float64)
        self.shapes = {name: groups.tensor(name).shape for name in self.dims}
        if parameters is None:
            self.names_by_id = {id(groups.tensor(name)): name for name in self.dims}
        else:
            missing = [name for name in self.dims if name not in parameters]
            if missing:
                raise ValueError(f"ChannelLasso: parameters= has no tensor {missing[0]!r} "
                                 f"(every tensor with penalized slices is needed)")
            self.names_by_id = {id(parameters[name]): name for name in self.dims}


class ChannelLasso(Penalty):
    r"""Group lasso over coupled channel groups (see the module docstring for the formulas and
    the step rule).

    Bind it to the parameters its groups penalize with the groups' selector::

        reg = Regularizer(model, {groups.selector: ChannelLasso(lam, groups)})

    Args:
        lam: strength λ ≥ 0, or a ``[K]`` tensor for ``parameters`` stacked ``[K, ...]``.
        groups: the :class:`~regtorch.structure.ChannelGroups` of the model.
        scale: ``"sqrt"`` (:math:`c_g = \sqrt{|g|}`) or ``"none"`` (1).
        roles: ``"auto"`` (the slices that carry each channel's scale: normalization entries,
            and the rows and bias of producers no norm follows directly; module docstring) or
            the slice roles penalized everywhere, a subset of ``("out", "bias", "norm")``.
        parameters: the tensors penalized instead of the groups' model's own, by name (as
            :class:`~regtorch.Regularizer`'s ``parameters=``, and the same mapping): shaped like
            the model's, or stacked ``[K, ...]`` with a ``[K]`` ``lam`` (module docstring).
        keep_scale: ``True``: after each proximal step, rescale every scale-free family of
            groups back to its norm before the step (module docstring); ``"all"``: also the
            families whose consumers are not normalized (``ChannelGroups.scale_free(exact=False)``,
            e.g. the channels before a linear head: their scale is not undone there, only
            weakly resisted); ``False``: the proximal step alone. Needs ``roles="auto"`` and one
            model (not stacked ``parameters=``).

    Raises:
        ValueError: bad ``scale``, ``roles`` or ``keep_scale``; ``keep_scale`` with other roles
            than ``"auto"`` or with stacked ``parameters=``; ``parameters`` without a penalized
            tensor;
            :meth:`check` raises for a parameter that holds no penalizable slice of the groups
            (e.g. a head bound by the default ``WEIGHTS`` selection), is not shaped like the
            model's tensor (``[K, ...]`` with a ``[K]`` strength) or is a DTensor. A parameter
            with penalizable slices that ``roles`` leaves out (a convolution followed by
            BatchNorm under ``"auto"``) may be bound and is not penalized.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.1]]))
        ...     _ = model[0].bias.copy_(torch.tensor([4.0, 0.0]))
        >>> groups = channel_groups(model, torch.randn(4, 2))
        >>> penalty = ChannelLasso(1.0, groups, scale="none")
        >>> penalty.value([model[0].weight, model[0].bias])  # ‖(3, 0, 4)‖ + ‖(0, 0.1, 0)‖
        tensor(5.1000, dtype=torch.float64, grad_fn=<MulBackward0>)
        >>> with torch.no_grad():
        ...     penalty.prox_([model[0].weight, model[0].bias], [0.5, 0.5])
        >>> model[0].weight  # row 0 scaled by 1 − 0.5/5, row 1 exactly 0
        Parameter containing:
        tensor([[2.7000, 0.0000],
                [0.0000, 0.0000]], requires_grad=True)
    """

    _strength_names = ("lam",)
    has_prox = True
    _SCALES = ("sqrt", "none")

    def __init__(self, lam: float, groups: ChannelGroups, scale: str = "sqrt",
                 roles: str | Sequence[str] = AUTO, *,
                 parameters: Mapping[str, Tensor] | None = None,
                 keep_scale: bool | str = False) -> None:
        if not isinstance(groups, ChannelGroups):
            raise TypeError(f"Invalid groups: {groups!r} (expected regtorch.channel_groups(...))")
        if scale not in self._SCALES:
            raise ValueError(f"Invalid scale value: {scale!r} (expected one of {self._SCALES})")
        if roles != AUTO:
            roles = tuple(roles) if not isinstance(roles, str) else (roles,)
            if not roles or any(r not in PENALIZED_ROLES for r in roles):
                raise ValueError(f"Invalid roles value: {roles!r} (expected {AUTO!r} or a "
                                 f"non-empty subset of {PENALIZED_ROLES})")
        self.lam = lam
        self.groups = groups
        self.scale = scale
        self.roles = roles
        self._layout = _Layout(groups, roles, scale, parameters)
        if keep_scale not in (False, True, "all"):
            raise ValueError(f"Invalid keep_scale value: {keep_scale!r} (expected False, True "
                             f"or 'all')")
        if keep_scale and (roles != AUTO or parameters is not None):
            raise ValueError(f"Invalid keep_scale value: {keep_scale!r} with roles={roles!r}"
                             f"{' and stacked parameters=' if parameters is not None else ''} "
                             f"(keep_scale needs roles='auto' on the groups' model)")
        self.keep_scale = keep_scale
        self._family_of = torch.full((self._layout.count,), -1, dtype=torch.long)
        self._families = groups.scale_free(exact=keep_scale != "all") if keep_scale else []
        for i, family in enumerate(self._families):
            self._family_of[list(family)] = i

    def _coefficients(self, device: torch.device) -> Tensor:
        """:math:`c_g` (``[G]``, float64)."""
        return self._layout.coefficients.to(device)

    def _extra_repr(self) -> str:
        keep = (f", keep_scale={self.keep_scale!r} ({len(self._families)} families)"
                if self.keep_scale else "")
        return f", {len(self.groups)} groups, scale={self.scale!r}, roles={self.roles!r}{keep}"

    def zero_groups(self) -> list[int]:
        """Indices of the groups whose penalized slices are all exactly zero now (in the
        groups' model; for stacked ``parameters=`` check the members yourself)."""
        return self.groups.zero_groups(self.roles)

    def zero_fraction(self) -> float:
        """Fraction of the groups whose penalized slices are all exactly zero now."""
        return len(self.zero_groups()) / len(self.groups) if len(self.groups) else 0.0

    def _name(self, param: Tensor) -> str:
        name = self._layout.names_by_id.get(id(param))
        if name is None:
            raise ValueError(f"ChannelLasso: a parameter of shape {tuple(param.shape)} holds no "
                             f"penalizable slice of its groups; bind the penalty with "
                             f"Regularizer(model, {{groups.selector: ChannelLasso(...)}})")
        return name

    def check(self, param: Tensor) -> None:
        if is_dtensor(param):
            raise ValueError(_DTENSOR_REFUSAL)
        shape = self._layout.shapes[self._name(param)]
        if isinstance(self.lam, Tensor):
            check_members(self.lam, param, "ChannelLasso")
            shape = torch.Size((self.lam.shape[0], *shape))
        if param.shape != shape:
            stacked = ", stacked [K, ...]" if isinstance(self.lam, Tensor) else ""
            raise ValueError(f"ChannelLasso: expected a tensor of shape {tuple(shape)} (the "
                             f"model's{stacked}), got {tuple(param.shape)}")

    def _members(self, param: Tensor) -> Tensor:
        """``param`` as ``[M, ...]``: its K stacked members, or M = 1 for one model."""
        return param if isinstance(self.lam, Tensor) else param.unsqueeze(0)

    def _index(self, param: Tensor) -> tuple[int, Tensor]:
        """The channel dim of ``_members(param)`` and the group of each index along it."""
        if is_dtensor(param):
            name = self._layout.names_by_id.get(id(param), "a parameter")
            raise ValueError(f"ChannelLasso: {name} of shape {tuple(param.shape)}: "
                             f"{_DTENSOR_REFUSAL}")
        name = self._name(param)
        return self._layout.dims[name] + 1, self._layout.group_of[name].to(param.device)

    def _strengths(self, device: torch.device) -> Tensor | float:
        """λ as a ``[M, 1]`` float64 column (stacked) or the number."""
        if isinstance(self.lam, Tensor):
            return self.lam.to(dtype=torch.float64, device=device).view(-1, 1)
        return self.lam

    def _group_sums(self, params: Sequence[Tensor], per_index) -> Tensor:
        """``[M, G]``: Σ over each member's and group's elements of ``per_index(param, m, dim)``,
        a float64 ``[M, n]`` per index along the channel dim ``dim`` of
        ``m = _members(param)``."""
        members = self._members(params[0]).shape[0] if params else 1
        total = torch.zeros(members, self._layout.count, dtype=torch.float64,
                            device=params[0].device if params else None)
        for p in params:
            dim, gid = self._index(p)
            values = per_index(p, self._members(p), dim)
            keep = gid >= 0
            total = total.index_add(1, gid[keep], values[:, keep])
        return total

    def _norms(self, params: Sequence[Tensor]) -> Tensor:
        def squares(p: Tensor, m: Tensor, dim: int) -> Tensor:
            others = [d for d in range(1, m.ndim) if d != dim]
            squared = m.to(torch.float64).square()
            return squared.sum(dim=others) if others else squared

        sums = self._group_sums(params, squares)
        positive = sums > 0  # √ with gradient 0, not NaN, at an exactly-zero group
        return torch.where(positive, torch.where(positive, sums, 1.0).sqrt(), 0.0)

    def _total(self, norms: Tensor) -> Tensor:
        per_member = (self._coefficients(norms.device) * norms).sum(dim=1)
        if isinstance(self.lam, Tensor):
            return (self._strengths(norms.device).view(-1) * per_member).sum()
        return self.lam * per_member[0]

    def value(self, params: Sequence[Tensor]) -> Tensor:
        if not params:
            return torch.zeros((), dtype=torch.float64)
        return self._total(self._norms(params))

    def _factors(self, params: Sequence[Tensor], per_group: Tensor,
                 fill: float) -> list[Tensor]:
        """``per_group`` (``[M, G]``, float64) as one factor per parameter that broadcasts
        against it, ``fill`` where an index belongs to no group."""
        out = []
        padded = torch.cat([per_group, per_group.new_full((per_group.shape[0], 1), fill)], 1)
        for p in params:
            dim, gid = self._index(p)
            factor = padded[:, torch.where(gid >= 0, gid, per_group.shape[1])].to(p.dtype)
            shape = [1] * self._members(p).ndim
            shape[0], shape[dim] = factor.shape[0], -1
            factor = factor.view(shape)
            out.append(factor if isinstance(self.lam, Tensor) else factor[0])
        return out

    def add_grad_(self, params, grads, *, value=False, scratch: Scratch | None = None):
        if not params:
            return torch.zeros((), dtype=torch.float64) if value else None
        with torch.no_grad():
            norms = self._norms(params)
        coefficients = self._coefficients(norms.device)
        floor = torch.finfo(torch.float64).tiny ** 0.5
        per_group = self._strengths(norms.device) * coefficients / norms.clamp_min(floor)
        for p, grad, factor in zip(params, grads, self._factors(params, per_group, 0.0)):
            grad.addcmul_(p, factor)
        return self._total(norms) if value else None

    def prox_(self, params, steps, *, scratch: Scratch | None = None):
        if not params:
            return
        with torch.no_grad():
            norms = self._norms(params)

            def step_sums(p: Tensor, m: Tensor, dim: int) -> Tensor:
                """Σ of the steps over each member's elements at each channel index."""
                step = step_of[id(p)]
                if isinstance(step, Tensor):
                    expanded = self._members(step.to(torch.float64).expand_as(p))
                    others = [d for d in range(1, m.ndim) if d != dim]
                    return expanded.sum(dim=others) if others else expanded.clone()
                per = m[0].numel() // m.shape[dim]
                return torch.full((m.shape[0], m.shape[dim]), float(step) * per,
                                  dtype=torch.float64, device=m.device)

            def counts_of(p: Tensor, m: Tensor, dim: int) -> Tensor:
                per = float(m[0].numel() // m.shape[dim])
                return torch.full((m.shape[0], m.shape[dim]), per, dtype=torch.float64,
                                  device=m.device)

            step_of = {id(p): step for p, step in zip(params, steps)}
            totals = self._group_sums(params, step_sums)
            counts = self._group_sums(params, counts_of)
            mean_steps = torch.where(counts > 0, totals / counts.clamp_min(1.0), 0.0)
            coefficients = self._coefficients(norms.device)
            floor = torch.finfo(torch.float64).tiny ** 0.5
            shrink = (1.0 - mean_steps * self._strengths(norms.device) * coefficients
                      / norms.clamp_min(floor)).clamp_min(0.0)
            if self._families:
                shrink = self._keep_family_scale(norms, shrink)
            for p, factor in zip(params, self._factors(params, shrink, 1.0)):
                p.mul_(factor)

    def _keep_family_scale(self, norms: Tensor, shrink: Tensor) -> Tensor:
        """``shrink`` (``[1, G]``) times, on each scale-free family, the ratio of the family's
        norm before the step to its norm after (1 where the family is all zero after)."""
        family = self._family_of.to(norms.device)
        member = family >= 0
        count = len(self._families)
        before = norms.new_zeros(count).index_add(0, family[member], norms[0, member].square())
        after = norms.new_zeros(count).index_add(
            0, family[member], (shrink[0, member] * norms[0, member]).square())
        ratio = torch.where(after > 0, (before / after.clamp_min(torch.finfo(after.dtype).tiny))
                            .sqrt(), 1.0)
        kept = shrink.clone()
        kept[0, member] = shrink[0, member] * ratio[family[member]]
        return kept


class ChannelSparsity:
    r"""Steers a :class:`ChannelLasso`'s λ until a target number of its groups is exactly zero.

    Call :meth:`step` once per epoch (or every few proximal steps). It counts the groups whose
    penalized slices are all exactly zero (:meth:`ChannelLasso.zero_groups`) and compares the count
    ``n`` with the band ``[k, k + tolerance]``, ``k = ⌈target · G⌉`` of the ``G`` groups:

    * ``n`` in the band: λ is held and :attr:`reached_` is true;
    * ``n < k``: after ``patience`` such calls, λ is raised — multiplied by ``factor`` while no λ
      has overshot, otherwise to the geometric midpoint :math:`\sqrt{λ_{lo} λ_{hi}}` of the
      largest λ seen below the band and the smallest seen above it;
    * ``n > k + tolerance`` (an overshoot: near a critical λ many groups reach zero within a few
      steps). With ``restore=(model, optimizer)`` the controller rolls both back to the state it
      saved when it last raised λ (below the band) and bisects: λ becomes the midpoint of the λ
      it raised from and the λ that overshot. Without ``restore`` it lowers λ the same way, which
      helps only where a zero group can leave zero: one followed by ReLU (or a BatchNorm with
      γ = β = 0 before a ReLU) gets a zero gradient and stays zero, so the count cannot fall.

    If the band cannot be landed — the bracket :math:`λ_{hi}/λ_{lo}` shrinks below
    ``1 + resolution`` with the count still jumping over the band (several groups reach zero at
    the same λ, or, without ``restore``, an overshoot that lowering λ cannot undo), or λ reaches
    ``max_lam`` below the band — λ is held (at :math:`λ_{hi}`, at or above the target, or at
    ``max_lam``) and :attr:`why_` says why in one line. The count lags λ by the steps a group
    needs to shrink to zero: call it every few steps, with ``patience``, so that the count settles
    before the next raise.

    Args:
        penalty: the penalty whose ``lam`` is steered (must start above 0).
        target: the fraction of groups to zero, in (0, 1].
        factor: multiplier of λ per raise (or divisor per lowering) before a bracket exists (> 1).
        patience: calls outside the band between two changes of λ (≥ 1).
        max_lam: λ is never raised above this (``None``: no bound).
        tolerance: groups above ``k`` still in the band (≥ 0; default 1: "within one group").
        resolution: the relative width of the λ bracket below which the controller gives up
            bisecting (> 0).
        restore: objects with ``state_dict``/``load_state_dict`` (the model and its optimizer;
            for a :class:`~regtorch.Proximal`, pass it or its ``.optimizer``) saved at every raise
            and restored on an overshoot; ``None``: no roll-back.

    Attributes:
        reached_: the count was in the band at the last call.
        why_: ``None``, or why the band cannot be landed (the controller then holds λ).
        lam_low_, lam_high_: the bracket: the largest λ seen below the band, the smallest seen
            above it (``None`` until seen).
        restored_: how many times the saved state was restored.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> penalty = ChannelLasso(0.1, channel_groups(model, torch.randn(3, 2)))
        >>> controller = ChannelSparsity(penalty, target=0.5, factor=2.0)
        >>> controller.step(), penalty.lam  # nothing is zero yet: λ doubles
        (0.0, 0.2)
    """

    def __init__(self, penalty: ChannelLasso, target: float, *, factor: float = 2.0,
                 patience: int = 1, max_lam: float | None = None, tolerance: int = 1,
                 resolution: float = 1e-3, restore: Sequence[object] | None = None) -> None:
        if not isinstance(penalty, ChannelLasso):
            raise TypeError(f"Invalid penalty: {penalty!r} (expected a ChannelLasso)")
        if isinstance(penalty.lam, Tensor):
            raise TypeError("Invalid penalty: ChannelSparsity steers one model's λ (a number), "
                            "not stacked [K] strengths")
        if not 0.0 < target <= 1.0:
            raise ValueError(f"Invalid target value: {target} (expected 0 < target <= 1)")
        if not factor > 1.0:
            raise ValueError(f"Invalid factor value: {factor} (expected > 1)")
        if not (isinstance(patience, int) and patience >= 1):
            raise ValueError(f"Invalid patience value: {patience!r} (expected an int >= 1)")
        if not (isinstance(tolerance, int) and tolerance >= 0):
            raise ValueError(f"Invalid tolerance value: {tolerance!r} (expected an int >= 0)")
        if not resolution > 0:
            raise ValueError(f"Invalid resolution value: {resolution} (expected > 0)")
        if not penalty.lam > 0:
            raise ValueError(f"Invalid penalty strength: {penalty.lam} (ChannelSparsity "
                             f"multiplies it; start above 0)")
        if max_lam is not None and not max_lam >= penalty.lam:
            raise ValueError(f"Invalid max_lam value: {max_lam} (expected >= the penalty's "
                             f"lam {penalty.lam})")
        restore = tuple(restore or ())
        for obj in restore:
            if not (callable(getattr(obj, "state_dict", None))
                    and callable(getattr(obj, "load_state_dict", None))):
                raise TypeError(f"Invalid restore entry: {obj!r} (expected objects with "
                                f"state_dict and load_state_dict)")
        self.penalty = penalty
        self.target = target
        self.factor = factor
        self.patience = patience
        self.max_lam = max_lam
        self.tolerance = tolerance
        self.resolution = resolution
        self.restore = restore
        self.count = math.ceil(target * len(penalty.groups) - 1e-9)
        self.reached_ = False
        self.why_: str | None = None
        self.lam_low_: float | None = None
        self.lam_high_: float | None = None
        self.restored_ = 0
        self._low_count = self._high_count = 0
        self._saved: list[dict] | None = None
        self._waited = 0

    def _save(self) -> None:
        if self.restore:
            self._saved = [copy.deepcopy(obj.state_dict()) for obj in self.restore]

    def _load(self) -> None:
        for obj, state in zip(self.restore, self._saved):
            obj.load_state_dict(copy.deepcopy(state))
        self.restored_ += 1

    def step(self) -> float:
        """Count the zero groups, steer λ toward the band; return the zero fraction."""
        zeros = len(self.penalty.zero_groups())
        total = len(self.penalty.groups)
        fraction = zeros / total if total else 0.0
        low, high = self.count, self.count + self.tolerance
        self.reached_ = low <= zeros <= high
        if self.reached_:
            self._waited = 0
            return fraction
        self._waited += 1
        if self.why_ is not None or self._waited < self.patience:
            return fraction
        self._waited = 0
        lam = float(self.penalty.lam)
        if zeros < low:
            if self.lam_high_ is not None and self.lam_high_ <= lam:
                self.lam_high_ = None  # stale: the count fell back at a larger λ
            self.lam_low_, self._low_count = lam, zeros
            new = lam * self.factor if self.lam_high_ is None else math.sqrt(lam * self.lam_high_)
            if self.max_lam is not None and new >= self.max_lam:
                if lam >= self.max_lam:
                    self.why_ = (f"λ is at max_lam={self.max_lam:g} with {zeros} of {total} "
                                 f"groups zero (target {low})")
                new = self.max_lam
            if new != lam:
                self._save()
        else:
            if self.lam_low_ is not None and self.lam_low_ >= lam:
                self.lam_low_ = None  # stale: the count rose at a smaller λ
            self.lam_high_, self._high_count = lam, zeros
            if self._saved is not None and self.lam_low_ is not None:
                self._load()  # back to the state below the band, at λ_lo
            new = lam / self.factor if self.lam_low_ is None else math.sqrt(self.lam_low_ * lam)
        if (self.lam_low_ is not None and self.lam_high_ is not None
                and self.lam_high_ <= self.lam_low_ * (1.0 + self.resolution)):
            self.why_ = (f"the zero count jumps from {self._low_count} (λ={self.lam_low_:.6g}) "
                         f"to {self._high_count} (λ={self.lam_high_:.6g}) of {total} groups, "
                         f"over the band {low}..{high}; holding λ={self.lam_high_:.6g}")
            if not self.restore:
                self.why_ += ("; lowering λ cannot undo an overshoot where zero groups cannot "
                              "leave zero (before a ReLU their gradient is 0): pass "
                              "restore=(model, optimizer) to roll back")
            new = self.lam_high_
        self.penalty.lam = new
        return fraction
