r"""``compact``: a smaller model without the exactly-zero channels, checked to compute the same
function; ``carry_optimizer``: the optimizer state carried across the cut.

A coupled channel group (:func:`~regtorch.channel_groups`) emits a value that does not depend on
the input when every path from the model's inputs to its consumers is cut (``_Plan.live``): by a
producer row that is exactly zero (the producer outputs its bias), or by a BatchNorm/InstanceNorm
weight γ that is exactly zero (the norm outputs ``0·x̂ + β = β`` exactly in eval and training mode,
assuming finite ``x̂``: a constant channel in training mode has variance 0 and ``x̂ = 0/√ε``), and
everything else on its way acts channel-wise (activations, pooling, additions of channels of the
same group). With γ = β = 0 (``ChannelLasso(roles=("norm",))``, network slimming) the value is
exactly 0 whatever the producer rows hold. :func:`compact` reads that value
from a run on the example inputs and decides, per consumer (a ``Linear``/``Conv`` whose input
columns the channel feeds):

* the value is exactly 0, or the consumer's columns for it are exactly 0: nothing to fold;
* a ``Linear`` consumer: the value (constant over the batch) is folded into its bias,
  :math:`b ← b + W_{:,j}\,v_j`, exactly;
* a ``Conv`` consumer without zero padding (``padding=0``, or a ``reflect``/``replicate``/
  ``circular`` mode) and a value constant over the positions: :math:`b ← b + \sum_k W_{:,j,k}\,v_j`;
* otherwise — a zero-padded ``Conv`` (the constant is not constant at the borders, where the padding
  is 0), a value that varies over positions for a ``Conv``, a module called at several places —
  the channel is kept, and :class:`Compaction` says which and why.

A consumer without a bias gets one when something is folded into it. Removed with the channel:
the producer rows and bias entries, the BatchNorm entries and running statistics, the depthwise
entries, the consumers' input columns. Layer attributes follow (``in/out_features``,
``in/out_channels``, depthwise ``groups``, ``num_features``, ``embedding_dim``). A producer keeps
at least one channel.

The values are those of eval mode (BatchNorm running statistics). A channel that emits exactly 0
(the default :class:`~regtorch.ChannelLasso` zeroes a BatchNorm's γ and β, or the rows and bias
of a producer no norm follows)
is removed exactly in training mode too; a folded nonzero constant through a BatchNorm is exact in
eval mode only (in training mode the batch statistics of a constant channel give its shift).
"""

from __future__ import annotations

import copy
import logging
import operator
import weakref
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from regtorch.structure.graph import (
    _CONVS,
    ChannelGroups,
    _analyse,
    _as_tuple,
    record,
    trace,
)

__all__ = ["FLOAT32_TOLERANCE", "FLOAT64_TOLERANCE", "Compaction", "carry_optimizer", "compact",
           "compaction_of"]

logger = logging.getLogger("regtorch")

# Outputs of the compact model equal the original's within these (rtol = atol): removing zero
# channels changes only the summation order of the remaining terms, and a folded bias the rounding
# of one addition.
FLOAT32_TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-10

_RECORDS: weakref.WeakKeyDictionary[nn.Module, Compaction] = weakref.WeakKeyDictionary()


