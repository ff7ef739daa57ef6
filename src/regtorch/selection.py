"""Parameter selection: which parameters of a model get which penalty.

A :class:`Selector` is a predicate over the trainable parameters of a model. The default,
:data:`WEIGHTS`, picks every trainable parameter with ``ndim >= 2`` that does not belong to a
normalization layer and whose name does not end in ``bias``, minus the position tables (below) and
what the model (or any submodule) declares in ``no_weight_decay()`` — the timm convention, done
once for every mode of regtorch. :func:`select` lists what a selector picks.

Position tables are exempt by name, as timm's ``no_weight_decay()`` lists and torchvision's
training recipe (``--transformer-embedding-decay``) and the Hugging Face Trainer treat them: a
parameter any of whose dotted name components is in :data:`POSITION_NAMES` — position embeddings
(``pos_embed``, ``pos_embedding``, ``absolute_pos_embed``), class and distillation tokens
(``cls_token``, ``class_token``, ``dist_token``) and relative position bias tables
(``relative_position_bias_table``, T5's ``relative_attention_bias``). Token embedding tables
(``nn.Embedding`` of a vocabulary, BERT's ``position_embeddings``, GPT-2's ``wpe``) stay weights,
as the Hugging Face Trainer and nanoGPT decay them. ``weights(position_tables=True)`` is
:data:`WEIGHTS` without this exemption (:data:`POSITION_TABLES` selects the tables alone).

Selectors come from specs: a name glob (``"encoder.*"``), a module type (``nn.Linear``), a module
instance (``model.head``), a predicate ``f(name, param) -> bool``, :data:`WEIGHTS`, :data:`ALL`,
and combine with ``&``, ``|`` and ``~`` (``WEIGHTS & "encoder.*"`` = the weights under ``encoder``).

The same selectors pick *modules* (for activity regularization, :mod:`regtorch.activity`) from
:func:`collect_modules`: a name glob matches module names, a type or ``inside(...)`` a module of
that type or that very module (not its submodules), a predicate gets ``(name, module)``;
:data:`WEIGHTS` matches no module.

Names are those of the unwrapped model: wrapping in ``DistributedDataParallel``/``DataParallel``
(``module.``) or ``torch.compile`` (``_orig_mod.``) does not change them. Frozen parameters
(``requires_grad=False``) are never selected; a tensor shared by two modules (tied weights) counts
once, under its first name.

Parametrizations (``torch.nn.utils.parametrize``, e.g. ``weight_norm``, ``spectral_norm``): the
largest ``original`` of a parametrized tensor (the last one on a tie) stands for it
(spectral_norm's ``original``, weight_norm's direction ``original1``) and is judged as that tensor:
by its name too, so ``no_weight_decay()`` and name globs may say ``"head.weight"``; any other
original (weight_norm's magnitude ``original0``, shape ``[out, 1]``) is a per-unit gain, excluded
like a normalization layer's weight. (For L2, penalizing weight_norm's ``original0`` instead equals
penalizing ‖W‖²_F exactly: select it by name, ``"*.original0"``.)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "ALL",
    "NORM_LAYERS",
    "POSITION_NAMES",
    "POSITION_TABLES",
    "WEIGHTS",
    "Binding",
    "ParamInfo",
    "Selector",
    "as_selector",
    "assign",
    "bind",
    "collect",
    "collect_modules",
    "inside",
    "is_rules",
    "named",
    "parse_rules",
    "rule_labels",
    "select",
    "stores_in_out",
    "unwrap",
    "weights",
    "where",
]

# Normalization layers whose weights are gains, not weights. ``nn.RMSNorm`` is recent: looked up
# by name so that older torch versions import fine.
NORM_LAYERS: tuple[type[nn.Module], ...] = tuple(
    cls for cls in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    ) if cls is not None
)

POSITION_NAMES: frozenset[str] = frozenset({
    "pos_embed",  # timm ViT, DeiT, BEiT, CaiT, XCiT ... (no_weight_decay())
    "pos_embedding",  # torchvision ViT (encoder.pos_embedding), lucidrains' vit-pytorch
    "absolute_pos_embed",  # timm and Microsoft Swin (no_weight_decay())
    "cls_token",  # timm ViT family, Hugging Face ViT/DeiT/BEiT
    "class_token",  # torchvision ViT
    "dist_token",  # timm DeiT distilled (no_weight_decay())
    "relative_position_bias_table",  # Swin, MaxViT, BEiT (timm, torchvision, Hugging Face)
    "relative_attention_bias",  # T5 (an nn.Embedding: relative_attention_bias.weight)
})
"""Names of position tables that :data:`WEIGHTS` exempts (matched against every dotted component
of a parameter's name)."""

# Layers that store a weight as (in, out), the transpose of nn.Linear's (out, in): Hugging Face's
# GPT-2-style Conv1D. Matched by qualified class name, so transformers is never imported.
_IN_OUT_LAYERS = {("transformers.pytorch_utils", "Conv1D"),
                  ("transformers.modeling_utils", "Conv1D")}


class ParamInfo(NamedTuple):
    """One trainable parameter as selectors see it (or one module: see :func:`collect_modules`).

    Attributes:
        name: full name in the unwrapped model (``"encoder.0.weight"``).
        alias: the name of the tensor it stands for (``"head.weight"`` for
            ``"head.parametrizations.weight.original"``); ``name`` for an ordinary parameter.
        param: the parameter (for module selection: the module).
        module: the layer that owns it (for a parametrization's original: the parametrized layer).
        tensor_name: the layer attribute it is, or stands for (``"weight"``, ``"bias"``).
        ancestors: the modules from the root down to ``module``.
        whole: False for a parametrization original that does not stand for the tensor (a gain
            such as weight_norm's magnitude).
        declared_no_decay: listed by a ``no_weight_decay()`` of the model or of a submodule.
    """

    name: str
    alias: str
    param: Tensor
    module: nn.Module
    tensor_name: str
    ancestors: tuple[nn.Module, ...]
    whole: bool
    declared_no_decay: bool


class Selector:
    """A named predicate over :class:`ParamInfo`; combine with ``&``, ``|``, ``~``.

    Example:
        >>> WEIGHTS & "encoder.*"
        (WEIGHTS & named('encoder.*'))
    """

    __slots__ = ("_description", "_predicate")

    def __init__(self, predicate: Callable[[ParamInfo], bool], description: str) -> None:
        self._predicate = predicate
        self._description = description

    def __call__(self, info: ParamInfo) -> bool:
        return bool(self._predicate(info))

    def __and__(self, other: Any) -> Selector:
        other = as_selector(other)
        return Selector(lambda i: self(i) and other(i), f"({self} & {other})")

    def __rand__(self, other: Any) -> Selector:
        return as_selector(other) & self

    def __or__(self, other: Any) -> Selector:
        other = as_selector(other)
        return Selector(lambda i: self(i) or other(i), f"({self} | {other})")

    def __ror__(self, other: Any) -> Selector:
        return as_selector(other) | self

    def __invert__(self) -> Selector:
        return Selector(lambda i: not self(i), f"~{self}")

    def __repr__(self) -> str:
        return self._description


def _why_not_weight(info: ParamInfo, position_tables: bool = False) -> str | None:
    """Why :data:`WEIGHTS` leaves a trainable parameter out, as the plural noun of its kind
    (``None``: it is a weight)."""
    if not isinstance(info.param, Tensor):  # a module (activity selection) is never a weight
        return "modules"
    if not info.whole:
        return "parametrization gains"
    if isinstance(info.module, NORM_LAYERS):
        return "normalization-layer parameters"
    if info.name.endswith("bias") or info.tensor_name.endswith("bias"):
        return "biases"
    if info.param.ndim < 2:
        return "tensors with ndim < 2"
    if info.declared_no_decay:
        return "names declared in no_weight_decay()"
    if not position_tables and _is_position_table(info):
        return "position tables"
    return None


def _is_position_table(info: ParamInfo) -> bool:
    return any(part in POSITION_NAMES for name in {info.name, info.alias}
               for part in name.split("."))


def weights(*, position_tables: bool = False) -> Selector:
    """The weights selector: trainable parameters with ``ndim >= 2``, not in a normalization
    layer, not named ``*bias``, not declared in ``no_weight_decay()`` and — unless
    ``position_tables`` — not a position table (:data:`POSITION_NAMES`).
    ``weights()`` is :data:`WEIGHTS`.

    Example:
        >>> weights(position_tables=True)
        weights(position_tables=True)
    """
    if not isinstance(position_tables, bool):
        raise TypeError(f"Invalid position_tables value: {position_tables!r} (expected a bool)")
    if not position_tables:
        return WEIGHTS
    return Selector(lambda i: _why_not_weight(i, True) is None, "weights(position_tables=True)")


WEIGHTS = Selector(lambda i: _why_not_weight(i) is None, "WEIGHTS")
"""Trainable parameters with ``ndim >= 2``, not in a normalization layer, not named ``*bias``, not
declared in ``no_weight_decay()``, not a position table (:data:`POSITION_NAMES`); see the module
docstring for parametrizations. Matches no module."""

POSITION_TABLES = Selector(lambda i: isinstance(i.param, Tensor) and _is_position_table(i),
                           "POSITION_TABLES")
"""Trainable parameters with a component of :data:`POSITION_NAMES` in their name (any ndim)."""


def stores_in_out(module: nn.Module) -> bool:
    """Whether ``module`` stores its ``weight`` as ``(in, out)``, the transpose of
    ``nn.Linear``'s ``(out, in)`` (Hugging Face's ``Conv1D``, in GPT-2 and its relatives)."""
    return any((cls.__module__, cls.__qualname__) in _IN_OUT_LAYERS
               for cls in type(module).__mro__)


ALL = Selector(lambda info: True, "ALL")
"""Every trainable parameter (what ``torch.optim``'s ``weight_decay`` decays)."""


def named(*patterns: str) -> Selector:
    """Parameters whose unwrapped name matches any of the globs (``fnmatch``, case-sensitive);
    a parametrization's original also answers to the name of the tensor it stands for."""
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"Invalid name pattern: {pattern!r} (expected a glob string)")
    return Selector(lambda i: any(fnmatch.fnmatchcase(i.name, p) or fnmatch.fnmatchcase(i.alias, p)
                                  for p in patterns),
                    f"named({', '.join(map(repr, patterns))})")


