"""Parsing a study written in the file vocabulary (a TOML file or a preset's dict).

The vocabulary is documented in :mod:`regtorch.lab.study.spec`; :func:`parse_study` checks every
key and value and raises :class:`~regtorch.lab.study.spec.StudyError` naming the key
(``variants[2].strength``) and the value. :func:`read_toml` reads a study file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from regtorch.lab.study.spec import (
    LOSSES,
    OPTIMIZERS,
    PENALTIES,
    SKLEARN_DATASETS,
    SOURCE_KINDS,
    TASKS,
    CsvSource,
    DataSpec,
    EarlyStop,
    ModelSpec,
    NpzSource,
    PythonSource,
    Recipe,
    Schedule,
    SklearnSource,
    Source,
    Study,
    StudyError,
    Variant,
    positive_int,
    shown,
)

__all__ = ["parse_data", "parse_model", "parse_recipe", "parse_study", "parse_variants",
           "read_toml"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_study(spec: Mapping[str, Any], source: str = "study", root: str | Path = "."
                ) -> Study:
    """Validate a study written in the file vocabulary (see the module docstring).

    ``root`` is the directory relative paths are found in (a study file's directory).

    Raises:
        StudyError: naming the offending key (``variants[2].strength``) and its value.
    """
    top = _Table(spec, source)
    name = top.get("name", str, required=True)
    if not _NAME.match(name):
        raise StudyError(f"{source}: name {shown(name)} must be letters, digits, '-', '_' or '.'")
    description = top.get("description", str, "")
    seeds = positive_int(top.get("seeds", int, 5), f"{source}: seeds")
    data_seed = top.get("data_seed", int, 0)
    data = _data(_Table(top.get("data", Mapping, required=True), f"{source}: data"),
                 Path(root))
    model = _model(_Table(top.get("model", Mapping, {}), f"{source}: model"), data, root)
    recipe = parse_recipe(top.get("train", Mapping, {}), f"{source}: train")
    variants = parse_variants(top.get("variants", list, required=True), recipe, source)
    top.done()
    for i, v in enumerate(variants):
        if model.kind == "linear" and v.dropout:
            raise StudyError(f"{source}: variants[{i}].dropout: variant {shown(v.name)} sets "
                             f"{shown(v.dropout)}, but a linear model has no hidden layer to drop")
    if model.kind == "cnn" and data.kind not in ("npz", "python", "sklearn"):
        raise StudyError(f"{source}: model.kind: 'cnn' needs images, not data kind "
                         f"{shown(data.kind)} (npz, python, or sklearn digits with images = true)")
    if isinstance(data, SklearnSource):
        task = SKLEARN_DATASETS[data.name][1]
        if (task == "classification") != (recipe.loss == "cross-entropy"):
            raise StudyError(f"{source}: train.loss: {shown(data.name)} is {task}: "
                             f"{shown(recipe.loss)} does not apply")
        if model.kind == "cnn" and not data.images:
            raise StudyError(f"{source}: model.kind: 'cnn' needs images: set data.images = "
                             f"true (digits), not {shown(data.name)} as features")
    if isinstance(data, CsvSource | NpzSource | PythonSource) and data.task is not None \
            and (data.task == "classification") != (recipe.loss == "cross-entropy"):
        raise StudyError(f"{source}: train.loss: data.task is {shown(data.task)}: "
                         f"{shown(recipe.loss)} does not apply")
    if data.kind == "digits" and recipe.loss != "cross-entropy":
        raise StudyError(f"{source}: data kind 'digits' is classification: train.loss must be "
                         f"'cross-entropy', not {shown(recipe.loss)}")
    if data.kind == "linear" and recipe.loss == "cross-entropy":
        raise StudyError(f"{source}: data kind 'linear' is regression: train.loss "
                         f"'cross-entropy' does not apply")
    return Study(name=name, description=description, data=data, model=model, train=recipe,
                 variants=variants, seeds=seeds, data_seed=data_seed)


def parse_data(raw: Mapping[str, Any], where: str = "data", root: str | Path = "."
               ) -> DataSpec | Source:
    """The ``[data]`` table (see the vocabulary); ``root`` as for :func:`parse_study`."""
    return _data(_Table(raw, where), Path(root))


def parse_model(raw: Mapping[str, Any], where: str = "model", root: str | Path = "."
                ) -> ModelSpec:
    """The ``[model]`` table (see the vocabulary); ``root`` as for :func:`parse_study`."""
    return _model(_Table(raw, where), None, root)


def parse_recipe(raw: Mapping[str, Any], where: str = "train") -> Recipe:
    """The ``[train]`` table: the training recipe (see the vocabulary)."""
    return _recipe(_Table(raw, where))


def parse_variants(raw: list[Any], recipe: Recipe, source: str = "study") -> tuple[Variant, ...]:
    """The ``[[variants]]`` list, names unique (see the vocabulary)."""
    if not raw:
        raise StudyError(f"{source}: variants is empty (give at least one [[variants]])")
    variants = tuple(_variant(_Table(v, f"{source}: variants[{i}]", mapping_of="variant"),
                              recipe)
                     for i, v in enumerate(raw))
    names = [v.name for v in variants]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise StudyError(f"{source}: variants[{i}].name {shown(n)} is used twice")
    return variants


class _Table:
    """Typed access to one table of the spec that reports unknown keys."""

    def __init__(self, raw: Any, where: str, mapping_of: str = "table") -> None:
        if not isinstance(raw, Mapping):
            raise StudyError(f"{where}: expected a {mapping_of} (key = value pairs), "
                             f"got {shown(raw)}")
        self.raw, self.where, self.used = raw, where, set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *,
            required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.raw:
            if required:
                raise StudyError(f"{self.where}: missing required key {shown(key)}")
            return default
        value = self.raw[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            raise StudyError(f"{self.where}.{key}: expected {names}, got {shown(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise StudyError(f"{self.where}.{key}: must be finite, got {shown(value)}")
        return value

    def number(self, key: str, default: float, *, minimum: float | None = None,
               below: float | None = None) -> float:
        value = self.get(key, float, default)
        if minimum is not None and value < minimum:
            raise StudyError(f"{self.where}.{key}: must be >= {minimum}, got {shown(value)}")
        if below is not None and not value < below:
            raise StudyError(f"{self.where}.{key}: must be < {below}, got {shown(value)}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None, *,
               required: bool = False) -> str:
        value = self.get(key, str, default, required=required)
        if value not in choices:
            raise StudyError(f"{self.where}.{key}: unknown value {shown(value)} (expected one of "
                             f"{', '.join(choices)})")
        return value

    def done(self) -> None:
        unknown = [k for k in self.raw if k not in self.used]
        if unknown:
            raise StudyError(f"{self.where}: unknown key {shown(unknown[0])}")


_KIND_NAMES = {Mapping: "a table", list: "a list", str: "a string", int: "an integer",
               float: "a number", bool: "true or false"}



def _count(table: _Table, key: str, default: int, minimum: int = 1) -> int:
    value = table.get(key, int, default)
    if value < minimum:
        raise StudyError(f"{table.where}.{key}: must be >= {minimum}, got {shown(value)}")
    return value


def _data(t: _Table, root: Path) -> DataSpec | Source:
    kind = t.choice("kind", ("linear", "digits", *SOURCE_KINDS), required=True)
    if kind in SOURCE_KINDS:
        return _source(t, kind, root)
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
        raise StudyError(f"{t.where}.nonzeros: must be in 1..{features}, got {shown(nonzeros)}")
    weights = t.get("weights", (float, list), 1.0)
    if isinstance(weights, list):
        if nonzeros is not None:
            raise StudyError(f"{t.where}.weights: give a number with nonzeros, not a list")
        if len(weights) != features or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
            raise StudyError(f"{t.where}.weights: expected {features} numbers (one per "
                             f"feature), got {shown(weights)}")
        weights = tuple(float(w) for w in weights)
    spec = DataSpec(kind, features=features, train=_count(t, "train", 100),
                    val=_count(t, "val", 100), test=_count(t, "test", 100), weights=weights,
                    nonzeros=nonzeros, bias=t.number("bias", 0.0),
                    x_mean=t.number("x_mean", 0.0), x_std=t.number("x_std", 1.0, minimum=0.0),
                    noise_mean=t.number("noise_mean", 0.0),
                    noise_std=t.number("noise_std", 1.0, minimum=0.0))
    t.done()
    return spec


def _model(t: _Table, data: DataSpec | Source | None, root: str | Path = ".") -> ModelSpec:
    kind = t.choice("kind", ("linear", "mlp", "cnn", "python"), "linear")
    if kind == "cnn":
        return _cnn(t)
    if kind == "python":
        factory = t.get("factory", str, required=True)
        module, sep, function = factory.rpartition(":")
        if not sep or not module or not function:
            raise StudyError(f"{t.where}.factory: {shown(factory)} must be 'module:function' or "
                             f"'file.py:function'")
        kwargs = t.get("kwargs", Mapping, {})
        # the directory a module (or a relative .py file) is looked up in: the study file's,
        # stored absolute so that config.json names the same factory wherever it is read
        base = t.get("root", str)
        base = Path(root) if base is None else (Path(root) / Path(base).expanduser())
        t.done()
        return ModelSpec("python", factory=factory, kwargs=dict(kwargs),
                         root=str(base.resolve()), where=t.where)
    hidden = t.get("hidden", list, [])
    if kind == "linear" and hidden:
        raise StudyError(f"{t.where}.hidden: a linear model has no hidden layers")
    if kind == "mlp" and not hidden:
        raise StudyError(f"{t.where}.hidden: an mlp needs at least one hidden width")
    if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise StudyError(f"{t.where}.hidden: expected positive integers, got {shown(hidden)}")
    after = t.get("dropout_after", list)
    if after is not None and not all(isinstance(i, int) and not isinstance(i, bool)
                                     and 1 <= i <= len(hidden) for i in after):
        raise StudyError(f"{t.where}.dropout_after: expected hidden layer numbers in "
                         f"1..{len(hidden)}, got {shown(after)}")
    spec = ModelSpec(kind, tuple(hidden), None if after is None else tuple(sorted(set(after))),
                     norm=t.choice("norm", ("none", "batch"), "none"),
                     init=t.choice("init", ("default", "normal"), "default"), where=t.where)
    if spec.norm == "batch" and kind == "linear":
        raise StudyError(f"{t.where}.norm: 'batch' needs an mlp (it follows hidden layers)")
    t.done()
    return spec


def _cnn(t: _Table) -> ModelSpec:
    def widths(key: str, default: list[int]) -> tuple[int, ...]:
        value = t.get(key, list, default)
        if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in value):
            raise StudyError(f"{t.where}.{key}: expected positive integers, got {shown(value)}")
        return tuple(value)

    channels = widths("channels", [16, 32])
    if not channels:
        raise StudyError(f"{t.where}.channels: a cnn needs at least one conv block")
    padding = t.get("padding", int)
    if padding is not None and padding < 0:
        raise StudyError(f"{t.where}.padding: must be >= 0, got {shown(padding)}")
    spec = ModelSpec("cnn", hidden=widths("hidden", []), channels=channels,
                     kernel=_count(t, "kernel", 3), padding=padding,
                     norm=t.choice("norm", ("none", "batch"), "none"),
                     pool=t.choice("pool", ("max", "avg", "none"), "max"),
                     pool_size=_count(t, "pool_size", 2),
                     residual=t.get("residual", bool, False), where=t.where)
    if spec.residual and (spec.kernel % 2 == 0 or (padding is not None
                                                   and padding != spec.kernel // 2)):
        raise StudyError(f"{t.where}.residual: a residual block keeps the size of its input: "
                         f"it needs an odd kernel and padding = kernel // 2 (got kernel "
                         f"{spec.kernel}, padding {padding})")
    t.done()
    return spec


def _source(t: _Table, kind: str, root: Path) -> Source:
    """A ``[data]`` table of the user's data (:data:`SOURCE_KINDS`); relative paths are resolved
    against ``root``, the study file's directory, and stored absolute."""
    where = t.where

    def fraction(key: str) -> float:
        value = t.number(key, 0.2)
        if not 0 < value < 1:
            raise StudyError(f"{where}.{key}: must be in (0, 1), got {shown(value)}")
        return value

    def names(key: str, required: bool = False) -> tuple[str, ...] | None:
        value = t.get(key, (str, list), required=required)
        if value is None:
            return None
        value = [value] if isinstance(value, str) else value
        if not value or not all(isinstance(v, str) and v for v in value):
            raise StudyError(f"{where}.{key}: expected a column name or a list of them, got "
                             f"{shown(value)}")
        if len(set(value)) != len(value):
            raise StudyError(f"{where}.{key}: repeated column in {shown(value)}")
        return tuple(value)

    def path(key: str) -> str:
        value = t.get(key, str, required=True)
        if not value:
            raise StudyError(f"{where}.{key}: empty")
        full = Path(value).expanduser()
        return str(full if full.is_absolute() else (root / full).resolve())

    common: dict[str, Any] = {"where": where}
    if kind != "sklearn":
        task = t.get("task", str)
        if task is not None and task not in TASKS:
            raise StudyError(f"{where}.task: unknown value {shown(task)} (expected one of "
                             f"{', '.join(TASKS)})")
        common.update(task=task, missing=t.choice("missing", ("error", "drop"), "error"))
    common.update(val=fraction("val"), test=fraction("test"),
                  standardize_target=t.get("standardize_target", bool, False))
    if common["val"] + common["test"] >= 1:
        raise StudyError(f"{where}: val + test = {shown(common['val'] + common['test'])} leaves no "
                         f"train rows")
    if kind == "csv":
        source: Source = CsvSource(
            path=path("path"), target=names("target", required=True),  # type: ignore[arg-type]
            features=names("features"), categorical=names("categorical") or (),
            split=t.get("split", str), standardize=t.get("standardize", bool, True), **common)
    elif kind == "npz":
        source = NpzSource(path=path("path"), standardize=t.get("standardize", bool, False),
                           **common)
    elif kind == "python":
        factory = t.get("factory", str, required=True)
        kwargs = t.get("kwargs", Mapping, {})
        # the directory a module (or a relative .py file) is looked up in: the study file's
        base = t.get("root", str)
        base = root if base is None else (root / Path(base).expanduser())
        source = PythonSource(factory=factory, kwargs=tuple(sorted(kwargs.items())),
                              root=str(base.resolve()),
                              standardize=t.get("standardize", bool, False), **common)
    else:
        name = t.choice("name", tuple(SKLEARN_DATASETS), required=True)
        images = t.get("images", bool, False)
        if images and name != "digits":
            raise StudyError(f"{where}.images: only the digits are images, not {shown(name)}")
        if common["standardize_target"] and SKLEARN_DATASETS[name][1] != "regression":
            raise StudyError(f"{where}.standardize_target: {shown(name)} is classification")
        source = SklearnSource(name=name, standardize=t.get("standardize", bool, True),
                               images=images, **common)
    t.done()
    return source


def _schedule(raw: Any, where: str) -> Schedule:
    if raw == "constant":
        return Schedule()
    if isinstance(raw, str):
        raise StudyError(f"{where}: unknown schedule {shown(raw)} (expected 'constant' or a table "
                         f"with kind = 'exponential' or 'plateau')")
    t = _Table(raw, where)
    kind = t.choice("kind", ("constant", "exponential", "plateau"), required=True)
    per = t.choice("per", ("step", "epoch"), "step")
    if kind == "exponential":
        schedule = Schedule(kind, rate=t.number("rate", 0.99, minimum=0.0),
                            min_lr=t.number("min_lr", 0.0, minimum=0.0), per=per)
        if not 0 < schedule.rate <= 1:
            raise StudyError(f"{where}.rate: must be in (0, 1], got {shown(schedule.rate)}")
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
        raise StudyError(f"{t.where}.lr: must be > 0, got {shown(recipe.lr)}")
    if recipe.momentum and recipe.optimizer != "sgd":
        raise StudyError(f"{t.where}.momentum: only for optimizer 'sgd', not "
                         f"{shown(recipe.optimizer)}")
    t.done()
    return recipe


def _variant(t: _Table, recipe: Recipe) -> Variant:
    name = t.get("name", str, required=True)
    if not _NAME.match(name):
        raise StudyError(f"{t.where}.name: {shown(name)} must be letters, digits, '-', '_' or '.'")
    penalty = t.get("penalty", str)
    if penalty is not None and penalty not in PENALTIES:
        raise StudyError(f"{t.where}.penalty: unknown penalty {shown(penalty)} (expected one of "
                         f"{', '.join(PENALTIES)})")
    raw = t.get("strength", (float, list))
    if raw is None:
        if penalty is not None:
            raise StudyError(f"{t.where}: penalty {shown(penalty)} needs a strength")
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
                raise StudyError(f"{t.where}.strength: must be finite and >= 0, got {shown(value)}")
        strengths = tuple(float(v) for v in values)
        if len(set(strengths)) != len(strengths):
            raise StudyError(f"{t.where}.strength: repeated value in {shown(values)}")
    apply = t.choice("apply", ("gradient", "prox"), "gradient")
    if apply == "prox" and penalty not in ("l1", "l2", "elasticnet", "group", "channels"):
        raise StudyError(f"{t.where}.apply: 'prox' needs penalty l1, l2, elasticnet, group or "
                         f"channels, not {shown(penalty)}")
    default_params = "*weight*" if penalty == "blog" else "weights"
    params = t.get("params", str, default_params)
    if not params:
        raise StudyError(f"{t.where}.params: empty (give 'weights', 'all' or a name glob)")
    weight_decay = t.number("weight_decay", 0.0, minimum=0.0)
    if weight_decay and recipe.optimizer not in ("sgd", "adam", "adamw"):
        raise StudyError(f"{t.where}.weight_decay: not for optimizer {shown(recipe.optimizer)}")
    schedule = t.get("schedule", (str, Mapping))
    early = t.get("early_stopping", Mapping)
    variant = Variant(name=name, penalty=penalty, strengths=strengths, apply=apply,
                      params=params, l1_ratio=t.number("l1_ratio", 0.5, minimum=0.0),
                      groups=t.choice("groups", ("rows", "columns"), "rows"),
                      weight_decay=weight_decay,
                      dropout=t.number("dropout", 0.0, minimum=0.0, below=1.0),
                      schedule=None if schedule is None else _schedule(schedule,
                                                                       f"{t.where}.schedule"),
                      early_stopping=None if early is None else _early_stop(
                          _Table(early, f"{t.where}.early_stopping")))
    if variant.l1_ratio > 1:
        raise StudyError(f"{t.where}.l1_ratio: must be in [0, 1], got {shown(variant.l1_ratio)}")
    t.done()
    return variant


def _early_stop(t: _Table) -> EarlyStop:
    early = EarlyStop(patience=_count(t, "patience", 10, minimum=0),
                      min_delta=t.number("min_delta", 0.0, minimum=0.0))
    t.done()
    return early


def read_toml(path: str | Path) -> dict[str, Any]:
    """The content of the TOML study file at ``path``.

    Raises:
        StudyError: the file is missing, unreadable, not UTF-8 or not valid TOML (or TOML cannot
            be read: Python 3.10 without ``tomli``).
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise StudyError("reading a TOML study needs Python 3.11 or later (or pip install "
                             "tomli)") from None
    path = Path(path)
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise StudyError(f"no such study file: {path}") from None
    except OSError as error:
        raise StudyError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise StudyError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise StudyError(f"{path}: malformed TOML: {error}") from None