@dataclass
class Compaction:
    """What :func:`compact` did (:func:`compaction_of` returns it for a compact model).

    Attributes:
        groups: the channel groups of the original model (their structure only: the record holds
            no tensor of the original, so ``groups.tensor()`` and ``zero_groups()`` do not work
            on it).
        removed: indices of the removed groups.
        kept: ``(group index, reason)`` of exactly-zero groups that were kept.
        folded: one line per fold (``"group 3: 0.25 into fc2.bias"``).
        kept_indices: per original tensor name, the kept indices per dim (only sliced tensors).
        created: names of parameters created for a fold (a consumer bias that was ``None``).
        max_difference: the largest absolute output difference on the example inputs.
        parameters_before: parameter count of the original.
        parameters_after: parameter count of the compact model.
    """

    groups: ChannelGroups
    removed: list[int] = field(default_factory=list)
    kept: list[tuple[int, str]] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)
    kept_indices: dict[str, dict[int, Tensor]] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    max_difference: float = 0.0
    parameters_before: int = 0
    parameters_after: int = 0

    def __str__(self) -> str:
        lines = [f"Compaction: removed {len(self.removed)} of {len(self.groups)} channel groups; "
                 f"parameters {self.parameters_before} -> {self.parameters_after}; max output "
                 f"difference {self.max_difference:.3g}"]
        lines += [f"  folded: {line}" for line in self.folded]
        lines += [f"  kept group {index}: {reason}" for index, reason in self.kept]
        return "\n".join(lines)


def compaction_of(compact_model: nn.Module) -> Compaction:
    """The :class:`Compaction` record of a model returned by :func:`compact`."""
    try:
        return _RECORDS[compact_model]
    except KeyError:
        raise ValueError(f"{type(compact_model).__name__} was not returned by "
                         f"regtorch.compact") from None


