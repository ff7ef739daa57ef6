"""What a study is: data × model × training recipe × named variants × seeds, and its vocabulary.

A study is written as a dict — a TOML file (``regtorch run my_study.toml``) or a preset in
:mod:`regtorch.lab.study.presets`, both parsed by
:func:`~regtorch.lab.study.parse.parse_study` — so a user's study and the presets speak the same
language. The schema: every key with its default, except the keys marked ``required`` and those
whose comment starts with ``e.g.`` (no default: the value is an example); unknown keys are
errors::

    name = "my-study"                      # required: letters, digits, '-', '_', '.'
    description = ""                       # one line for `regtorch list`
    seeds = 5                              # number of seeds (init seeds 0..seeds-1)
    data_seed = 0                          # draws the data, its split and the batch order

    [data]
    kind = "linear"                        # required: "linear" (synthetic), "digits" (sklearn)
    features = 1                           # linear: y = x·w + bias + noise, x ~ N(x_mean, x_std²)
    train = 100                            # examples (digits: train and val, 300 each; test is
    val = 100                              #   the rest of the 1797)
    test = 100
    weights = 1.0                          # a number (every feature), a list (one per feature), or
    nonzeros = 10                          # e.g.: that many random features get ±weights (none:
                                           #   every feature gets weights)
    bias = 0.0
    x_mean = 0.0
    x_std = 1.0
    noise_mean = 0.0
    noise_std = 1.0

    [data]                                 # or the user's data (docs/lab-data.md):
    kind = "csv"                           # required: "csv", "npz", "python" or "sklearn"
    path = "houses.csv"                    # required (csv, npz): relative to the study file
    target = "price"                       # required (csv): a column, or a list (multi-output)
    features = ["area", "district"]        # e.g. (csv): none gives every other column
    categorical = []                       # csv: one-hot besides the non-numeric columns
    split = "fold"                         # e.g. (csv): a column of train / val / test (none:
                                           #   the fractions below)
    factory = "mydata.py:make"             # required (python): returns (X, y) or {"train": ...}
    kwargs = {}                            # python: passed to the factory
    name = "diabetes"                      # required (sklearn): diabetes, breast_cancer, wine,
                                           #   iris, digits
    images = false                         # sklearn digits: true gives [N, 1, 8, 8]
    task = "classification"                # e.g. (csv, npz, python): none infers it from the
                                           #   target
    standardize = true                     # by the train split (csv, sklearn; npz, python: false)
    standardize_target = false             # regression targets, by the train split
    val = 0.2                              # fractions of all rows held out, from data_seed
    test = 0.2                             #   (stratified for classification)
    missing = "error"                      # or "drop" the rows with a missing value

    [model]
    kind = "linear"                        # "linear", "mlp" or "cnn"
    hidden = [64, 32]                      # e.g. (mlp: required): hidden widths, ReLU after each
    dropout_after = [1]                    # e.g.: hidden layers (1-based) followed by the dropout;
                                           #   none: every hidden layer
    norm = "none"                          # "batch": BatchNorm1d after each hidden Linear
    init = "default"                       # "normal": weights ~ N(0, 1), biases 0 (d2l's init)
    channels = [16, 32]                    # e.g. (cnn: required): conv blocks Conv2d →
                                           #   [BatchNorm2d] → ReLU → pool, then the head
                                           #   (hidden widths, then the outputs)
    kernel = 3
    padding = 1                            # e.g.: none gives kernel // 2
    pool = "max"                           # "max", "avg" or "none", of pool_size
    pool_size = 2
    residual = false                       # cnn: a residual block after each conv block
                                           #   (needs an odd kernel and padding kernel // 2)

    [train]
    loss = "mse"                           # "mse", "half-mse" (d2l's ½(ŷ−y)²), "cross-entropy"
    optimizer = "sgd"                      # "sgd", "adam", "adamw"
    lr = 0.01
    momentum = 0.0                         # sgd only
    batch_size = 0                         # 0: full batch
    epochs = 10
    dtype = "float32"                      # or "float64"
    schedule = "constant"                  # or {kind = "exponential", rate = 0.99, min_lr = 0.0}
                                           #   or {kind = "plateau", patience = 10, factor = 0.1}
                                           #   (per = "step" by default, or "epoch")

    [[variants]]                           # required, at least one; the first is the baseline
    name = "none"                          # required, unique
    penalty = "l2"                         # e.g.: "l1", "l2", "elasticnet", "group", "blog",
                                           #   "channels"; none: no penalty
    strength = 3.0                         # e.g. (required with a penalty): λ ≥ 0, or a list of λ:
                                           #   the one with the lowest mean final validation
                                           #   loss is kept (test never chooses)
    apply = "gradient"                     # or "prox": proximal step (exact zeros)
    params = "weights"                     # what penalty and weight_decay act on: "weights"
                                           #   (regtorch.WEIGHTS), "all", a glob ("*weight*")
    l1_ratio = 0.5                         # elasticnet: l1 = ρ·λ, l2 = (1−ρ)·λ
    groups = "rows"                        # group: "rows" or "columns"
    weight_decay = 0.0                     # the optimizer's own weight_decay on `params`
    dropout = 0.0                          # rate of the model's dropout layers
    schedule = "constant"                  # e.g.: overrides [train] schedule for this variant
    early_stopping = {patience = 10, min_delta = 0.0}
                                           # stop a member whose validation data loss has not
                                           #   improved (by more than min_delta) for `patience`
                                           #   epochs, and keep its best epoch's weights
                                           #   (regtorch.EarlyStopping); absent: no stopping

    [model]                                # the user's own model instead of linear / mlp:
    kind = "python"                        # required here
    factory = "my_models.py:make"          # required: "module:function", or a .py file next to
                                           #   the study
    kwargs = {}                            # passed to the factory (and dropout = rate when a
                                           #   variant sets one); called once per init seed
                                           #   under torch.manual_seed(seed)
    root = "."                             # where the factory's module or .py file is found,
                                           #   relative to the study file (data: the same key);
                                           #   config.json records it absolute

Penalties: ``l2`` is ``L2(λ)`` = λ/2·Σw²; ``l1`` is ``L1(λ)`` = λ·Σ|w|; ``elasticnet`` is
``ElasticNet(ρλ, (1−ρ)λ)``; ``group`` is ``GroupLasso(λ, groups)``; ``blog`` is the popular blog
class λ·Σ‖W‖₂ (un-squared, one norm per tensor) over every parameter named ``*weight*``:
``GroupLasso(λ, groups="tensor", scale="none")``; ``channels`` is
``ChannelLasso(λ, channel_groups(model, examples))``: a group lasso over the coupled channel
groups traced from the model (``params`` does not apply: the groups choose the tensors), whose
members are compacted after training (:mod:`regtorch.lab.analysis.pruning`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "PENALTIES",
    "QUOTED_CHARS",
    "SHOWN_CHARS",
    "SKLEARN_DATASETS",
    "SOURCE_KINDS",
    "TASKS",
    "CsvSource",
    "DataSpec",
    "EarlyStop",
    "ModelSpec",
    "NpzSource",
    "PythonSource",
    "Recipe",
    "Schedule",
    "SklearnSource",
    "Source",
    "Study",
    "StudyError",
    "Variant",
    "factory_name",
    "positive_int",
    "shown",
    "shown_text",
    "source_dict",
]

PENALTIES = ("l1", "l2", "elasticnet", "group", "blog", "channels")
LOSSES = ("mse", "half-mse", "cross-entropy")
OPTIMIZERS = ("sgd", "adam", "adamw")
TASKS = ("regression", "classification")
# scikit-learn's bundled datasets: name → (loader in sklearn.datasets, task)
SKLEARN_DATASETS: dict[str, tuple[str, str]] = {
    "diabetes": ("load_diabetes", "regression"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "wine": ("load_wine", "classification"),
    "iris": ("load_iris", "classification"),
    "digits": ("load_digits", "classification"),
}


class StudyError(ValueError):
    """A study that cannot run; the message names the key and the value.

    The message is one line, short by construction: a value the user wrote is inserted as
    :func:`shown` (its ``repr`` in :data:`SHOWN_CHARS`), a message from elsewhere (pandas,
    the user's factory) as :func:`shown_text`, so no value, however long, pushes the advice
    that follows it off the line.
    """


SHOWN_CHARS = 40
"""Characters of a value's ``repr`` quoted in an error message; longer ones are cut with ``…``."""
QUOTED_CHARS = 80
"""Characters of an outside error message (first line) quoted in ours."""


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` in at most ``limit`` characters, its middle cut (``…``) when longer: a
    value quoted in an error message keeps its start and its end (a path's file name).

    >>> shown("abc"), shown("x" * 100 + ".csv", limit=12)
    ("'abc'", "'xxxx…x.csv'")
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


def shown_text(text: str, limit: int = QUOTED_CHARS) -> str:
    r"""The first line of ``text``, cut to ``limit`` characters (``…`` marks the cut).

    >>> shown_text("a long\nstory"), shown_text("abcdef", limit=4)
    ('a long', 'abc…')
    """
    lines = str(text).strip().splitlines()
    line = " ".join(lines[0].split()) if lines else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


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


# -- the user's data (loaded by regtorch.lab.study.sources) ------------------------------------
@dataclass(frozen=True)
class CsvSource:
    """A CSV file: ``path`` (absolute once parsed), ``target`` column(s), ``features`` (None:
    every other column), ``categorical`` (one-hot encoded besides the non-numeric columns),
    ``task`` (None: inferred), ``split`` (a column of train/val/test, else fractions)."""

    kind: ClassVar[str] = "csv"
    path: str
    target: tuple[str, ...]
    features: tuple[str, ...] | None = None
    categorical: tuple[str, ...] = ()
    task: str | None = None
    standardize: bool = True
    standardize_target: bool = False
    val: float = 0.2
    test: float = 0.2
    split: str | None = None
    missing: str = "error"
    where: str = field(default="data", compare=False, repr=False)


@dataclass(frozen=True)
class NpzSource:
    """A NumPy ``.npz`` archive: ``X``/``y``, or ``X_train``/``y_train``/``X_test``/``y_test``
    (and optionally ``X_val``/``y_val``)."""

    kind: ClassVar[str] = "npz"
    path: str
    task: str | None = None
    standardize: bool = False
    standardize_target: bool = False
    val: float = 0.2
    test: float = 0.2
    missing: str = "error"
    where: str = field(default="data", compare=False, repr=False)


@dataclass(frozen=True)
class PythonSource:
    """``factory = "module:function"`` (or ``"file.py:function"``, relative to ``root``) called
    with ``kwargs``; see the module docstring for what it returns."""

    kind: ClassVar[str] = "python"
    factory: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    root: str = "."
    task: str | None = None
    standardize: bool = False
    standardize_target: bool = False
    val: float = 0.2
    test: float = 0.2
    missing: str = "error"
    where: str = field(default="data", compare=False, repr=False)


@dataclass(frozen=True)
class SklearnSource:
    """One of scikit-learn's bundled datasets (:data:`SKLEARN_DATASETS`)."""

    kind: ClassVar[str] = "sklearn"
    name: str
    standardize: bool = True
    standardize_target: bool = False
    images: bool = False
    val: float = 0.2
    test: float = 0.2
    where: str = field(default="data", compare=False, repr=False)


Source = CsvSource | NpzSource | PythonSource | SklearnSource
SOURCE_KINDS = ("csv", "npz", "python", "sklearn")


def source_dict(source: Source) -> dict[str, Any]:
    """The source in the study-file vocabulary (``kind`` first; defaults left out)."""
    out: dict[str, Any] = {"kind": source.kind}
    for f in fields(source):
        if f.name == "where":
            continue
        value = getattr(source, f.name)
        if value == f.default:
            continue
        if f.name == "kwargs":
            value = dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "linear"
    hidden: tuple[int, ...] = ()
    dropout_after: tuple[int, ...] | None = None
    norm: str = "none"
    init: str = "default"
    # cnn (regtorch.lab.study.cnn): conv blocks, then the head (``hidden`` widths, then outputs)
    channels: tuple[int, ...] = ()
    kernel: int = 3
    padding: int | None = None  # None: kernel // 2
    pool: str = "max"
    pool_size: int = 2
    residual: bool = False
    factory: Any = None
    """python: ``"module:function"``, ``"file.py:function"`` or (Python API) the callable."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    root: str = "."
    """python: the directory a relative ``file.py`` is found in (the study file's)."""
    where: str = field(default="model", compare=False, repr=False)
    """Where the table was written (``"my.toml: model"``): the prefix of its error messages."""


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
class EarlyStop:
    """A variant's early stopping: :class:`regtorch.EarlyStopping` on each member's validation
    data loss, with ``patience`` and ``min_delta``."""

    patience: int = 10
    min_delta: float = 0.0


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
    early_stopping: EarlyStop | None = None

    @property
    def tuned(self) -> bool:
        """True when λ is chosen on validation from several candidates."""
        return len(self.strengths) > 1


@dataclass(frozen=True)
class Study:
    name: str
    data: DataSpec | Source
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
        if self.model.kind == "python":
            out["model"] = _model_dict(self.model)
        else:
            for key in ("factory", "kwargs", "root", "where"):  # where: not what it says
                del out["model"][key]
            out["model"]["hidden"] = list(self.model.hidden)
            if self.model.dropout_after is None:
                del out["model"]["dropout_after"]
            else:
                out["model"]["dropout_after"] = list(self.model.dropout_after)
            cnn_keys = ("channels", "kernel", "padding", "pool", "pool_size", "residual")
            if self.model.kind == "cnn":  # keys of the other kinds do not apply (parser rejects)
                out["model"]["channels"] = list(self.model.channels)
                out["model"].pop("dropout_after", None)
                del out["model"]["init"]
                if self.model.padding is None:
                    del out["model"]["padding"]
                if not self.model.residual:  # the key appears only where it is used
                    del out["model"]["residual"]
            else:
                for key in cnn_keys:
                    del out["model"][key]
        if not isinstance(self.data, DataSpec):
            out["data"] = source_dict(self.data)
        elif self.data.kind == "digits":  # the other fields do not apply (the parser rejects them)
            out["data"] = {"kind": "digits", "train": self.data.train, "val": self.data.val}
        elif isinstance(self.data.weights, tuple):
            out["data"]["weights"] = list(self.data.weights)
        if isinstance(self.data, DataSpec) and self.data.kind != "digits" \
                and self.data.nonzeros is None:
            del out["data"]["nonzeros"]
        return out


def _model_dict(model: ModelSpec) -> dict[str, Any]:
    """A ``kind = "python"`` model in the file vocabulary (a callable is named by its module and
    qualified name)."""
    if not isinstance(model.factory, str):
        return {"kind": "python", "factory": factory_name(model.factory),
                "kwargs": dict(model.kwargs)}
    # root: where the factory is found (the study file's directory), so that config.json
    # names the same factory for `regtorch report` and a resumed run
    return {"kind": "python", "factory": model.factory, "kwargs": dict(model.kwargs),
            "root": model.root}


def factory_name(factory: Any) -> str:
    """``"module:qualified.name"`` of a callable (how ``config.json`` names a Python factory)."""
    module = getattr(factory, "__module__", None) or "?"
    return f"{module}:{getattr(factory, '__qualname__', type(factory).__name__)}"


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
    if variant.early_stopping is not None:
        out["early_stopping"] = asdict(variant.early_stopping)
    return out


def positive_int(value: Any, where: str) -> int:
    """``value`` if it is a positive integer, else a :class:`StudyError` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StudyError(f"{where}: must be a positive integer, got {shown(value)}")
    return value
