"""What a study is: data × model × training recipe × named variants × seeds, and its vocabulary.

A study is written as a dict — a TOML file (``regtorch run my_study.toml``) or a preset in
:mod:`regtorch.lab.presets`, both parsed by :func:`parse_study` — so a user's study and the presets
speak the same language. The schema (every key optional unless marked; unknown keys are errors)::

    name = "my-study"                      # required: letters, digits, '-', '_', '.'
    description = "one line for `regtorch list`"
    seeds = 5                              # default number of seeds (init seeds 0..seeds-1)
    data_seed = 0                          # draws the data, its split and the batch order

    [data]
    kind = "linear"                        # required: "linear" (synthetic), "digits" (sklearn)
    features = 200                         # linear: y = x·w + bias + noise, x ~ N(x_mean, x_std²)
    train = 50                             # examples (digits: train and val; test is the rest)
    val = 50
    test = 100
    weights = 0.01                         # a number (every feature), a list (one per feature), or
    nonzeros = 10                          #   with nonzeros: that many random features get ±weights
    bias = 0.1
    x_mean = 0.0
    x_std = 1.0
    noise_mean = 0.0
    noise_std = 0.01

    [model]
    kind = "mlp"                           # "linear" or "mlp"
    hidden = [64, 32]                      # mlp: hidden widths, ReLU after each
    dropout_after = [1]                    # hidden layers (1-based) followed by the dropout;
                                           #   default: every hidden layer
    norm = "none"                          # "batch": BatchNorm1d after each hidden Linear
    init = "default"                       # "normal": weights ~ N(0, 1), biases 0 (d2l's init)

    [train]
    loss = "mse"                           # "mse", "half-mse" (d2l's ½(ŷ−y)²), "cross-entropy"
    optimizer = "adam"                     # "sgd", "adam", "adamw"
    lr = 0.005
    momentum = 0.0                         # sgd only
    batch_size = 32                        # 0: full batch
    epochs = 20
    dtype = "float32"                      # or "float64"
    schedule = "constant"                  # or {kind = "exponential", rate = 0.995, min_lr = 1e-6}
                                           #   or {kind = "plateau", patience = 200, factor = 0.1}
                                           #   (per = "step" by default, or "epoch")

    [[variants]]                           # required, at least one; the first is the baseline
    name = "none"                          # required, unique
    penalty = "l2"                         # "l1", "l2", "elasticnet", "group", "blog"
    strength = 3.0                         # λ ≥ 0, or a list of λ: the one with the lowest mean
                                           #   final validation loss is kept (test never chooses)
    apply = "gradient"                     # or "prox": proximal step (exact zeros)
    params = "weights"                     # what penalty and weight_decay act on: "weights"
                                           #   (regtorch.WEIGHTS), "all", a glob ("*weight*")
    l1_ratio = 0.5                         # elasticnet: l1 = ρ·λ, l2 = (1−ρ)·λ
    groups = "rows"                        # group: "rows" or "columns"
    weight_decay = 0.0                     # the optimizer's own weight_decay on `params`
    dropout = 0.0                          # rate of the model's dropout layers
    schedule = "constant"                  # overrides [train] schedule for this variant

Penalties: ``l2`` is ``L2(λ)`` = λ/2·Σw²; ``l1`` is ``L1(λ)`` = λ·Σ|w|; ``elasticnet`` is
``ElasticNet(ρλ, (1−ρ)λ)``; ``group`` is ``GroupLasso(λ, groups)``; ``blog`` is the popular blog
class λ·Σ‖W‖₂ (un-squared, one norm per tensor) over every parameter named ``*weight*``:
``GroupLasso(λ, groups="tensor", scale="none")``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = [
    "DataSpec",
    "ModelSpec",
    "Recipe",
    "Schedule",
    "Study",
    "StudyError",
    "Variant",
    "parse_study",
]

PENALTIES = ("l1", "l2", "elasticnet", "group", "blog")
LOSSES = ("mse", "half-mse", "cross-entropy")
OPTIMIZERS = ("sgd", "adam", "adamw")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StudyError(ValueError):
    """A study that cannot run; the message names the key and the value."""


@dataclass(frozen=True)
class DataSpec:
    kind: str
    features: int = 1
    train: int = 100
    val: int = 100
    test: int = 100
    weights: float | tuple[float, ...] = 1.0
    nonzeros: int | None = None
    bias: float = 0.0
    x_mean: float = 0.0
    x_std: float = 1.0
    noise_mean: float = 0.0
    noise_std: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "linear"
    hidden: tuple[int, ...] = ()
    dropout_after: tuple[int, ...] | None = None
    norm: str = "none"
    init: str = "default"


@dataclass(frozen=True)
class Schedule:
    kind: str = "constant"
    rate: float = 1.0
    min_lr: float = 0.0
    patience: int = 10
    factor: float = 0.1
    per: str = "step"

    @property
    def reacts_to_loss(self) -> bool:
        """A schedule driven by each member's own loss cannot be shared by stacked members."""
        return self.kind == "plateau"


