"""The user's data: a CSV file, NumPy arrays, a Python factory or a scikit-learn bundled set.

Each kind is a small frozen spec (:mod:`regtorch.lab.study.spec`, parsed from a study file's
``[data]`` table by :mod:`regtorch.lab.study.parse`); :func:`load_source` turns one into the lab's
:class:`~regtorch.lab.study.data.Datasets` (train / validation / test tensors). Nothing downloads.

* ``csv`` (:class:`CsvSource`): read with pandas. ``target`` names one column (several for
  multi-output regression); ``features`` lists the inputs (default: every other column). The task
  is ``regression`` or ``classification``; when not given it is inferred — a target of strings,
  booleans or categories, or of at most :data:`CLASS_LIMIT` distinct integers, is
  classification — and the inference is reported in ``Datasets.notes``. Non-numeric feature
  columns (and those listed in ``categorical``) are one-hot encoded; numeric ones are
  standardized, ``(x − mean) / std`` with the mean and std of the train split only
  (``standardize = true``). Class labels are sorted and numbered 0, 1, … (``Datasets.classes``).
* ``npz`` (:class:`NpzSource`): arrays ``X`` and ``y``, split as below, or ``X_train``,
  ``y_train``, ``X_test``, ``y_test`` (and ``X_val``, ``y_val``; without them the validation set is
  drawn from the train arrays). ``X`` has any shape ``[N, …]`` (images ``[N, C, H, W]``).
* ``python`` (:class:`PythonSource`): ``factory = "module:function"`` (an importable module,
  or a ``.py`` file relative to the study file) called with ``kwargs``. It returns either
  ``(X, y)``, split as below, or a mapping ``{"train": (X, y), "val": (X, y), "test": (X, y)}``
  (``val`` optional, as for npz); ``X`` and ``y`` are tensors or NumPy arrays (or anything
  ``numpy.asarray`` takes). Targets follow the npz rules.
* ``sklearn`` (:class:`SklearnSource`): scikit-learn's bundled ``diabetes`` (regression),
  ``breast_cancer``, ``wine``, ``iris``, ``digits`` (classification); ``images = true`` gives the
  digits as ``[N, 1, 8, 8]``.

**Targets.** A regression target becomes a float tensor ``[n, outputs]``; a classification target
a long tensor ``[n]`` of class indices. For arrays (npz, python): a float target is regression; an
integer, boolean or string target with at most :data:`CLASS_LIMIT` distinct values is
classification (``task`` overrides either way).

**Splits.** Unless the data comes split (a ``split`` column holding ``train`` / ``val`` / ``test``,
or split arrays), the rows are shuffled with ``data_seed`` and a fraction ``test`` then a fraction
``val`` (of all rows) are held out, stratified by class for classification
(``sklearn.model_selection.train_test_split``). Standardization (``standardize``; for arrays
per input value, e.g. per pixel) is always fitted on the train split alone.

**Missing values** (NaN, empty cells) in a used column are an error naming the column and the
number of rows, unless ``missing = "drop"`` drops those rows (reported in the notes).

Every failure — a missing file, column or array, a factory that cannot be imported, raises or
returns the wrong thing, a NaN in the target — is a :class:`~regtorch.lab.study.spec.StudyError`
whose one line names the key and the value.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from regtorch.lab.study.data import Datasets
from regtorch.lab.study.spec import (
    SKLEARN_DATASETS,
    CsvSource,
    NpzSource,
    PythonSource,
    SklearnSource,
    Source,
    StudyError,
    shown,
    shown_text,
)

__all__ = [
    "CLASS_LIMIT",
    "SPLIT_NAMES",
    "import_factory",
    "infer_task",
    "load_arrays",
    "load_source",
]

CLASS_LIMIT = 20   # an integer target with at most this many distinct values is classification
SPLIT_NAMES = ("train", "val", "test")


# -- loading -----------------------------------------------------------------------------------
def load_source(source: Source, seed: int, dtype: torch.dtype = torch.float32) -> Datasets:
    """The train / validation / test splits of ``source``; rows drawn from ``seed``.

    Raises:
        StudyError: naming the key (``data.target``, ``data.factory`` …) and the value.
    """
    loaders: dict[str, Callable[..., Datasets]] = {
        "csv": _load_csv, "npz": _load_npz, "python": _load_python, "sklearn": _load_sklearn}
    return loaders[source.kind](source, seed, dtype)


def load_arrays(given: Any, seed: int, dtype: torch.dtype = torch.float32, *, val: float = 0.2,
                test: float = 0.2, task: str | None = None, standardize: bool = False,
                where: str = "data", label: str = "the arrays") -> Datasets:
    """The train / validation / test splits of arrays in memory — what a ``python`` factory
    returns (the module docstring's rules): ``(X, y)``, split here by the fractions ``val`` and
    ``test`` drawn from ``seed`` (stratified for classification), or ``{"train": (X, y),
    "val": (X, y), "test": (X, y)}`` (``val`` optional: drawn from train).

    Raises:
        StudyError: arrays of the wrong shape or kind, or a NaN target, named with ``where``
            and ``label``.
    """
    spec = PythonSource(factory="<arrays>", val=val, test=test, task=task,
                        standardize=standardize, where=where)
    return _from_arrays(given, spec, seed, dtype, where, label)


def infer_task(y: np.ndarray) -> tuple[str, str]:
    """``(task, reason)`` for a target array (or a pandas Series): strings, booleans and
    categories, or integers with at most :data:`CLASS_LIMIT` distinct values, are classification.

    >>> infer_task(np.array(["a", "b", "a"]))
    ('classification', 'holds strings')
    >>> infer_task(np.array([0, 1, 1, 2]))
    ('classification', 'holds 3 distinct integers')
    >>> infer_task(np.array([0.5, 1.5]))
    ('regression', 'holds numbers')
    """
    dtype = getattr(y, "dtype", None)
    kind = getattr(dtype, "kind", "O")
    if kind in "OSUb" or str(dtype) == "category":
        return "classification", "holds booleans" if kind == "b" else "holds strings"
    if kind in "iu":
        distinct = len(np.unique(np.asarray(y)))
        if distinct <= CLASS_LIMIT:
            return "classification", f"holds {distinct} distinct integers"
        return "regression", f"holds {distinct} distinct integers (more than {CLASS_LIMIT})"
    return "regression", "holds numbers"


def _load_csv(spec: CsvSource, seed: int, dtype: torch.dtype) -> Datasets:
    import pandas as pd

    where = spec.where
    path = Path(spec.path)
    if not path.is_file():
        raise StudyError(f"{where}.path: no such file {shown(spec.path)}")
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise StudyError(f"{where}.path: cannot read {shown(spec.path)} as CSV: "
                         f"{_first_line(error)}") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns

    def known(key: str, names: tuple[str, ...]) -> None:
        for name in names:
            if name not in columns:
                raise StudyError(f"{where}.{key}: no column {shown(name)} in {path.name} (columns: "
                                 f"{_listing(columns)})")

    known("target", spec.target)
    if spec.split is not None:
        known("split", (spec.split,))
    features = spec.features
    if features is None:
        features = tuple(c for c in columns if c not in spec.target and c != spec.split)
    else:
        known("features", features)
        for name in features:
            if name in spec.target or name == spec.split:
                raise StudyError(f"{where}.features: {shown(name)} is also the "
                                 f"{'target' if name in spec.target else 'split column'}")
    if not features:
        raise StudyError(f"{where}.features: no feature column left in {path.name}")
    known("categorical", spec.categorical)
    for name in spec.categorical:
        if name not in features:
            raise StudyError(f"{where}.categorical: {shown(name)} is not a feature")

    notes: list[str] = []
    used = [*features, *spec.target, *([spec.split] if spec.split else [])]
    frame = _missing(frame, used, spec.target, spec.missing, where, notes)
    if spec.split is not None:
        parts = _split_by_column(frame[spec.split], where, spec.split)
    else:
        parts = None

    task, classes, y = _target(frame, spec, notes)
    if parts is None:
        parts = _split_rows(len(frame), spec.val, spec.test, seed,
                            y if task == "classification" else None, where)
    x_parts, names = _encode_features(frame, features, spec, parts, notes)
    y_parts = [y[idx] for idx in parts]
    return _datasets(x_parts, y_parts, classes, spec.standardize_target, dtype, notes,
                     feature_names=names)


def _missing(frame, used: list[str], targets: tuple[str, ...], missing: str, where: str,
             notes: list[str]):
    counts = frame[used].isna().sum()
    if not counts.any():
        return frame
    if missing == "drop":
        before = len(frame)
        frame = frame.dropna(subset=used).reset_index(drop=True)
        notes.append(f"dropped {before - len(frame)} of {before} rows with missing values")
        if frame.empty:
            raise StudyError(f"{where}.missing: 'drop' leaves no row")
        return frame
    column = next(c for c in used if counts[c])
    key = "target" if column in targets else "features"
    raise StudyError(f"{where}.{key}: column {shown(column)} has {int(counts[column])} missing "
                     f"value(s) (set missing = 'drop' to drop those rows)")


def _split_by_column(column, where: str, name: str) -> list[np.ndarray]:
    values = column.astype(str).str.strip().str.lower().to_numpy()
    bad = sorted(set(values) - set(SPLIT_NAMES))
    if bad:
        raise StudyError(f"{where}.split: column {shown(name)} holds {shown(bad[0])} "
                         f"(expected train, val or test)")
    parts = [np.flatnonzero(values == s) for s in SPLIT_NAMES]
    for s, idx in zip(SPLIT_NAMES, parts):
        if not len(idx):
            raise StudyError(f"{where}.split: column {shown(name)} has no {shown(s)} row")
    return parts


def _target(frame, spec: CsvSource, notes: list[str]) -> tuple[str, tuple[str, ...] | None,
                                                                np.ndarray]:
    where = spec.where
    if spec.task is None:
        tasks = [infer_task(frame[t]) for t in spec.target]
        task = "classification" if any(t == "classification" for t, _ in tasks) else \
            "regression"
        for name, (t, reason) in zip(spec.target, tasks):
            notes.append(f"task: {t} (target {name!r} {reason}; set task to override)")
    else:
        task = spec.task
        notes.append(f"task: {task} (given)")
    if task == "classification":
        if len(spec.target) > 1:
            raise StudyError(f"{where}.target: classification takes one target column, got "
                             f"{shown(list(spec.target))}")
        classes, labels = _classes(frame[spec.target[0]].to_numpy())
        return task, classes, labels
    values = frame[list(spec.target)]
    for name in spec.target:
        if not _numeric(values[name]):
            raise StudyError(f"{where}.target: column {shown(name)} is not numeric "
                             f"(e.g. {shown(values[name].iloc[0])}); use task = 'classification'")
    return task, None, values.to_numpy(dtype=np.float64)


def _encode_features(frame, features: tuple[str, ...], spec: CsvSource,
                     parts: list[np.ndarray], notes: list[str]
                     ) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """([x_train, x_val, x_test], column names), one-hot and scaling fitted on the train rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    categorical = [c for c in features if c in spec.categorical or not _numeric(frame[c])]
    numeric = [c for c in features if c not in categorical]
    steps = []
    if numeric:
        steps.append(("num", StandardScaler() if spec.standardize else "passthrough", numeric))
    if categorical:
        steps.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False,
                                           dtype=np.float64), categorical))
    encoder = ColumnTransformer(steps, verbose_feature_names_out=False)
    data = frame[list(features)].copy()
    for c in categorical:
        data[c] = data[c].astype(str)
    train = encoder.fit_transform(data.iloc[parts[0]])
    if categorical:
        onehot = encoder.named_transformers_["cat"]
        widths = ", ".join(f"{c} → {len(cats)}" for c, cats in
                           zip(categorical, onehot.categories_))
        notes.append(f"one-hot encoded (categories of the train split): {widths} columns")
    if numeric and spec.standardize:
        notes.append(f"standardized {len(numeric)} numeric column(s) on the train split")
    names = tuple(str(n) for n in encoder.get_feature_names_out())
    return [train, *(encoder.transform(data.iloc[idx]) for idx in parts[1:])], names


