"""What a study is: data × model × training recipe × named variants × seeds, and its vocabulary.

A study is written as a dict — a TOML file (``regtorch run my_study.toml``) or a preset in
:mod:`regtorch.lab.study.presets`, both parsed by
:func:`~regtorch.lab.study.parse.parse_study` — so a user's study and the presets speak the same
language. The schema (every key optional unless marked; unknown keys are errors)::

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

from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "PENALTIES",
    "DataSpec",
    "ModelSpec",
    "Recipe",
    "Schedule",
    "Study",
    "StudyError",
    "Variant",
    "positive_int",
]

PENALTIES = ("l1", "l2", "elasticnet", "group", "blog")
LOSSES = ("mse", "half-mse", "cross-entropy")
OPTIMIZERS = ("sgd", "adam", "adamw")


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
            study = replace(study, seeds=positive_int(seeds, "--seeds"))
        if epochs is not None:
            study = replace(study, train=replace(study.train,
                                                 epochs=positive_int(epochs, "--epochs")))
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


def positive_int(value: Any, where: str) -> int:
    """``value`` if it is a positive integer, else a :class:`StudyError` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StudyError(f"{where}: must be a positive integer, got {value!r}")
    return value