@dataclass(frozen=True)
class Recipe:
    loss: str = "mse"
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    batch_size: int = 0
    epochs: int = 10
    dtype: str = "float32"
    schedule: Schedule = field(default_factory=Schedule)


@dataclass(frozen=True)
class Variant:
    name: str
    penalty: str | None = None
    strengths: tuple[float, ...] = (0.0,)
    apply: str = "gradient"
    params: str = "weights"
    l1_ratio: float = 0.5
    groups: str = "rows"
    weight_decay: float = 0.0
    dropout: float = 0.0
    schedule: Schedule | None = None

    @property
    def tuned(self) -> bool:
        """True when λ is chosen on validation from several candidates."""
        return len(self.strengths) > 1


@dataclass(frozen=True)
class Study:
    name: str
    data: DataSpec
    model: ModelSpec
    train: Recipe
    variants: tuple[Variant, ...]
    description: str = ""
    seeds: int = 5
    data_seed: int = 0

    @property
    def classification(self) -> bool:
        return self.train.loss == "cross-entropy"

    def schedule_of(self, variant: Variant) -> Schedule:
        return variant.schedule or self.train.schedule

    def with_overrides(self, *, seeds: int | None = None, epochs: int | None = None) -> Study:
        """The same study with another number of seeds or epochs (validated like the file)."""
        study = self
        if seeds is not None:
            study = replace(study, seeds=_positive_int(seeds, "--seeds"))
        if epochs is not None:
            study = replace(study, train=replace(study.train,
                                                 epochs=_positive_int(epochs, "--epochs")))
        return study

    def to_dict(self) -> dict[str, Any]:
        """The study in the file vocabulary (what ``config.json`` holds; parses back)."""
        out = asdict(self)
        out["train"]["schedule"] = _schedule_dict(self.train.schedule)
        out["variants"] = [_variant_dict(v) for v in self.variants]
        out["model"]["hidden"] = list(self.model.hidden)
        if self.model.dropout_after is None:
            del out["model"]["dropout_after"]
        else:
            out["model"]["dropout_after"] = list(self.model.dropout_after)
        if self.data.kind == "digits":  # the other fields do not apply (the parser rejects them)
            out["data"] = {"kind": "digits", "train": self.data.train, "val": self.data.val}
        elif isinstance(self.data.weights, tuple):
            out["data"]["weights"] = list(self.data.weights)
        if self.data.kind != "digits" and self.data.nonzeros is None:
            del out["data"]["nonzeros"]
        return out


def _schedule_dict(schedule: Schedule) -> dict[str, Any] | str:
    if schedule.kind == "constant":
        return "constant"
    keep = {"exponential": ("rate", "min_lr", "per"), "plateau": ("patience", "factor", "per")}
    return {"kind": schedule.kind, **{k: getattr(schedule, k) for k in keep[schedule.kind]}}