def inside(*targets: type[nn.Module] | nn.Module) -> Selector:
    """Parameters of modules of the given types or of the given module instances, submodules
    included (``inside(nn.LayerNorm)``, ``inside(model.encoder)``); in module selection, the
    modules of those types or those instances themselves."""
    types = tuple(t for t in targets if isinstance(t, type))
    instances = tuple(t for t in targets if isinstance(t, nn.Module))
    bad = [t for t in targets if not (isinstance(t, nn.Module)
                                      or (isinstance(t, type) and issubclass(t, nn.Module)))]
    if bad:
        raise TypeError(f"Invalid module selector: {bad[0]!r} (expected an nn.Module type or "
                        f"instance)")

    def predicate(info: ParamInfo) -> bool:
        return any(isinstance(m, types) or any(m is t for t in instances)
                   for m in info.ancestors)

    names = [t.__name__ if isinstance(t, type) else type(t).__name__ + "(...)" for t in targets]
    return Selector(predicate, f"inside({', '.join(names)})")


def where(predicate: Callable[[str, Tensor], bool]) -> Selector:
    """Parameters for which ``predicate(name, param)`` is true; in module selection,
    ``predicate(name, module)`` gets the module."""
    if not callable(predicate):
        raise TypeError(f"Invalid predicate: {predicate!r} (expected a callable)")
    label = getattr(predicate, "__name__", type(predicate).__name__)
    return Selector(lambda i: predicate(i.name, i.param), f"where({label})")