def _numeric(column) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _classes(values: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Sorted class names and each row's class index."""
    from sklearn.preprocessing import LabelEncoder

    encoder = LabelEncoder()
    if values.dtype.kind == "O":
        values = values.astype(str)
    labels = encoder.fit_transform(values)
    return tuple(str(c) for c in encoder.classes_), labels.astype(np.int64)


def _split_rows(n: int, val: float, test: float, seed: int, labels: np.ndarray | None,
                where: str) -> list[np.ndarray]:
    """Row indices of train / val / test: fractions ``val`` and ``test`` of all ``n`` rows,
    stratified by ``labels`` when given."""
    from sklearn.model_selection import train_test_split

    index = np.arange(n)
    try:
        rest, test_rows = train_test_split(index, test_size=test, random_state=seed,
                                           stratify=labels)
        train_rows, val_rows = train_test_split(
            rest, test_size=val / (1.0 - test), random_state=seed,
            stratify=None if labels is None else labels[rest])
    except ValueError as error:
        how = " stratified by class" if labels is not None else ""
        raise StudyError(f"{where}.val: cannot split {n} rows{how} into val = {shown(val)}, test = "
                         f"{shown(test)}: {_first_line(error)}") from None
    return [np.sort(train_rows), np.sort(val_rows), np.sort(test_rows)]


# -- arrays: npz, python, sklearn --------------------------------------------------------------
_ARRAY_KEYS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")


def _load_npz(spec: NpzSource, seed: int, dtype: torch.dtype) -> Datasets:
    where = spec.where
    path = Path(spec.path)
    if not path.is_file():
        raise StudyError(f"{where}.path: no such file {shown(spec.path)}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as error:
        raise StudyError(f"{where}.path: cannot read {shown(spec.path)} as .npz: "
                         f"{_first_line(error)}") from None
    if "X" in arrays or "y" in arrays:
        for key in ("X", "y"):
            if key not in arrays:
                raise StudyError(f"{where}.path: {path.name} has no array {shown(key)} (arrays: "
                                 f"{_listing(sorted(arrays))})")
        given: Any = (arrays["X"], arrays["y"])
    else:
        for key in ("X_train", "y_train", "X_test", "y_test"):
            if key not in arrays:
                raise StudyError(f"{where}.path: {path.name} has no array {shown(key)} (expected X "
                                 f"and y, or X_train, y_train, [X_val, y_val,] X_test, y_test; "
                                 f"arrays: {_listing(sorted(arrays))})")
        if ("X_val" in arrays) != ("y_val" in arrays):
            raise StudyError(f"{where}.path: {path.name} has one of X_val, y_val but not both")
        given = {s: (arrays[f"X_{s}"], arrays[f"y_{s}"]) for s in SPLIT_NAMES
                 if f"X_{s}" in arrays}
    return _from_arrays(given, spec, seed, dtype, f"{where}.path", path.name)


def _load_python(spec: PythonSource, seed: int, dtype: torch.dtype) -> Datasets:
    where = f"{spec.where}.factory"
    function = import_factory(spec.factory, Path(spec.root), where)
    try:
        given = function(**dict(spec.kwargs))
    except Exception as error:  # the user's code: any failure is reported, not a traceback
        raise StudyError(f"{where}: {shown(spec.factory)} raised {type(error).__name__}: "
                         f"{_first_line(error)}") from None
    if isinstance(given, Mapping):
        keys = set(given)
        if not {"train", "test"} <= keys or not keys <= set(SPLIT_NAMES):
            raise StudyError(f"{where}: {shown(spec.factory)} returned a mapping with keys "
                             f"{shown(sorted(map(str, keys)))} (expected 'train', 'val', 'test')")
        for s, pair in given.items():
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise StudyError(f"{where}: {shown(spec.factory)} returned {shown(s)}: "
                                 f"{_kind_of(pair)} (expected a pair (X, y))")
    elif not (isinstance(given, tuple | list) and len(given) == 2):
        raise StudyError(f"{where}: {shown(spec.factory)} returned {_kind_of(given)} (expected "
                         f"(X, y) or {{'train': (X, y), 'val': (X, y), 'test': (X, y)}})")
    return _from_arrays(given, spec, seed, dtype, where, spec.factory)


def _load_sklearn(spec: SklearnSource, seed: int, dtype: torch.dtype) -> Datasets:
    import sklearn.datasets

    loader, task = SKLEARN_DATASETS[spec.name]
    bunch = getattr(sklearn.datasets, loader)()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    notes = [f"scikit-learn's {spec.name}: {x.shape[0]} rows, {x.shape[1]} features, {task}"]
    classes = None
    if task == "classification":
        names = getattr(bunch, "target_names", None)
        classes = tuple(str(n) for n in names) if names is not None else \
            tuple(str(c) for c in np.unique(y))
        y = y.astype(np.int64)
    parts = _split_rows(len(x), spec.val, spec.test, seed,
                        y if task == "classification" else None, spec.where)
    x_parts = [x[idx] for idx in parts]
    if spec.standardize:
        x_parts = _standardize(x_parts)
        notes.append("standardized each feature on the train split")
    if spec.images:
        x_parts = [a.reshape(-1, 1, 8, 8) for a in x_parts]
    y_parts = [y[idx] if task == "classification" else y[idx].reshape(-1, 1) for idx in parts]
    names = tuple(str(n) for n in getattr(bunch, "feature_names", ())) or None
    return _datasets(x_parts, y_parts, classes, spec.standardize_target, dtype, notes,
                     feature_names=None if spec.images else names)


def _from_arrays(given: Any, spec: NpzSource | PythonSource, seed: int, dtype: torch.dtype,
                 where: str, label: str) -> Datasets:
    """Datasets from ``(X, y)`` (split here) or ``{split: (X, y)}`` (val optional)."""
    notes: list[str] = []
    pairs = given if isinstance(given, Mapping) else {"all": given}
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    for name, (x, y) in pairs.items():
        xs[name] = _array(x, f"X of {shown(name)}" if name != "all" else "X", where, label)
        ys[name] = _array(y, f"y of {shown(name)}" if name != "all" else "y", where, label)
        if xs[name].ndim < 2:
            raise StudyError(f"{where}: {label}: X{_of(name)} has shape {list(xs[name].shape)} "
                             f"(expected [N, features] or [N, C, H, W])")
        if ys[name].ndim == 2 and ys[name].shape[1] == 1:
            ys[name] = ys[name][:, 0]
        if ys[name].ndim not in (1, 2) or len(ys[name]) != len(xs[name]):
            raise StudyError(f"{where}: {label}: y{_of(name)} has shape "
                             f"{list(ys[name].shape)} for X of shape {list(xs[name].shape)} "
                             f"(expected [N] or [N, outputs])")
        if xs[name].dtype.kind not in "biuf":
            raise StudyError(f"{where}: {label}: X{_of(name)} holds {xs[name].dtype} "
                             f"(expected numbers)")
        xs[name] = xs[name].astype(np.float64)
    shapes = {x.shape[1:] for x in xs.values()}
    if len(shapes) > 1:
        raise StudyError(f"{where}: {label}: the splits' X have different shapes "
                         f"{sorted(list(s) for s in shapes)}")
    everything = np.concatenate(list(ys.values()))
    if spec.task is None:
        task, reason = infer_task(everything)
        notes.append(f"task: {task} (y {reason}; set task to override)")
    else:
        task = spec.task
        notes.append(f"task: {task} (given)")
    for name in list(xs):
        keep = _rows_without_nan(xs[name], ys[name], task, spec.missing, where, label, name,
                                 notes)
        xs[name], ys[name] = xs[name][keep], ys[name][keep]
    classes = None
    everything = np.concatenate(list(ys.values()))
    if task == "classification":
        if everything.ndim != 1:
            raise StudyError(f"{where}: {label}: classification takes y of shape [N], got "
                             f"{list(everything.shape)}")
        if everything.dtype.kind == "f" and not np.all(np.isfinite(everything)
                                                       & (everything == np.round(everything))):
            raise StudyError(f"{where}: {label}: classification needs integer or string "
                             f"labels, y holds fractional numbers")
        order = list(ys)
        classes, labels = _classes(np.concatenate([ys[n] for n in order]))
        bounds = np.cumsum([0, *(len(ys[n]) for n in order)])
        ys = {n: labels[bounds[i]:bounds[i + 1]] for i, n in enumerate(order)}
    else:
        for name in ys:
            if ys[name].dtype.kind not in "biuf":
                raise StudyError(f"{where}: {label}: regression needs numbers, y{_of(name)} "
                                 f"holds {ys[name].dtype}")
            ys[name] = ys[name].astype(np.float64).reshape(len(ys[name]), -1)
    stratify = task == "classification"
    if "all" in xs:
        parts = _split_rows(len(xs["all"]), spec.val, spec.test, seed,
                            ys["all"] if stratify else None, spec.where)
        x_parts = [xs["all"][idx] for idx in parts]
        y_parts = [ys["all"][idx] for idx in parts]
    else:
        if "val" not in xs:
            train, val = _split_off(len(xs["train"]), spec.val, seed,
                                    ys["train"] if stratify else None, spec.where)
            xs["val"], ys["val"] = xs["train"][val], ys["train"][val]
            xs["train"], ys["train"] = xs["train"][train], ys["train"][train]
            notes.append(f"validation: {len(val)} rows drawn from the train arrays")
        x_parts = [xs[s] for s in SPLIT_NAMES]
        y_parts = [ys[s] for s in SPLIT_NAMES]
    if spec.standardize:
        x_parts = _standardize(x_parts)
        notes.append("standardized each input value on the train split")
    return _datasets(x_parts, y_parts, classes, spec.standardize_target, dtype, notes)


def _rows_without_nan(x: np.ndarray, y: np.ndarray, task: str, missing: str, where: str,
                      label: str, name: str, notes: list[str]) -> np.ndarray:
    bad_x = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if y.dtype.kind == "f":
        bad_y = ~np.isfinite(y.reshape(len(y), -1)).all(axis=1)
    elif y.dtype.kind == "O":
        bad_y = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in y])
    else:
        bad_y = np.zeros(len(y), dtype=bool)
    bad = bad_x | bad_y
    if not bad.any():
        return np.ones(len(x), dtype=bool)
    if missing != "drop":
        what, count = ("y", int(bad_y.sum())) if bad_y.any() else ("X", int(bad_x.sum()))
        raise StudyError(f"{where}: {label}: {what}{_of(name)} has {count} row(s) with NaN or "
                         f"infinite values (set missing = 'drop' to drop them)")
    notes.append(f"dropped {int(bad.sum())} row(s){_of(name)} with NaN or infinite values")
    if bad.all():
        raise StudyError(f"{where.rsplit('.', 1)[0]}.missing: 'drop' leaves no "
                         f"row{_of(name)}")
    return ~bad