def _variant_dict(variant: Variant) -> dict[str, Any]:
    out: dict[str, Any] = {"name": variant.name}
    if variant.penalty is not None:
        out["penalty"] = variant.penalty
        out["strength"] = (list(variant.strengths) if variant.tuned else variant.strengths[0])
        out["apply"] = variant.apply
        if variant.penalty == "elasticnet":
            out["l1_ratio"] = variant.l1_ratio
        if variant.penalty == "group":
            out["groups"] = variant.groups
    if variant.penalty is not None or variant.weight_decay:
        out["params"] = variant.params
    if variant.weight_decay:
        out["weight_decay"] = variant.weight_decay
    if variant.dropout:
        out["dropout"] = variant.dropout
    if variant.schedule is not None:
        out["schedule"] = _schedule_dict(variant.schedule)
    return out


# -- parsing -----------------------------------------------------------------------------------
def parse_study(spec: Mapping[str, Any], source: str = "study") -> Study:
    """Validate a study written in the file vocabulary (see the module docstring).

    Raises:
        StudyError: naming the offending key (``variants[2].strength``) and its value.
    """
    top = _Table(spec, source)
    name = top.get("name", str, required=True)
    if not _NAME.match(name):
        raise StudyError(f"{source}: name {name!r} must be letters, digits, '-', '_' or '.'")
    description = top.get("description", str, "")
    seeds = _positive_int(top.get("seeds", int, 5), f"{source}: seeds")
    data_seed = top.get("data_seed", int, 0)
    data = _data(_Table(top.get("data", Mapping, required=True), f"{source}: data"))
    model = _model(_Table(top.get("model", Mapping, {}), f"{source}: model"), data)
    recipe = _recipe(_Table(top.get("train", Mapping, {}), f"{source}: train"))
    raw_variants = top.get("variants", list, required=True)
    if not raw_variants:
        raise StudyError(f"{source}: variants is empty (give at least one [[variants]])")
    variants = tuple(_variant(_Table(v, f"{source}: variants[{i}]", mapping_of="variant"),
                              recipe)
                     for i, v in enumerate(raw_variants))
    names = [v.name for v in variants]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise StudyError(f"{source}: variants[{i}].name {n!r} is used twice")
    top.done()
    for i, v in enumerate(variants):
        if model.kind == "linear" and v.dropout:
            raise StudyError(f"{source}: variants[{i}].dropout: variant {v.name!r} sets "
                             f"{v.dropout!r}, but a linear model has no hidden layer to drop")
    if data.kind == "digits" and recipe.loss != "cross-entropy":
        raise StudyError(f"{source}: data kind 'digits' is classification: train.loss must be "
                         f"'cross-entropy', not {recipe.loss!r}")
    if data.kind == "linear" and recipe.loss == "cross-entropy":
        raise StudyError(f"{source}: data kind 'linear' is regression: train.loss "
                         f"'cross-entropy' does not apply")
    return Study(name=name, description=description, data=data, model=model, train=recipe,
                 variants=variants, seeds=seeds, data_seed=data_seed)