def as_selector(spec: Any) -> Selector:
    """Turn a selector spec into a :class:`Selector` (see the module docstring)."""
    if isinstance(spec, Selector):
        return spec
    if isinstance(spec, str):
        return named(spec)
    if isinstance(spec, nn.Module) or (isinstance(spec, type) and issubclass(spec, nn.Module)):
        return inside(spec)
    if isinstance(spec, tuple) and spec:
        selectors = [as_selector(s) for s in spec]
        combined = selectors[0]
        for s in selectors[1:]:
            combined = combined | s
        return combined
    if callable(spec) and not isinstance(spec, type):
        return where(spec)
    raise TypeError(f"Invalid selector: {spec!r} (expected a name glob, an nn.Module type or "
                    f"instance, a predicate (name, param) -> bool, or a regtorch Selector)")


# --------------------------------------------------------------------------------------------
# Collecting a model's parameters and assigning them to rules.
# --------------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``DataParallel``/``DistributedDataParallel`` and ``torch.compile``."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _declared_no_decay(module: nn.Module, prefix: str) -> set[str]:
    declared = getattr(module, "no_weight_decay", None)
    if not callable(declared):
        return set()
    return {prefix + name for name in declared()}


def _walk(module: nn.Module, prefix: str,
          ancestors: tuple[nn.Module, ...]) -> Iterator[tuple[str, nn.Module, tuple]]:
    ancestors = (*ancestors, module)
    yield prefix, module, ancestors
    for child_name, child in module.named_children():
        yield from _walk(child, f"{prefix}{child_name}.", ancestors)


def _stand_in(originals: nn.Module) -> Tensor:
    """The original that stands for a parametrized tensor: the largest, the last on a tie
    (weight_norm's direction ``original1``). Decided without running the parametrization:
    spectral_norm's forward would advance its power iteration."""
    tensors = list(originals.parameters(recurse=False))
    return max(reversed(tensors), key=lambda t: t.numel())


