r"""Coupled channel groups of a traced model: which tensor slices belong to one removable channel.

A *channel* of a layer is one output unit (a ``Linear`` row, a ``Conv`` filter, an ``Embedding``
column). Removing it removes a slice of every tensor that touches it: the producer's output row
and bias entry, the per-channel entries of the normalizations and depthwise convolutions it flows
through (BatchNorm weight, bias and running statistics), and every consumer's input slice (the next
``Linear``/``Conv``'s input columns; after a ``flatten`` a ``Conv`` channel is a block of
``H·W`` columns of the ``Linear`` that follows). Operations that combine tensors elementwise
(residual additions, products) *couple* the channels at equal positions: they can only be removed
together. Concatenation along the channel axis offsets channels.

The analysis follows the tensors of a :func:`torch.fx.symbolic_trace` of the model through a table
of operations it knows act channel-wise; each tensor's channel axis is tracked through
``transpose``/``permute``/``unsqueeze``/indexing/reductions. Whatever it cannot prove removable is
left out with a one-line reason naming the node: channels that reach the model output, that meet an
operation the analysis does not know (``matmul``, ``chunk``/``split``, a reshape other than a
flatten, an in-place indexed write, a custom function), that a
``LayerNorm``/``GroupNorm``/``softmax`` mixes, that come from a grouped convolution, an
``nn.MultiheadAttention`` (its ``embed_dim`` couples query, heads and output), a parameter used
directly in the forward, or a tied parameter.

Roles of the slices of a group (see :class:`Slice`):

========  =========================================================================  ===========
role      slices                                                                     penalized
========  =========================================================================  ===========
``out``   producer weight rows (``Linear``/``Conv`` dim 0, ``Embedding`` dim 1)       yes (*)
``bias``  producer bias entries                                                      yes (*)
``norm``  per-channel affine entries: BatchNorm/InstanceNorm weight and bias,        yes
          depthwise-convolution weight and bias
``in``    consumer input columns (``Linear``/``Conv`` dim 1)                         no
``buffer`` BatchNorm ``running_mean``/``running_var``                                 never
========  =========================================================================  ===========

(*) by :class:`~regtorch.ChannelLasso`'s default ``roles="auto"`` only where no affine norm
follows the producer directly (:attr:`ChannelGroups.normalized`).

The penalized roles are disjoint across groups (every element of a weight belongs to one output
row), so a group lasso over them has an exact proximal step; when a group's penalized slices are
all zero the channel emits exactly 0 through any activation with ``f(0) = 0`` and its consumers'
columns multiply zeros (see :mod:`regtorch.structure.compact` for the other cases).
"""

from __future__ import annotations

import builtins
import copy
import math
import operator
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from regtorch.selection import Selector, named

__all__ = ["ROLES", "ChannelGroup", "ChannelGroups", "Slice", "channel_groups"]

ROLES = ("out", "bias", "norm", "in", "buffer")
PENALIZED_ROLES = ("out", "bias", "norm")
AUTO = "auto"


@dataclass(frozen=True)
class Slice:
    """The entries ``indices`` along dim ``dim`` of the model tensor named ``tensor``.

    Attributes:
        tensor: the parameter's or buffer's name in the model (``"layer1.0.conv1.weight"``).
        dim: the dimension the channel indexes (0 for rows, 1 for input columns).
        indices: the positions along ``dim`` (several for a block of columns after a flatten).
        role: ``"out"``, ``"bias"``, ``"norm"``, ``"in"`` or ``"buffer"`` (module docstring).
    """

    tensor: str
    dim: int
    indices: tuple[int, ...]
    role: str

    def __str__(self) -> str:
        where = ", ".join(map(str, self.indices[:4])) + (", ..." if len(self.indices) > 4 else "")
        return f"{self.tensor}[{'' if self.dim == 0 else ':, ' * self.dim}{where}] ({self.role})"


@dataclass(frozen=True)
class ChannelGroup:
    """One removable channel: every tensor slice that belongs to it, across tensors.

    Attributes:
        index: position in :attr:`ChannelGroups.groups`.
        slices: the slices, in order of discovery.
    """

    index: int
    slices: tuple[Slice, ...]

    def of(self, *roles: str) -> tuple[Slice, ...]:
        """The slices with one of ``roles``."""
        return tuple(s for s in self.slices if s.role in roles)

    def size(self, roles: Sequence[str] = PENALIZED_ROLES, *,
             shapes: dict[str, torch.Size]) -> int:
        """Number of elements of the group's slices with ``roles``, given the tensors' shapes."""
        total = 0
        for s in self.of(*roles):
            shape = shapes[s.tensor]
            total += len(s.indices) * math.prod(shape) // shape[s.dim]
        return total