def _outputs(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _outputs(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _outputs(v)]
    return []


def _tolerance(model: nn.Module) -> float:
    dtypes = {p.dtype for p in model.parameters()}
    return FLOAT64_TOLERANCE if dtypes == {torch.float64} else FLOAT32_TOLERANCE


class _Plan:
    """Which groups go, and what is folded where."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, values: dict[str, Any],
                 groups: ChannelGroups) -> None:
        self.model = model
        self.gm = gm
        self.values = values
        self.groups = groups
        self.modules = dict(model.named_modules())
        self.calls: dict[str, list[fx.Node]] = defaultdict(list)
        for node in gm.graph.nodes:
            if node.op == "call_module":
                self.calls[str(node.target)].append(node)
        self.deltas: dict[str, Tensor] = {}
        # The record outlives the cut: its groups keep the structure, not the old tensors.
        self.record = Compaction(ChannelGroups(groups.groups, groups.left_out))

    def consumers(self, index: int) -> Iterator[tuple[fx.Node, nn.Module, list[int]]]:
        """(call node, module, input positions) of every consumer of group ``index``."""
        names = {s.tensor.rsplit(".", 1)[0] for s in self.groups.groups[index].of("in")}
        for name in names:
            for node in self.calls[name]:
                _, gids = self.groups._node_groups.get(node.args[0].name, (None, []))
                positions = [j for j, g in enumerate(gids) if g == index]
                if positions:
                    yield node, self.modules[name], positions

    def fold(self, index: int) -> tuple[str | None, list[tuple[str, Tensor, str]]]:
        """Plan the folds of a zero group: ``(why it must be kept or None, the folds)``."""
        planned: list[tuple[str, Tensor, str]] = []
        for node, module, positions in self.consumers(index):
            source = node.args[0].name
            axis = self.groups._node_groups[source][0]
            value = self.values[source]
            weight = module.weight.detach()
            delta = torch.zeros(weight.shape[0], dtype=torch.float64)
            for j in positions:
                column = weight.select(1, j).to(torch.float64)
                v = value.select(axis, j)
                if not column.any() or not v.any():
                    continue
                constant = v.reshape(-1)[0]
                if isinstance(module, nn.Linear):
                    if not bool((v == constant).all()):
                        return f"its output at node '{source}' varies across the batch", []
                    delta += column * constant.double()
                    continue
                if not bool((v == constant).all()):
                    return (f"its output at node '{source}' varies over positions before the "
                            f"convolution at node '{node.name}'"), []
                padded = (module.padding == "same" if isinstance(module.padding, str)
                          else any(p != 0 for p in module.padding))
                if module.padding_mode == "zeros" and padded:
                    return (f"it emits the constant {constant.item():.4g} into the zero-padded "
                            f"convolution at node '{node.name}' (not constant at the borders)"), []
                delta += column.reshape(column.shape[0], -1).sum(1) * constant.double()
            if delta.any():
                if len(self.calls[str(node.target)]) > 1:
                    return (f"its constant would be folded into {node.target}, which is called "
                            f"at several nodes"), []
                planned.append((str(node.target), delta, f"node '{source}'"))
        return None, planned

    @torch.no_grad()
    def live(self) -> dict[str, list[bool]]:
        """Per traced node with channels, per position: may it depend on the model's inputs?

        ``False`` is proved, never guessed: a ``Linear``/``Conv``/``Embedding`` output channel
        whose weight row is exactly zero (it emits its bias); a BatchNorm/InstanceNorm output
        channel with weight (γ) exactly zero, in eval and training mode (``γ·x̂ + β = β``:
        ``0·x̂ = 0`` exactly for a finite ``x̂``, and ``x̂`` is finite for finite inputs —
        a constant channel has variance 0 and ``x̂ = 0/√ε``); a depthwise channel with zero
        entries or a constant input; and otherwise a position whose group is constant in every
        traced input of the node (the analysis proves channels of one group depend only on
        channels of that group). An untracked tensor input makes every position live.
        """
        live: dict[str, list[bool]] = {}
        node_groups = self.groups._node_groups
        # An in-place operation with a second tensor operand (``out += identity``, ``add_``,
        # ``out=``) can make a tensor, and its aliases, depend on that operand after their nodes
        # were computed: its groups are taken as live everywhere (never guessed).
        forced: set[int] = set()
        for node in self.gm.graph.nodes:
            tensors = [a for a in node.all_input_nodes
                       if isinstance(self.values.get(a.name), Tensor)]
            if len(tensors) > 1 and _mutates(node):
                for a in (*tensors, node):
                    forced.update(node_groups.get(a.name, (None, []))[1])
        for node in self.gm.graph.nodes:
            entry = node_groups.get(node.name)
            if entry is None:
                continue
            gids = entry[1]
            module = self.modules.get(str(node.target)) if node.op == "call_module" else None
            rows = None
            depthwise = False
            if isinstance(module, (nn.Linear, *_CONVS)):
                rows = module.weight.detach().flatten(1).ne(0).any(1).tolist()
                depthwise = (isinstance(module, _CONVS) and module.groups > 1
                             and module.groups == module.in_channels == module.out_channels)
            elif isinstance(module, nn.Embedding):
                rows = module.weight.detach().ne(0).any(0).tolist()
            if rows is not None and not depthwise:
                live[node.name] = ([bool(r) or g in forced for r, g in zip(rows, gids)]
                                   if len(rows) == len(gids) else [True] * len(gids))
                continue
            inputs_live: set[int] = set()
            untracked = False
            for arg in node.all_input_nodes:
                if not isinstance(self.values.get(arg.name), Tensor):
                    continue
                if arg.name not in live:
                    untracked = True
                    break
                inputs_live.update(g for g, on in zip(node_groups[arg.name][1], live[arg.name])
                                   if on)
            out = [untracked or g < 0 or g in inputs_live for g in gids]
            gate = None
            if depthwise:
                gate = rows
            elif (isinstance(module, nn.modules.batchnorm._NormBase) and module.affine
                  and module.weight is not None):
                gate = module.weight.detach().ne(0).tolist()
            if gate is not None:
                out = ([a and bool(b) for a, b in zip(out, gate)] if len(gate) == len(out)
                       else [True] * len(out))
            live[node.name] = [on or g in forced for on, g in zip(out, gids)]
        return live

    def input_independent(self) -> set[int]:
        """Groups whose value at every consumer provably does not depend on the model's inputs
        (:meth:`live`): the groups that :meth:`fold` may fold or drop."""
        live = self.live()
        independent = set()
        for group in self.groups.groups:
            exits = list(self.consumers(group.index))
            if exits and all(
                    not any(live.get(node.args[0].name, [True] * (max(positions) + 1))[j]
                            for j in positions)
                    for node, _, positions in exits):
                independent.add(group.index)
        return independent

    def decide(self) -> set[int]:
        zero = set(self.groups.zero_groups(("out",))) | self.input_independent()
        removed: set[int] = set()
        folds: dict[int, list[tuple[str, Tensor, str]]] = {}
        for index in sorted(zero):
            reason, folds[index] = self.fold(index)
            if reason is None:
                removed.add(index)
            else:
                self.record.kept.append((index, reason))
        # A producer keeps at least one channel.
        for name, length in self._producer_lengths().items():
            mine = [g.index for g in self.groups.groups
                    if any(s.tensor == name and s.role == "out" for s in g.slices)]
            if mine and all(i in removed for i in mine) and len(mine) == length:
                keep = min(mine)
                removed.discard(keep)
                self.record.kept.append((keep, f"removing it would leave {name} no channel"))
        # Only the removed groups' constants are folded (a kept channel still adds its own).
        for index in sorted(removed):
            for name, delta, where in folds[index]:
                self.deltas[name] = self.deltas.get(name, 0) + delta
                self.record.folded.append(f"group {index}: the constant it emits at {where} "
                                          f"into {name}.bias")
        self.record.removed = sorted(removed)
        return removed

    def _producer_lengths(self) -> dict[str, int]:
        lengths = {}
        for group in self.groups.groups:
            for s in group.of("out"):
                lengths[s.tensor] = self.groups.tensor(s.tensor).shape[s.dim]
        return lengths


_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv,
                      operator.ifloordiv, operator.imod, operator.ipow, operator.imatmul,
                      operator.iand, operator.ior, operator.ixor, operator.ilshift,
                      operator.irshift}


def _mutates(node: fx.Node) -> bool:
    """May ``node`` write into one of its inputs (in-place op, ``out=``, ``inplace=True``)?"""
    if node.kwargs.get("out") is not None or node.kwargs.get("inplace"):
        return True
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("_")
    if node.op == "call_function":
        if node.target in _INPLACE_OPERATORS:
            return True
        name = getattr(node.target, "__name__", "")
        return name.endswith("_") and not name.startswith("_")
    return False


def _removals(groups: ChannelGroups, removed: set[int]) -> dict[str, dict[int, set[int]]]:
    out: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for index in removed:
        for s in groups.groups[index].slices:
            out[s.tensor][s.dim].update(s.indices)
    return out


def _set_tensor(model: nn.Module, name: str, value: Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if attr in owner._parameters:
        old = owner._parameters[attr]
        owner._parameters[attr] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        owner._buffers[attr] = value


def _update_attributes(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups == module.in_channels == module.out_channels
        module.out_channels = module.weight.shape[0]
        if depthwise:
            module.groups = module.in_channels = module.out_channels
        else:
            module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        for tensor in (module.weight, module.running_mean):
            if tensor is not None:
                module.num_features = tensor.shape[0]
                break
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = module.weight.shape[1]


def _build(model: nn.Module, plan: _Plan, removed: set[int]) -> nn.Module:
    new = copy.deepcopy(model)
    record = plan.record
    removals = _removals(plan.groups, removed)
    with torch.no_grad():
        for name, delta in plan.deltas.items():
            module = new.get_submodule(name)
            delta = delta.to(module.weight)
            if module.bias is None:
                module.bias = nn.Parameter(delta.clone(),
                                           requires_grad=module.weight.requires_grad)
                record.created.append(f"{name}.bias")
            else:
                module.bias.add_(delta)
        touched = set()
        tensors = dict(new.named_parameters())
        tensors.update(new.named_buffers())
        for name, per_dim in removals.items():
            kept_per_dim = {}
            value = tensors[name].detach()
            for dim, drop in sorted(per_dim.items()):
                keep = torch.tensor([i for i in range(value.shape[dim]) if i not in drop],
                                    dtype=torch.long, device=value.device)
                kept_per_dim[dim] = keep
                value = value.index_select(dim, keep)
            record.kept_indices[name] = kept_per_dim
            _set_tensor(new, name, value.clone())
            touched.add(name.rpartition(".")[0])
        # A folded bias of a consumer whose rows were sliced follows its weight's rows.
        for name in plan.deltas:
            bias_name = f"{name}.bias"
            rows = record.kept_indices.get(f"{name}.weight", {}).get(0)
            if rows is not None and bias_name not in record.kept_indices:
                module = new.get_submodule(name)
                _set_tensor(new, bias_name, module.bias.detach().index_select(0, rows).clone())
                record.kept_indices[bias_name] = {0: rows}
        for name in touched:
            _update_attributes(new.get_submodule(name))
    return new


@torch.no_grad()
def _run_eval(model: nn.Module, example_inputs: Any) -> Any:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return model(*_as_tuple(example_inputs))
    finally:
        for m, mode in modes:
            m.train(mode)


def _first_difference(plan: _Plan, new: nn.Module, example_inputs: Any, removed: set[int],
                      tolerance: float) -> str:
    """Name the first node whose kept positions differ between the original and ``new``."""
    values = record(trace(copy.deepcopy(new).eval()), example_inputs)
    for node in plan.gm.graph.nodes:
        old = plan.values.get(node.name)
        now = values.get(node.name)
        if not isinstance(old, Tensor) or not isinstance(now, Tensor):
            continue
        axis, gids = plan.groups._node_groups.get(node.name, (None, []))
        if axis is not None:
            keep = torch.tensor([j for j, g in enumerate(gids) if g not in removed],
                                dtype=torch.long, device=old.device)
            old = old.index_select(axis, keep)
        if old.shape != now.shape or not torch.allclose(now, old, rtol=tolerance,
                                                        atol=tolerance):
            return node.name
    return "output"


def compact(model: nn.Module, example_inputs: Any, *,
            tolerance: float | None = None) -> nn.Module:
    """A new, smaller model without the coupled channel groups whose output provably does not
    depend on the input and is exactly 0 or folded into its consumers (module docstring).

    The original is not changed. The result is a deep copy of ``model`` (same class, same
    ``forward``) with sliced parameters and buffers and updated layer attributes, in the same
    training mode. It is checked: its outputs on ``example_inputs`` (both in eval mode) equal the
    original's within ``rtol = atol =`` :data:`FLOAT64_TOLERANCE` (1e-10) for a float64 model,
    :data:`FLOAT32_TOLERANCE` (1e-5) otherwise. :func:`compaction_of` returns what was removed,
    folded and kept.

    Args:
        model: the trained model.
        example_inputs: a tensor or a tuple of positional inputs (the batch should be
            representative: the check runs on it).
        tolerance: ``rtol = atol`` of the check (``None``: by the parameters' dtype, as above).

    Returns:
        The compact model.

    Raises:
        ValueError: the model cannot be traced, or the compact model's outputs differ (the message
            names the first node whose kept channels differ).

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     model[0].weight[:5] = 0  # channels 0..4 emit relu(bias): folded into model[2]
        >>> small = compact(model, torch.randn(16, 4))
        >>> small[0]
        Linear(in_features=4, out_features=3, bias=True)
        >>> small[2]
        Linear(in_features=3, out_features=2, bias=True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
    reference = copy.deepcopy(model).eval()
    gm = trace(reference)
    values = record(gm, example_inputs)
    groups = _analyse(model, gm, values)
    plan = _Plan(model, gm, values, groups)
    removed = plan.decide()
    new = _build(model, plan, removed)
    if tolerance is None:
        tolerance = _tolerance(model)
    elif not tolerance >= 0:
        raise ValueError(f"Invalid tolerance value: {tolerance} (must be >= 0)")
    expected = _outputs(_run_eval(reference, example_inputs))
    got = _outputs(_run_eval(new, example_inputs))
    worst = 0.0
    for a, b in zip(got, expected):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=tolerance, atol=tolerance):
            node = _first_difference(plan, new, example_inputs, removed, tolerance)
            raise ValueError(f"compact: the compact model's outputs differ from the original's "
                             f"(tolerance {tolerance:g}); first differing node: '{node}'")
        worst = max(worst, float((a - b).abs().max()) if a.numel() else 0.0)
    record_ = plan.record
    record_.max_difference = worst
    record_.parameters_before = sum(p.numel() for p in model.parameters())
    record_.parameters_after = sum(p.numel() for p in new.parameters())
    _RECORDS[new] = record_
    logger.info("regtorch: %s", record_)
    return new


def carry_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module,
                    compact_model: nn.Module) -> torch.optim.Optimizer:
    """A new optimizer of the same class over ``compact_model``'s parameters, with the state of
    ``optimizer`` (over ``model``'s) carried across the cut.

    Every state tensor shaped like its parameter (SGD's ``momentum_buffer``, Adam's ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``, Adagrad's ``sum``, RMSprop's ``square_avg``...) is sliced
    like the parameter; other state (``step`` counts, 0-d tensors) is copied. Param groups keep
    their hyperparameters (learning rates included) and their order; a bias created by a fold
    joins the group of its layer's weight, with no state. ``optimizer`` and ``model`` are not
    changed and the new optimizer references none of their tensors.

    Args:
        optimizer: a ``torch.optim`` optimizer over (some of) ``model``'s parameters (for a
            :class:`~regtorch.Proximal`, pass its ``.optimizer`` and wrap the result again).
        model: the original model.
        compact_model: ``compact(model, ...)``.

    Raises:
        ValueError: ``compact_model`` does not come from :func:`compact`, an optimized tensor is not
            a parameter of ``model``, or a state tensor has a shape the carry does not know.
    """
    if hasattr(optimizer, "regularizer") and isinstance(getattr(optimizer, "optimizer", None),
                                                        torch.optim.Optimizer):
        raise TypeError("carry_optimizer: pass the optimizer inside the Proximal "
                        "(prox.optimizer) and wrap the result in a new Proximal over the compact "
                        "model's groups")
    record_ = compaction_of(compact_model)
    names = {id(p): n for n, p in model.named_parameters()}
    new_params = dict(compact_model.named_parameters())
    groups = []
    mapping: list[tuple[Tensor, Tensor, str]] = []
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            name = names.get(id(p))
            if name is None:
                raise ValueError(f"carry_optimizer: the optimizer updates a tensor of shape "
                                 f"{tuple(p.shape)} that is not a parameter of the model")
            params.append(new_params[name])
            mapping.append((p, new_params[name], name))
            owner = name.rpartition(".")[0]
            if name.endswith("weight") and f"{owner}.bias" in record_.created:
                params.append(new_params[f"{owner}.bias"])
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
    new = type(optimizer)(groups, **optimizer.defaults)
    for old_p, new_p, name in mapping:
        state = optimizer.state.get(old_p)
        if not state:
            continue
        kept = record_.kept_indices.get(name, {})
        carried = {}
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == old_p.shape and value.ndim:
                value = value.detach()
                for dim, index in sorted(kept.items()):
                    value = value.index_select(dim, index.to(value.device))
                carried[key] = value.clone()
            elif isinstance(value, Tensor) and value.numel() <= 1:
                carried[key] = value.clone()
            elif isinstance(value, Tensor):
                raise ValueError(f"carry_optimizer: state {key!r} of {name} has shape "
                                 f"{tuple(value.shape)}, neither the parameter's "
                                 f"{tuple(old_p.shape)} nor a scalar")
            else:
                carried[key] = copy.deepcopy(value)
        new.state[new_p] = carried
    return new