def collect(model: nn.Module) -> list[ParamInfo]:
    """Every trainable parameter of ``model`` once, in ``named_parameters()`` order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
    root = unwrap(model)
    walked = list(_walk(root, "", ()))
    no_decay: set[str] = set()
    for prefix, module, _ in walked:
        no_decay |= _declared_no_decay(module, prefix)
    infos: list[ParamInfo] = []
    seen: set[int] = set()
    for prefix, module, ancestors in walked:
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if not param.requires_grad:
                continue
            name = prefix + pname
            owner, tensor_name, alias, whole = module, pname, name, True
            if isinstance(module, parametrize.ParametrizationList):
                # prefix = "<owner>.parametrizations.<tensor>.", ancestors end with
                # (owner, owner.parametrizations, the ParametrizationList).
                owner, tensor_name = ancestors[-3], prefix.split(".")[-2]
                alias = ".".join([*prefix.split(".")[:-3], tensor_name])
                whole = param is _stand_in(module)
            declared = any(fnmatch.fnmatchcase(n, pattern) for n in {name, alias}
                           for pattern in no_decay)
            infos.append(ParamInfo(name, alias, param, owner, tensor_name, ancestors, whole,
                                   declared))
    return infos


def select(model: nn.Module, selector: Any = None) -> list[tuple[str, Tensor]]:
    """What a selector picks: ``(name, parameter)`` of every trainable parameter it matches.

    Names are those of the unwrapped model (no ``module.`` or ``_orig_mod.`` prefix), in
    ``named_parameters()`` order; a tied tensor appears once, under its first name; frozen
    parameters never appear. An empty list is not an error here (a :class:`~regtorch.Regularizer`
    rule that matches nothing is).

    Args:
        model: the model (``DataParallel``/``DistributedDataParallel`` and ``torch.compile``
            wrappers looked through).
        selector: a selector spec — a name glob, a module type or instance, a predicate
            ``f(name, param) -> bool``, a :class:`Selector` — or ``None`` for :data:`WEIGHTS`.

    Returns:
        A list of ``(name, parameter)`` pairs.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 1))
        >>> [name for name, _ in select(model)]
        ['0.weight', '2.weight']
        >>> [name for name, _ in select(model, WEIGHTS & "2.*")]
        ['2.weight']
        >>> [name for name, _ in select(model, nn.LayerNorm)]
        ['1.weight', '1.bias']
    """
    chosen = WEIGHTS if selector is None else as_selector(selector)
    return [(info.name, info.param) for info in collect(model) if chosen(info)]


def bound_tensor(name: str, parameters: Mapping[str, Tensor]) -> Tensor:
    """The tensor that ``parameters`` (an explicit name → tensor mapping) holds for the model's
    parameter ``name``, under that name or with a ``module.``/``_orig_mod.`` prefix."""
    for key in (name, "module." + name, "_orig_mod." + name):
        if key in parameters:
            return parameters[key]
    raise ValueError(f"parameters= has no tensor for the parameter {name!r} (given: "
                     f"{', '.join(list(parameters)[:8])}{', ...' if len(parameters) > 8 else ''})")


def collect_modules(model: nn.Module) -> list[ParamInfo]:
    """Every module of ``model`` once, as records the selectors accept, in ``named_modules()``
    order: the unwrapped root first (name ``""``), a module shared by two parents once, under
    its first name.

    Each record has ``name = alias =`` the module's name, ``param = module =`` the module,
    ``tensor_name = ""``, ``ancestors = (module,)`` (so a type or instance selector matches that
    module only, not its submodules), ``whole = True``, ``declared_no_decay = False``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        >>> [(i.name, type(i.module).__name__) for i in collect_modules(model)]
        [('', 'Sequential'), ('0', 'Linear'), ('1', 'ReLU')]
        >>> [i.name for i in collect_modules(model) if as_selector(nn.ReLU)(i)]
        ['1']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
    return [ParamInfo(name, name, module, module, "", (module,), True, False)
            for name, module in unwrap(model).named_modules()]


def parse_rules(rules: Any, accept: Callable[[Any], bool], what: str) -> list[tuple[Selector, Any]]:
    """Normalize a dict or a list of ``(selector, value)`` pairs; every value must pass
    ``accept`` (``what`` names what it should be, for the error)."""
    if isinstance(rules, Mapping):
        pairs = list(rules.items())
    elif is_rules(rules):
        pairs = list(rules)
    else:
        raise TypeError(f"Invalid rules: {rules!r} (expected a dict or a list of "
                        f"(selector, {what}) pairs)")
    parsed = []
    for spec, value in pairs:
        if not accept(value):
            raise TypeError(f"Invalid rule {spec!r}: {value!r} (expected {what})")
        parsed.append((as_selector(spec), value))
    return parsed