class _Table:
    """Typed access to one table of the spec that reports unknown keys."""

    def __init__(self, raw: Any, where: str, mapping_of: str = "table") -> None:
        if not isinstance(raw, Mapping):
            raise StudyError(f"{where}: expected a {mapping_of} (key = value pairs), "
                             f"got {raw!r}")
        self.raw, self.where, self.used = raw, where, set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *,
            required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.raw:
            if required:
                raise StudyError(f"{self.where}: missing required key {key!r}")
            return default
        value = self.raw[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            raise StudyError(f"{self.where}.{key}: expected {names}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise StudyError(f"{self.where}.{key}: must be finite, got {value!r}")
        return value

    def number(self, key: str, default: float, *, minimum: float | None = None,
               below: float | None = None) -> float:
        value = self.get(key, float, default)
        if minimum is not None and value < minimum:
            raise StudyError(f"{self.where}.{key}: must be >= {minimum}, got {value!r}")
        if below is not None and not value < below:
            raise StudyError(f"{self.where}.{key}: must be < {below}, got {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None, *,
               required: bool = False) -> str:
        value = self.get(key, str, default, required=required)
        if value not in choices:
            raise StudyError(f"{self.where}.{key}: unknown value {value!r} (expected one of "
                             f"{', '.join(choices)})")
        return value

    def done(self) -> None:
        unknown = [k for k in self.raw if k not in self.used]
        if unknown:
            raise StudyError(f"{self.where}: unknown key {unknown[0]!r}")


_KIND_NAMES = {Mapping: "a table", list: "a list", str: "a string", int: "an integer",
               float: "a number", bool: "true or false"}


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StudyError(f"{where}: must be a positive integer, got {value!r}")
    return value


def _count(table: _Table, key: str, default: int, minimum: int = 1) -> int:
    value = table.get(key, int, default)
    if value < minimum:
        raise StudyError(f"{table.where}.{key}: must be >= {minimum}, got {value!r}")
    return value


def _data(t: _Table) -> DataSpec:
    kind = t.choice("kind", ("linear", "digits"), required=True)
    if kind == "digits":
        spec = DataSpec(kind, features=64, train=_count(t, "train", 300),
                        val=_count(t, "val", 300), test=0)
        t.done()
        if spec.train + spec.val >= 1797:
            raise StudyError(f"{t.where}: train + val = {spec.train + spec.val} leaves no test "
                             f"set (digits has 1797 images)")
        return spec
    features = _count(t, "features", 1)
    nonzeros = t.get("nonzeros", int)
    if nonzeros is not None and not 1 <= nonzeros <= features:
        raise StudyError(f"{t.where}.nonzeros: must be in 1..{features}, got {nonzeros!r}")
    weights = t.get("weights", (float, list), 1.0)
    if isinstance(weights, list):
        if nonzeros is not None:
            raise StudyError(f"{t.where}.weights: give a number with nonzeros, not a list")
        if len(weights) != features or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
            raise StudyError(f"{t.where}.weights: expected {features} numbers (one per "
                             f"feature), got {weights!r}")
        weights = tuple(float(w) for w in weights)
    spec = DataSpec(kind, features=features, train=_count(t, "train", 100),
                    val=_count(t, "val", 100), test=_count(t, "test", 100), weights=weights,
                    nonzeros=nonzeros, bias=t.number("bias", 0.0),
                    x_mean=t.number("x_mean", 0.0), x_std=t.number("x_std", 1.0, minimum=0.0),
                    noise_mean=t.number("noise_mean", 0.0),
                    noise_std=t.number("noise_std", 1.0, minimum=0.0))
    t.done()
    return spec


def _model(t: _Table, data: DataSpec) -> ModelSpec:
    kind = t.choice("kind", ("linear", "mlp"), "linear")
    hidden = t.get("hidden", list, [])
    if kind == "linear" and hidden:
        raise StudyError(f"{t.where}.hidden: a linear model has no hidden layers")
    if kind == "mlp" and not hidden:
        raise StudyError(f"{t.where}.hidden: an mlp needs at least one hidden width")
    if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise StudyError(f"{t.where}.hidden: expected positive integers, got {hidden!r}")
    after = t.get("dropout_after", list)
    if after is not None and not all(isinstance(i, int) and not isinstance(i, bool)
                                     and 1 <= i <= len(hidden) for i in after):
        raise StudyError(f"{t.where}.dropout_after: expected hidden layer numbers in "
                         f"1..{len(hidden)}, got {after!r}")
    spec = ModelSpec(kind, tuple(hidden), None if after is None else tuple(sorted(set(after))),
                     norm=t.choice("norm", ("none", "batch"), "none"),
                     init=t.choice("init", ("default", "normal"), "default"))
    if spec.norm == "batch" and kind == "linear":
        raise StudyError(f"{t.where}.norm: 'batch' needs an mlp (it follows hidden layers)")
    t.done()
    return spec


def _schedule(raw: Any, where: str) -> Schedule:
    if raw == "constant":
        return Schedule()
    if isinstance(raw, str):
        raise StudyError(f"{where}: unknown schedule {raw!r} (expected 'constant' or a table "
                         f"with kind = 'exponential' or 'plateau')")
    t = _Table(raw, where)
    kind = t.choice("kind", ("constant", "exponential", "plateau"), required=True)
    per = t.choice("per", ("step", "epoch"), "step")
    if kind == "exponential":
        schedule = Schedule(kind, rate=t.number("rate", 0.99, minimum=0.0),
                            min_lr=t.number("min_lr", 0.0, minimum=0.0), per=per)
        if not 0 < schedule.rate <= 1:
            raise StudyError(f"{where}.rate: must be in (0, 1], got {schedule.rate!r}")
    elif kind == "plateau":
        schedule = Schedule(kind, patience=_count(t, "patience", 10, minimum=0),
                            factor=t.number("factor", 0.1, minimum=0.0, below=1.0), per=per)
    else:
        schedule = Schedule()
    t.done()
    return schedule


def _recipe(t: _Table) -> Recipe:
    recipe = Recipe(loss=t.choice("loss", LOSSES, "mse"),
                    optimizer=t.choice("optimizer", OPTIMIZERS, "sgd"),
                    lr=t.number("lr", 0.01, minimum=0.0),
                    momentum=t.number("momentum", 0.0, minimum=0.0, below=1.0),
                    batch_size=_count(t, "batch_size", 0, minimum=0),
                    epochs=_count(t, "epochs", 10),
                    dtype=t.choice("dtype", ("float32", "float64"), "float32"),
                    schedule=_schedule(t.get("schedule", (str, Mapping), "constant"),
                                       f"{t.where}.schedule"))
    if recipe.lr <= 0:
        raise StudyError(f"{t.where}.lr: must be > 0, got {recipe.lr!r}")
    if recipe.momentum and recipe.optimizer != "sgd":
        raise StudyError(f"{t.where}.momentum: only for optimizer 'sgd', not "
                         f"{recipe.optimizer!r}")
    t.done()
    return recipe


def _variant(t: _Table, recipe: Recipe) -> Variant:
    name = t.get("name", str, required=True)
    if not _NAME.match(name):
        raise StudyError(f"{t.where}.name: {name!r} must be letters, digits, '-', '_' or '.'")
    penalty = t.get("penalty", str)
    if penalty is not None and penalty not in PENALTIES:
        raise StudyError(f"{t.where}.penalty: unknown penalty {penalty!r} (expected one of "
                         f"{', '.join(PENALTIES)})")
    raw = t.get("strength", (float, list))
    if raw is None:
        if penalty is not None:
            raise StudyError(f"{t.where}: penalty {penalty!r} needs a strength")
        strengths: tuple[float, ...] = (0.0,)
    else:
        if penalty is None:
            raise StudyError(f"{t.where}.strength: given without a penalty")
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            raise StudyError(f"{t.where}.strength: the list is empty")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise StudyError(f"{t.where}.strength: must be finite and >= 0, got {value!r}")
        strengths = tuple(float(v) for v in values)
        if len(set(strengths)) != len(strengths):
            raise StudyError(f"{t.where}.strength: repeated value in {values!r}")
    apply = t.choice("apply", ("gradient", "prox"), "gradient")
    if apply == "prox" and penalty not in ("l1", "l2", "elasticnet", "group"):
        raise StudyError(f"{t.where}.apply: 'prox' needs penalty l1, l2, elasticnet or group, "
                         f"not {penalty!r}")
    default_params = "*weight*" if penalty == "blog" else "weights"
    params = t.get("params", str, default_params)
    if not params:
        raise StudyError(f"{t.where}.params: empty (give 'weights', 'all' or a name glob)")
    weight_decay = t.number("weight_decay", 0.0, minimum=0.0)
    if weight_decay and recipe.optimizer not in ("sgd", "adam", "adamw"):
        raise StudyError(f"{t.where}.weight_decay: not for optimizer {recipe.optimizer!r}")
    schedule = t.get("schedule", (str, Mapping))
    variant = Variant(name=name, penalty=penalty, strengths=strengths, apply=apply,
                      params=params, l1_ratio=t.number("l1_ratio", 0.5, minimum=0.0),
                      groups=t.choice("groups", ("rows", "columns"), "rows"),
                      weight_decay=weight_decay,
                      dropout=t.number("dropout", 0.0, minimum=0.0, below=1.0),
                      schedule=None if schedule is None else _schedule(schedule,
                                                                       f"{t.where}.schedule"))
    if variant.l1_ratio > 1:
        raise StudyError(f"{t.where}.l1_ratio: must be in [0, 1], got {variant.l1_ratio!r}")
    t.done()
    return variant