@dataclass(repr=False)
class ChannelGroups:
    """The coupled channel groups of a model, and what was left out and why.

    Build with :func:`channel_groups`. ``str()`` prints one line per family of groups (groups with
    the same tensors) and one per reason something was left out.

    Attributes:
        groups: the removable channels.
        left_out: ``(what, reason)`` pairs, one per family of channels the analysis did not prove
            removable (``what`` names the producer tensors and how many channels).
    """

    groups: list[ChannelGroup]
    left_out: list[tuple[str, str]]
    _tensors: dict[str, Tensor] = field(repr=False, default_factory=dict)
    _node_groups: dict[str, tuple[int, list[int]]] = field(repr=False, default_factory=dict)
    normalized: frozenset[str] = frozenset()
    """Producer weight and bias tensors whose output feeds an affine BatchNorm/InstanceNorm
    directly (and nothing else): the norm undoes any scale of their rows (and any shift), so the
    loss does not resist shrinking them. ``roles="auto"`` does not penalize them."""

    def penalized(self, group: ChannelGroup, roles: str | Sequence[str] = AUTO
                  ) -> tuple[Slice, ...]:
        """The slices of ``group`` a penalty with ``roles`` acts on.

        ``roles="auto"``: the ``norm`` slices, and the ``out`` and ``bias`` slices of the producers
        not in :attr:`normalized`. Otherwise the slices whose role is in ``roles``.
        """
        if roles == AUTO:
            return tuple(s for s in group.slices if s.role == "norm" or (
                s.role in ("out", "bias") and s.tensor not in self.normalized))
        return group.of(*roles)

    def __len__(self) -> int:
        return len(self.groups)

    def __repr__(self) -> str:
        return f"ChannelGroups({len(self.groups)} groups, {len(self.left_out)} left out)"

    def __iter__(self) -> Iterator[ChannelGroup]:
        return iter(self.groups)

    def tensor(self, name: str) -> Tensor:
        """The model's parameter or buffer ``name`` (the very tensor, not a copy)."""
        return self._tensors[name]

    def scale_free(self, exact: bool = True) -> list[tuple[int, ...]]:
        r"""Families of groups whose joint scale the model's normalizations undo.

        A family is a set of groups whose channels are the *only* inputs of some consumers
        (every input column of each consumer belongs to the family), where every consumer feeds
        an affine BatchNorm/InstanceNorm directly (:attr:`normalized`; with ``exact=False`` not
        required), and where each group's
        channel is carried only by normalization entries: its ``auto`` slices are the 1-D weight
        and bias of the norms after its producers (all producers in :attr:`normalized`).
        Multiplying all those entries by :math:`s > 0` multiplies the channels by :math:`s`
        through positively homogeneous operations (ReLU, pooling, additions within the family),
        and the consumers' norms undo it: the model computes the same function (up to the norms'
        ε), so a penalty on these entries is not resisted by the loss at any scale. The analysis
        does not check the activations: with one that is not positively homogeneous (GELU,
        SiLU, sigmoid) the invariance is only approximate.

        With ``exact=False`` the families whose consumers are not normalized are included too
        (e.g. the last stage's channels before a linear head): there the scale is not undone —
        for a head before a softmax it is a temperature — and the loss resists it only weakly.

        Args:
            exact: only the families whose scale the consumers' norms undo.

        Returns:
            The families, each a sorted tuple of group indices; in order of their first group.
        """
        parent: dict[str, str] = {}

        def find(t: str) -> str:
            while parent.setdefault(t, t) != t:
                t = parent[t]
            return t

        consumers: dict[int, set[str]] = {}
        for group in self.groups:
            ins = {s.tensor for s in group.of("in")}
            consumers[group.index] = ins
            first, *rest = sorted(ins) or [None]
            for t in rest:
                parent[find(t)] = find(first)
        families: dict[str, list[int]] = {}
        for group in self.groups:
            if consumers[group.index]:
                families.setdefault(find(min(consumers[group.index])), []).append(group.index)
        out = []
        for members in families.values():
            ins = set().union(*(consumers[i] for i in members))
            columns = defaultdict(int)
            carried = True
            for i in members:
                group = self.groups[i]
                producers = {s.tensor for s in group.of("out", "bias")}
                penalized = self.penalized(group, AUTO)
                carried &= (bool(penalized) and producers <= self.normalized
                            and all(s.role == "norm" and self._tensors[s.tensor].ndim == 1
                                    for s in penalized))
                for s in group.of("in"):
                    columns[s.tensor] += len(s.indices)
            if carried and all((t in self.normalized or not exact) and columns[t] ==
                               self._tensors[t].shape[1] for t in ins):
                out.append(tuple(sorted(members)))
        return sorted(out)

    def parameter_names(self, roles: str | Sequence[str] = PENALIZED_ROLES) -> list[str]:
        """Names of the tensors holding slices with ``roles`` (or ``"auto"``, see
        :meth:`penalized`), in order of first appearance."""
        seen: dict[str, None] = {}
        for group in self.groups:
            for s in self.penalized(group, roles):
                seen.setdefault(s.tensor, None)
        return list(seen)

    @property
    def selector(self) -> Selector:
        """A selector of the parameters with penalized slices, for a :class:`~regtorch.Regularizer`
        rule: ``Regularizer(model, {groups.selector: ChannelLasso(lam, groups)})``."""
        return named(*self.parameter_names())

    @torch.no_grad()
    def zero_groups(self, roles: str | Sequence[str] = ("out",)) -> list[int]:
        """Indices of the groups whose slices with ``roles`` (or ``"auto"``, see
        :meth:`penalized`) are all exactly zero now."""
        zero = []
        for group in self.groups:
            slices = self.penalized(group, roles)
            if slices and all(_slice_is_zero(self._tensors[s.tensor], s) for s in slices):
                zero.append(group.index)
        return zero

    def zero_fraction(self, roles: str | Sequence[str] = ("out",)) -> float:
        """Fraction of the groups that are exactly zero (:meth:`zero_groups`); 0 with no group."""
        return len(self.zero_groups(roles)) / len(self.groups) if self.groups else 0.0

    def __str__(self) -> str:
        shapes = {name: t.shape for name, t in self._tensors.items()}
        families: dict[tuple, list[ChannelGroup]] = defaultdict(list)
        for group in self.groups:
            families[tuple(dict.fromkeys((s.tensor, s.role) for s in group.slices))].append(group)
        lines = [f"ChannelGroups: {len(self.groups)} removable channels in {len(families)} "
                 f"families; {len(self.left_out)} left out"]
        for key, members in families.items():
            size = members[0].size(shapes=shapes)
            by_role = {role: [name for name, r in key if r == role]
                       for role in ROLES if role != "buffer"}
            tensors = "; ".join(f"{role} {', '.join(names)}" for role, names in by_role.items()
                                if names)
            lines.append(f"  {len(members)} x {size} penalizable elements: {tensors}")
        lines.extend(f"  left out: {what}: {reason}" for what, reason in self.left_out)
        return "\n".join(lines)