class Binding(NamedTuple):
    """A rule whose value is not ``None``, with its label and the parameters it claimed."""

    label: str
    selector: Selector
    value: Any
    infos: list[ParamInfo]


def bind(model: nn.Module, spec: Any, kind: type, what: str) -> tuple[list[ParamInfo],
                                                                    list[Binding]]:
    """Collect ``model``'s trainable parameters and give them to rules, first match wins.

    ``spec`` is a single ``kind`` object (applied to :data:`WEIGHTS`) or rules whose values are
    ``kind`` objects or ``None`` (``what`` names them in errors). Returns every trainable
    parameter and the rules with a value, in order; raises ``ValueError`` for empty rules and as
    :func:`assign` for a rule that matches nothing.
    """
    if isinstance(spec, kind):
        rules = [(WEIGHTS, spec)]
    else:
        rules = parse_rules(spec, lambda v: v is None or isinstance(v, kind), what)
        if not rules:  # it would bind nothing, silently
            raise ValueError(f"Invalid rules: {spec!r} (no rule: give at least one (selector, "
                             f"{what}) pair, or a single one to apply to WEIGHTS)")
    infos = collect(model)
    claimed = assign(infos, rules)
    bound = [Binding(label, selector, value, got)
             for (selector, value), got, label in zip(rules, claimed, rule_labels(rules))
             if value is not None]
    return infos, bound


def rule_labels(rules: Sequence[tuple[Selector, Any]]) -> list[str]:
    """How tables and errors name each rule: its selector's ``repr``, prefixed with the rule's
    index when two rules have the same selector."""
    labels = [repr(selector) for selector, _ in rules]
    return [f"{index}:{label}" if labels.count(label) > 1 else label
            for index, label in enumerate(labels)]


def is_rules(obj: Any) -> bool:
    """Whether ``obj`` is rules (a dict, or a list/tuple of ``(selector, value)`` pairs) rather
    than a single selector spec."""
    return isinstance(obj, Mapping) or (isinstance(obj, (list, tuple)) and all(
        isinstance(r, tuple) and len(r) == 2 for r in obj))


def assign(infos: Sequence[ParamInfo], rules: Sequence[tuple[Selector, Any]], *,
           require_match: bool = True, what: str = "trainable parameter") -> list[list[ParamInfo]]:
    """Give every parameter (or module) to the first rule whose selector matches it.

    Returns one list of parameters per rule. Unless ``require_match`` is false, raises
    ``ValueError`` for a rule left with none, naming it and some available names (``what``
    says what the records are, for that message: ``"module"`` for :func:`collect_modules`).
    """
    claimed: list[list[ParamInfo]] = [[] for _ in rules]
    for info in infos:
        for index, (selector, _) in enumerate(rules):
            if selector(info):
                claimed[index].append(info)
                break
    taken = {id(i.param) for got in claimed for i in got}
    for (selector, value), got in zip(rules, claimed):
        if not got and require_match:
            # The root module's name is "": show it as ''.
            sample = ", ".join(i.name or repr(i.name) for i in infos[:8]) or "none"
            more = f", ... ({len(infos)} in all)" if len(infos) > 8 else ""
            raise ValueError(f"Rule {selector!r} -> {value!r} matches no {what} "
                             f"(none, or only ones claimed by earlier rules); "
                             f"{what}s: {sample}{more}"
                             f"{_exclusions(selector, infos, taken)}")
    return claimed


def _exclusions(selector: Selector, infos: Sequence[ParamInfo], taken: set[int]) -> str:
    """For a rule built on the weights selector that matched nothing: the unclaimed parameters
    that selector left out, by reason (normalization-layer parameters, biases, ...)."""
    text = repr(selector)
    if "WEIGHTS" not in text and "weights(" not in text:
        return ""
    reasons: dict[str, list[str]] = {}
    for info in infos:
        if id(info.param) not in taken and isinstance(info.param, Tensor):
            reason = _why_not_weight(info)
            if reason is not None:
                reasons.setdefault(reason, []).append(info.name)
    if not reasons:
        return ""
    parts = [f"{reason} ({len(names)}: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
             for reason, names in reasons.items()]
    return "; WEIGHTS leaves out " + ", ".join(parts)