def _split_off(n: int, fraction: float, seed: int, labels: np.ndarray | None,
               where: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    try:
        train, val = train_test_split(np.arange(n), test_size=fraction, random_state=seed,
                                      stratify=labels)
    except ValueError as error:
        raise StudyError(f"{where}.val: cannot draw val = {shown(fraction)} from {n} train rows: "
                         f"{_first_line(error)}") from None
    return np.sort(train), np.sort(val)


def _array(value: Any, what: str, where: str, label: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise StudyError(f"{where}: {label}: {what} is {_kind_of(value)}, not an array: "
                         f"{_first_line(error)}") from None


def _standardize(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Each input value (column, or pixel) centred and scaled by the train split's mean and std
    (``StandardScaler``: a constant value is only centred)."""
    from sklearn.preprocessing import StandardScaler

    shape = parts[0].shape[1:]
    scaler = StandardScaler().fit(parts[0].reshape(len(parts[0]), -1))
    return [scaler.transform(p.reshape(len(p), -1)).reshape(len(p), *shape) for p in parts]


def _datasets(x_parts, y_parts, classes: tuple[str, ...] | None, standardize_target: bool,
              dtype: torch.dtype, notes: list[str],
              feature_names: tuple[str, ...] | None = None) -> Datasets:
    y_parts = list(y_parts)
    if classes is None and standardize_target:
        y_parts = _standardize(y_parts)
        notes.append("standardized the target on the train split")
    xs = [torch.as_tensor(np.ascontiguousarray(x), dtype=dtype) for x in x_parts]
    if classes is None:
        ys = [torch.as_tensor(np.ascontiguousarray(y), dtype=dtype) for y in y_parts]
    else:
        ys = [torch.as_tensor(y, dtype=torch.long) for y in y_parts]
    return Datasets(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], classes=classes,
                    feature_names=feature_names, notes=tuple(notes))


# -- factories ---------------------------------------------------------------------------------
def import_factory(ref: str, root: Path, where: str) -> Callable[..., Any]:
    """The callable ``ref`` names: ``"package.module:function"`` (importable, or from ``root``,
    the study file's directory) or ``"path/to/file.py:function"`` (relative to ``root``).

    Raises:
        StudyError: ``where: cannot import …`` naming ``ref``.
    """
    module_name, sep, attr = ref.rpartition(":")
    if not sep or not module_name or not attr:
        raise StudyError(f"{where}: {shown(ref)} must be 'module:function' or 'file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise StudyError(f"{where}: {shown(ref)}: no such file {shown(str(path))}")
            name = f"_regtorch_factory_{abs(hash(str(path.resolve())))}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise StudyError(f"{where}: {shown(ref)}: cannot load {shown(str(path))}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            module = _import_near(module_name, root)
    except StudyError:
        raise
    except Exception as error:  # the user's module: import errors and whatever it raises
        raise StudyError(f"{where}: cannot import {shown(ref)}: {type(error).__name__}: "
                         f"{_first_line(error)}") from None
    function = getattr(module, attr, None)
    if function is None:
        raise StudyError(f"{where}: cannot import {shown(ref)}: module {shown(module_name)} has no "
                         f"{shown(attr)}")
    if not callable(function):
        raise StudyError(f"{where}: {shown(ref)} is {_kind_of(function)}, not a function")
    return function


def _import_near(module_name: str, root: Path):
    """Import ``module_name``, looking in ``root`` first (a module next to the study file)."""
    entry = str(root.resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(entry)


# -- messages ----------------------------------------------------------------------------------
def _first_line(error: BaseException) -> str:
    """An outside error's message as quoted in ours: its first line, cut short."""
    return shown_text(str(error)) or type(error).__name__


def _kind_of(value: Any) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _of(name: str) -> str:
    return "" if name == "all" else f" of {shown(name)}"


def _listing(names: list[str], limit: int = 8) -> str:
    """Up to ``limit`` names (each cut short) for an error message, and how many there are."""
    listed = ", ".join(shown_text(name, _NAME_CHARS) for name in names[:limit])
    return listed + (f", … ({len(names)} in all)" if len(names) > limit else "")


_NAME_CHARS = 24  # characters of a column's or an array's name in a listing