def _slice_is_zero(tensor: Tensor, s: Slice) -> bool:
    index = torch.tensor(s.indices, device=tensor.device)
    return not bool(tensor.index_select(s.dim, index).any())


# --------------------------------------------------------------------------------------------
# The analysis: channel variables joined by a union-find, one per tensor position.
# --------------------------------------------------------------------------------------------


@dataclass
class _Info:
    """A traced tensor whose positions along ``axis`` are the channel variables ``vars``."""

    axis: int
    vars: list[int]


class _Vars:
    """Union-find over channel variables with their slices and reasons to pin."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.slices: list[list[tuple[str, int, int, str]]] = []
        self.reasons: list[list[str]] = []
        self.keyed: dict[tuple, int] = {}

    def new(self, slices: Sequence[tuple[str, int, int, str]] = (),
            reason: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.slices.append(list(slices))
        self.reasons.append([reason] if reason else [])
        return len(self.parent) - 1

    def key(self, key: tuple, slices: Sequence[tuple[str, int, int, str]]) -> int:
        if key not in self.keyed:
            self.keyed[key] = self.new(slices)
        return self.keyed[key]

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def pin(self, vs: Sequence[int], reason: str) -> None:
        for v in vs:
            self.reasons[v].append(reason)


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
                nn.ELU, nn.SELU, nn.CELU, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
                nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

_UNARY_FUNCTIONS = {
    F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu, F.mish,
    F.elu, F.selu, F.celu, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.sigmoid,
    F.sigmoid, torch.tanh, F.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, torch.abs, torch.neg, operator.neg, torch.square, torch.exp,
}
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "abs", "neg", "exp",
                  "square", "contiguous", "clone", "detach", "float", "double", "half", "to",
                  "type_as"}
_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                   F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                   F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                   F.adaptive_max_pool3d}
_COUPLING = {operator.add, operator.sub, operator.mul, operator.iadd, operator.isub,
             operator.imul, torch.add, torch.sub, torch.mul, "add", "sub", "mul", "add_", "sub_",
             "mul_"}
_SCALAR_ONLY = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
_CATS = {torch.cat, torch.concat, torch.concatenate}
_SOFTMAX = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax"}
_METADATA_METHODS = {"size", "dim", "numel"}


def _describe(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return f".{target}()"
    if node.op == "call_function":
        module = getattr(target, "__module__", None) or ""
        return f"{module}.{getattr(target, '__name__', target)}".lstrip(".")
    return str(target)


class _Analysis:
    def __init__(self, gm: fx.GraphModule, values: dict[str, Any]) -> None:
        self.gm = gm
        self.values = values
        self.vars = _Vars()
        self.info: dict[str, Any] = {}
        self.modules = dict(gm.named_modules())
        self.direct: dict[str, str] = {}  # tensor name -> node using it directly
        self.normalized: set[str] = set()  # producer tensors feeding an affine norm only

    # -- helpers ---------------------------------------------------------------------------
    def shape(self, arg: Any) -> torch.Size | None:
        value = self.values.get(arg.name) if isinstance(arg, fx.Node) else None
        return value.shape if isinstance(value, Tensor) else None

    def is_tensor(self, arg: Any) -> bool:
        return isinstance(arg, fx.Node) and isinstance(self.values.get(arg.name), Tensor)

    def of(self, arg: Any) -> _Info | None:
        return self.info.get(arg.name) if isinstance(arg, fx.Node) else None

    def tensor_infos(self, node: fx.Node) -> list[_Info]:
        found: list[_Info] = []

        def visit(arg: fx.Node) -> fx.Node:
            info = self.info.get(arg.name)
            if isinstance(info, _Info):
                found.append(info)
            elif isinstance(info, tuple):
                found.extend(i for i in info if isinstance(i, _Info))
            return arg

        fx.node.map_arg((node.args, node.kwargs), visit)
        return found

    def refuse(self, node: fx.Node, reason: str) -> None:
        """Pin every channel that reaches ``node``; its output is untracked."""
        for info in self.tensor_infos(node):
            self.vars.pin(info.vars, reason)
        self.info[node.name] = None

    def unknown(self, node: fx.Node) -> None:
        self.refuse(node, f"node '{node.name}' ({_describe(node)}) is not known to act "
                          f"channel-wise")

    def copy_of(self, node: fx.Node, info: _Info | None, axis: int | None = None) -> None:
        self.info[node.name] = None if info is None else _Info(
            info.axis if axis is None else axis, info.vars)

    def fresh_pinned(self, count: int, reason: str) -> list[int]:
        return [self.vars.new(reason=reason) for _ in range(count)]

    # -- the walk --------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.info[node.name] = None
            elif node.op == "get_attr":
                self.direct.setdefault(str(node.target), node.name)
                self.info[node.name] = None
            elif node.op == "output":
                for info in self.tensor_infos(node):
                    self.vars.pin(info.vars, "reaches the model output")
            elif node.op == "call_module":
                self.call_module(node, self.modules[str(node.target)])
            else:
                self.call(node)

    # -- modules ---------------------------------------------------------------------------
    def consume(self, node: fx.Node, name: str, module: nn.Module, x: _Info | None, axis: int,
                count: int, kind: str) -> None:
        """Join the input channels of ``x`` with ``module``'s input columns (dim 1 of weight)."""
        ins = [self.vars.key(("in", name, j), [(f"{name}.weight", 1, j, "in")])
               for j in range(count)]
        if x is None:
            self.vars.pin(ins, f"the input of node '{node.name}' is not traced to a producer")
        elif x.axis != axis or len(x.vars) != count:
            reason = (f"node '{node.name}' ({kind}) contracts dim {axis} but the channels are on "
                      f"dim {x.axis}")
            self.vars.pin(ins, reason)
            self.vars.pin(x.vars, reason)
        else:
            for a, b in zip(x.vars, ins):
                self.vars.union(a, b)

    def produce(self, name: str, module: nn.Module, count: int, weight_dim: int = 0) -> list[int]:
        out = []
        for o in range(count):
            slices = [(f"{name}.weight", weight_dim, o, "out")]
            if getattr(module, "bias", None) is not None:
                slices.append((f"{name}.bias", 0, o, "bias"))
            out.append(self.vars.key(("out", name, o), slices))
        return out

    def per_channel(self, node: fx.Node, name: str, x: _Info | None, count: int,
                    slices: Sequence[tuple[str, str]], kind: str) -> None:
        """A channel-wise layer on axis 1 with per-channel entries ``slices`` (tensor, role)."""
        own = [self.vars.key(("channel", name, c), [(f"{name}.{t}", 0, c, role)
                                                     for t, role in slices])
               for c in range(count)]
        if x is None or x.axis != 1 or len(x.vars) != count:
            reason = (f"node '{node.name}' ({kind}) acts on dim 1 but its input's channels are "
                      f"{'untracked' if x is None else f'on dim {x.axis}'}")
            self.vars.pin(own, reason)
            if x is not None:
                self.vars.pin(x.vars, reason)
        else:
            for a, b in zip(x.vars, own):
                self.vars.union(a, b)
        self.info[node.name] = _Info(1, own)

    def call_module(self, node: fx.Node, module: nn.Module) -> None:
        name = str(node.target)
        x = self.of(node.args[0]) if node.args else None
        out_shape = self.shape(node)
        if isinstance(module, nn.Linear):
            self.consume(node, name, module, x, len(self.shape(node.args[0])) - 1,
                         module.in_features, "Linear")
            self.info[node.name] = _Info(len(out_shape) - 1,
                                         self.produce(name, module, module.out_features))
        elif isinstance(module, _CONVS):
            self.conv(node, name, module, x)
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            entries = []
            if module.affine:
                entries += [("weight", "norm"), ("bias", "norm")]
            if module.track_running_stats and module.running_mean is not None:
                entries += [("running_mean", "buffer"), ("running_var", "buffer")]
            self.per_channel(node, name, x, module.num_features, entries, type(module).__name__)
            self.note_normalized(node, module, x)
        elif isinstance(module, nn.Embedding):
            if module.max_norm is not None:
                self.refuse(node, f"node '{node.name}' (Embedding with max_norm) renormalizes "
                                  f"across channels")
                self.info[node.name] = _Info(len(out_shape) - 1, self.fresh_pinned(
                    module.embedding_dim, f"node '{node.name}' (Embedding with max_norm) "
                                          f"renormalizes across channels"))
                return
            self.info[node.name] = _Info(len(out_shape) - 1,
                                         self.produce(name, module, module.embedding_dim, 1))
        elif isinstance(module, _ACTIVATIONS):
            self.copy_of(node, x)
        elif isinstance(module, _POOLS):
            self.pool(node, x)
        elif isinstance(module, nn.Flatten):
            self.flatten(node, x, module.start_dim, module.end_dim)
        elif isinstance(module, nn.MultiheadAttention):
            self.refuse(node, f"node '{node.name}' (nn.MultiheadAttention): its embed_dim couples "
                              f"query, heads and output; heads are not pruned")
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            self.refuse(node, f"node '{node.name}' ({type(module).__name__}) normalizes across "
                              f"the channels")
        else:
            self.refuse(node, f"node '{node.name}' ({type(module).__name__}) is not known to act "
                              f"channel-wise")

    def note_normalized(self, node: fx.Node, norm: nn.Module, x: _Info | None) -> None:
        """Record the producer whose only use is this affine norm, along the norm's channels."""
        source = node.args[0] if node.args else None
        if not (norm.affine and isinstance(source, fx.Node) and source.op == "call_module"
                and len(source.users) == 1 and x is not None and x.axis == 1
                and len(x.vars) == norm.num_features):
            return
        producer = self.modules[str(source.target)]
        if isinstance(producer, nn.Linear) or (isinstance(producer, _CONVS)
                                               and producer.groups == 1):
            self.normalized.update(f"{source.target}.{t}" for t in ("weight", "bias")
                                   if getattr(producer, t, None) is not None)

    def conv(self, node: fx.Node, name: str, module: nn.Module, x: _Info | None) -> None:
        if module.groups == 1:
            self.consume(node, name, module, x, 1, module.in_channels, type(module).__name__)
            self.info[node.name] = _Info(1, self.produce(name, module, module.out_channels))
            return
        if module.groups == module.in_channels == module.out_channels:
            entries = [("weight", "norm")] + ([("bias", "norm")] if module.bias is not None
                                              else [])
            self.per_channel(node, name, x, module.out_channels, entries,
                             f"depthwise {type(module).__name__}")
            return
        reason = (f"node '{node.name}' ({type(module).__name__}, groups={module.groups}): channels "
                  f"must stay balanced across groups; not pruned")
        self.refuse(node, reason)
        self.info[node.name] = _Info(1, self.produce(name, module, module.out_channels))
        self.vars.pin(self.info[node.name].vars, reason)

    # -- functions and methods -------------------------------------------------------------
    def call(self, node: fx.Node) -> None:
        target = node.target
        args = node.args
        x = self.of(args[0]) if args else None
        if target in _UNARY_FUNCTIONS or target in _UNARY_METHODS:
            if any(self.is_tensor(a) for a in (*args[1:], *node.kwargs.values())):
                self.unknown(node)
            else:
                self.copy_of(node, x)
        elif target in _COUPLING:
            self.couple(node)
        elif target in _SCALAR_ONLY:
            if self.is_tensor(args[1] if len(args) > 1 else node.kwargs.get("other")):
                self.unknown(node)
            else:
                self.copy_of(node, x)
        elif target in _POOL_FUNCTIONS:
            self.pool(node, x)
        elif target in _CATS:
            self.cat(node)
        elif target in (torch.flatten, "flatten"):
            start = _arg(node, 1, "start_dim", 0)
            end = _arg(node, 2, "end_dim", -1)
            self.flatten(node, x, start, end)
        elif target in ("view", "reshape", torch.reshape):
            self.reshape(node, x)
        elif target in _REDUCTIONS:
            self.reduce(node, x)
        elif target in (torch.transpose, "transpose", torch.swapaxes, "swapaxes"):
            self.transpose(node, x)
        elif target in (torch.permute, "permute"):
            self.permute(node, x)
        elif target in (torch.unsqueeze, "unsqueeze", torch.squeeze, "squeeze"):
            self.squeeze(node, x)
        elif target in _SOFTMAX:
            dim = _arg(node, 1, "dim", None)
            ndim = len(self.shape(args[0]))
            if x is not None and (dim is None or dim % ndim == x.axis):
                self.refuse(node, f"node '{node.name}' ({_describe(node)}) mixes the channels")
            else:
                self.copy_of(node, x)
        elif target is operator.getitem:
            self.getitem(node)
        elif target in _METADATA_METHODS or (target is builtins.getattr
                                             and args[1] in ("shape", "dtype", "device", "ndim")):
            self.info[node.name] = None
        elif target is operator.setitem:
            self.refuse(node, f"node '{node.name}' writes into a tensor in place by index")
        else:
            self.unknown(node)

    def couple(self, node: fx.Node) -> None:
        operands = [a for a in (*node.args[:2], node.kwargs.get("other")) if a is not None]
        tensors = [a for a in operands if self.is_tensor(a)]
        if len(tensors) < 2:
            self.copy_of(node, self.of(tensors[0]) if tensors else None)
            return
        a, b = tensors[:2]
        ia, ib = self.of(a), self.of(b)
        if ia is None and ib is None:
            self.info[node.name] = None
            return
        out_ndim = len(self.shape(node))
        sa, sb = self.shape(a), self.shape(b)
        if ia is not None and ib is not None:
            ra, rb = len(sa) - ia.axis, len(sb) - ib.axis
            if ra == rb and len(ia.vars) == len(ib.vars):
                for u, v in zip(ia.vars, ib.vars):
                    self.vars.union(u, v)
                self.info[node.name] = _Info(out_ndim - ra, ia.vars)
                return
        self.refuse(node, f"node '{node.name}' ({_describe(node)}) combines channels with a "
                          f"tensor whose channels do not line up with them")

    def pool(self, node: fx.Node, x: _Info | None) -> None:
        if x is not None and not self.is_tensor(node):  # return_indices=True: a tuple
            self.refuse(node, f"node '{node.name}' ({_describe(node)}) returns indices")
        elif x is not None and x.axis != 1:
            self.refuse(node, f"node '{node.name}' ({_describe(node)}) pools over the dim that "
                              f"holds the channels")
        else:
            self.copy_of(node, x)

    def flatten(self, node: fx.Node, x: _Info | None, start: int, end: int) -> None:
        if x is None:
            self.info[node.name] = None
            return
        shape = self.shape(node.args[0])
        ndim = len(shape)
        start, end = start % ndim if ndim else 0, end % ndim if ndim else 0
        if x.axis < start:
            self.copy_of(node, x)
        elif x.axis > end:
            self.copy_of(node, x, x.axis - (end - start))
        else:
            inner = math.prod(shape[x.axis + 1:end + 1])
            total = math.prod(shape[start:end + 1])
            coords = [(i // inner) % shape[x.axis] for i in range(total)]
            self.info[node.name] = _Info(start, [x.vars[c] for c in coords])

    def reshape(self, node: fx.Node, x: _Info | None) -> None:
        if x is None:
            self.info[node.name] = None
            return
        requested = node.args[1:]
        if len(requested) == 1 and isinstance(requested[0], (tuple, list)):
            requested = tuple(requested[0])
        in_shape, out_shape = self.shape(node.args[0]), self.shape(node)
        if (len(requested) == 2 and requested[1] == -1 and len(in_shape) >= 2
                and tuple(out_shape) == (in_shape[0], math.prod(in_shape[1:])) and x.axis >= 1):
            self.flatten(node, x, 1, -1)
        else:
            self.refuse(node, f"node '{node.name}' ({_describe(node)} to "
                              f"{tuple(out_shape)}) reshapes the channels")

    def reduce(self, node: fx.Node, x: _Info | None) -> None:
        if x is None:
            self.info[node.name] = None
            return
        ndim = len(self.shape(node.args[0]))
        dims = _arg(node, 1, "dim", None)
        keepdim = _arg(node, 2, "keepdim", False)
        if dims is None:
            self.refuse(node, f"node '{node.name}' ({_describe(node)}) reduces over the channels")
            return
        dims = {d % ndim for d in ((dims,) if isinstance(dims, int) else dims)}
        if x.axis in dims:
            self.refuse(node, f"node '{node.name}' ({_describe(node)}) reduces over the channels")
            return
        self.copy_of(node, x, x.axis if keepdim else x.axis - sum(d < x.axis for d in dims))

    def transpose(self, node: fx.Node, x: _Info | None) -> None:
        if x is None:
            self.info[node.name] = None
            return
        ndim = len(self.shape(node.args[0]))
        d0, d1 = _arg(node, 1, "dim0", 0) % ndim, _arg(node, 2, "dim1", 1) % ndim
        axis = d1 if x.axis == d0 else d0 if x.axis == d1 else x.axis
        self.copy_of(node, x, axis)

    def squeeze(self, node: fx.Node, x: _Info | None) -> None:
        """``unsqueeze(dim)`` / ``squeeze(dim)``: the channel axis moves past the singleton."""
        if x is None:
            self.info[node.name] = None
            return
        dim = _arg(node, 1, "dim", None)
        in_ndim, out_ndim = len(self.shape(node.args[0])), len(self.shape(node))
        if not isinstance(dim, int):  # squeeze() of every singleton, or several dims at once
            self.refuse(node, f"node '{node.name}' ({_describe(node)}) without one int dim")
            return
        if out_ndim > in_ndim:
            self.copy_of(node, x, x.axis + (dim % out_ndim <= x.axis))
        elif out_ndim < in_ndim:
            self.copy_of(node, x, x.axis - (dim % in_ndim < x.axis))
        else:
            self.copy_of(node, x)

    def permute(self, node: fx.Node, x: _Info | None) -> None:
        if x is None:
            self.info[node.name] = None
            return
        dims = node.args[1:] or node.kwargs.get("dims")
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = dims[0]
        ndim = len(self.shape(node.args[0]))
        self.copy_of(node, x, [d % ndim for d in dims].index(x.axis))

    def cat(self, node: fx.Node) -> None:
        parts = list(_arg(node, 0, "tensors", ()))
        dim = _arg(node, 1, "dim", 0)
        infos = [self.of(p) for p in parts]
        if all(i is None for i in infos):
            self.info[node.name] = None
            return
        ndim = len(self.shape(node))
        dim %= ndim
        if any(i is not None and i.axis == dim for i in infos):
            joined: list[int] = []
            for part, info in zip(parts, infos):
                if info is None or info.axis != dim:
                    reason = f"node '{node.name}' (cat) joins them with untracked channels"
                    if info is not None:
                        self.vars.pin(info.vars, reason)
                    joined.extend(self.fresh_pinned(self.shape(part)[dim], reason))
                else:
                    joined.extend(info.vars)
            self.info[node.name] = _Info(dim, joined)
            return
        axes = {(i.axis, len(i.vars)) if i is not None else None for i in infos}
        if len(axes) == 1:
            first = infos[0]
            for info in infos[1:]:
                for u, v in zip(first.vars, info.vars):
                    self.vars.union(u, v)
            self.info[node.name] = _Info(first.axis, first.vars)
        else:
            self.refuse(node, f"node '{node.name}' (cat along dim {dim}) joins tensors whose "
                              f"channels do not line up")

    def getitem(self, node: fx.Node) -> None:
        base, index = node.args[0], node.args[1]
        info = self.info.get(base.name) if isinstance(base, fx.Node) else None
        if not self.is_tensor(base):
            if isinstance(info, _Info):  # a tensor's channels inside a tuple: not followed
                self.refuse(node, f"node '{node.name}' takes an item of a tuple holding channels")
            else:
                self.info[node.name] = (info[index] if isinstance(info, tuple)
                                        and isinstance(index, int) else None)
            return
        if info is None:
            self.info[node.name] = None
            return
        ndim = len(self.shape(base))
        items = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, fx.Node) and self.is_tensor(i) for i in items) or any(
                isinstance(i, (list, Tensor)) for i in items):
            self.refuse(node, f"node '{node.name}' indexes with a tensor")
            return
        if Ellipsis in items:
            at = items.index(Ellipsis)
            used = sum(i is not None for i in items) - 1
            items = items[:at] + (slice(None),) * (ndim - used) + items[at + 1:]
        in_dim, out_dim, axis = 0, 0, None
        for item in items:
            if item is None:
                out_dim += 1
                continue
            if in_dim == info.axis:
                if item != slice(None):
                    self.refuse(node, f"node '{node.name}' (indexing) selects channels")
                    return
                axis = out_dim
            if isinstance(item, slice):
                out_dim += 1
            in_dim += 1
        if axis is None:  # the channel axis is past the given items
            axis = out_dim + (info.axis - in_dim)
        self.copy_of(node, info, axis)


def _arg(node: fx.Node, position: int, name: str, default: Any) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


# --------------------------------------------------------------------------------------------
# Tracing and running the graph.
# --------------------------------------------------------------------------------------------


class _Recorder(fx.Interpreter):
    """Runs a graph and keeps every node's output (detached)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.values[n.name] = (result.detach() if isinstance(result, Tensor) else result)
        return result


def _as_tuple(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (
        example_inputs,)


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace(model)``, with a one-line error when the model cannot be traced."""
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types; say which model and why, in one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"channel_groups: torch.fx cannot trace {type(model).__name__}: "
                         f"{first}") from None


@torch.no_grad()
def record(gm: fx.GraphModule, example_inputs: Any) -> dict[str, Any]:
    """Every node's output on ``example_inputs`` (run as is: call on an eval-mode copy)."""
    recorder = _Recorder(gm)
    recorder.run(*_as_tuple(example_inputs))
    return recorder.values


def channel_groups(model: nn.Module, example_inputs: Any) -> ChannelGroups:
    """The coupled channel groups of ``model`` (see the module docstring).

    The model is traced with :func:`torch.fx.symbolic_trace` and run once on an eval-mode copy
    with ``example_inputs`` for the shapes (the model itself is not run or changed).

    Args:
        model: the model (its parameters are referenced by the result, not copied).
        example_inputs: a tensor or a tuple of positional inputs.

    Returns:
        The groups and what was left out (``print(groups)`` for a summary).

    Raises:
        ValueError: the model cannot be traced.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> groups = channel_groups(model, torch.randn(3, 4))
        >>> print(groups)
        ChannelGroups: 8 removable channels in 1 families; 1 left out
          8 x 5 penalizable elements: out 0.weight; bias 0.bias; in 2.weight
          left out: 2 channels of 2.weight: reaches the model output
        >>> [str(s) for s in groups.groups[0].slices]
        ['0.weight[0] (out)', '0.bias[0] (bias)', '2.weight[:, 0] (in)']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
    reference = copy.deepcopy(model).eval()
    gm = trace(reference)
    values = record(gm, example_inputs)
    return _analyse(model, gm, values)


def _analyse(model: nn.Module, gm: fx.GraphModule, values: dict[str, Any]) -> ChannelGroups:
    analysis = _Analysis(gm, values)
    analysis.run()
    uf = analysis.vars
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    # Tensors the forward uses directly, and tensors shared by two names, are left out.
    shared: dict[int, list[str]] = defaultdict(list)
    for name, p in model.named_parameters(remove_duplicate=False):
        shared[id(p)].append(name)
    tied = {n: names for names in shared.values() if len(names) > 1 for n in names}
    for v, slices in enumerate(uf.slices):
        for tensor, *_ in slices:
            if tensor in analysis.direct:
                uf.pin([v], f"{tensor} is used directly at node '{analysis.direct[tensor]}'")
            elif tensor in tied:
                others = ", ".join(n for n in tied[tensor] if n != tensor)
                uf.pin([v], f"{tensor} is tied to {others}")
    members: dict[int, list[int]] = defaultdict(list)
    for v in range(len(uf.parent)):
        members[uf.find(v)].append(v)
    groups: list[ChannelGroup] = []
    group_of: dict[int, int] = {}
    left: dict[tuple[str, str], int] = defaultdict(int)
    for root, vs in members.items():
        collected: dict[tuple[str, int, str], list[int]] = {}
        for v in vs:
            for tensor, dim, index, role in uf.slices[v]:
                collected.setdefault((tensor, dim, role), []).append(index)
        producers = [t for (t, _, role) in collected if role == "out"]
        if not producers:
            continue
        reasons = [r for v in vs for r in uf.reasons[v]]
        if reasons:
            left[(", ".join(dict.fromkeys(producers)), reasons[0])] += 1
            continue
        group_of[root] = len(groups)
        slices = tuple(Slice(t, d, tuple(sorted(set(ix))), role)
                       for (t, d, role), ix in collected.items())
        groups.append(ChannelGroup(len(groups), slices))
    node_groups = {}
    for name, info in analysis.info.items():
        if isinstance(info, _Info):
            node_groups[name] = (info.axis, [group_of.get(uf.find(v), -1) for v in info.vars])
    left_out = [(f"{count} channel{'s' if count > 1 else ''} of {what}", reason)
                for (what, reason), count in left.items()]
    return ChannelGroups(groups, left_out, tensors, node_groups,
                         frozenset(analysis.normalized))
