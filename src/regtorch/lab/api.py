"""The lab from Python (notebooks): :func:`run` a study, :func:`sweep` a penalty over λ.

The same engine, summaries and reports as the ``regtorch`` command — the same numbers for the
same study (tested) — on a preset, a study file or dict, or on your own model and data::

    import torch
    from torch import nn
    import regtorch.lab

    def make_model():                        # called once per init seed, under that seed
        return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

    x, y = torch.randn(300, 10), torch.randn(300, 1)
    path = regtorch.lab.sweep(model=make_model, data=(x, y), penalty="l2",
                              optimizer="adam", lr=1e-2, batch_size=32, epochs=20, seeds=3)
    path.best_lambda, path.lambda_1se        # chosen on the validation split
    path.table                               # one row per λ (a pandas DataFrame)
    path.figures()                           # matplotlib figures
    path.report("runs/my-sweep")             # the run directory and report.html

**Arguments** (keywords; each optional unless a study gives none):

* ``study``: a :class:`~regtorch.lab.study.Study`, a preset name, a ``.toml`` path or a dict in
  the file vocabulary. The other arguments then override its pieces.
* ``model``: a factory (a callable returning an ``nn.Module``, called once per init seed under
  ``torch.manual_seed(seed)``; it receives ``dropout=rate`` when a variant sets one) or a dict in
  the ``[model]`` vocabulary (``{"kind": "mlp", "hidden": [64]}``).
* ``data``: ``(X, y)`` (split into train / validation / test by the fractions ``val`` and ``test``,
  drawn from ``data_seed``, stratified for classification), ``{"train": (X, y), "val": (X, y),
  "test": (X, y)}`` (``val`` optional: drawn from train), a ``Datasets``, or a dict in the
  ``[data]`` vocabulary (any source of the study files). Arrays are tensors or NumPy arrays; an
  integer or string target is classification, a float one regression.
* ``loss`` (default: ``"cross-entropy"`` for classification, else ``"mse"``), ``optimizer``,
  ``lr``, ``momentum``, ``batch_size``, ``epochs``, ``dtype``, ``schedule``: the ``[train]``
  vocabulary.
* ``variants`` (:func:`run`): a list in the ``[[variants]]`` vocabulary (default: one
  unregularized variant); ``penalty``, ``lambdas`` (a list, or None: searched from λ_max),
  ``apply``, ``l1_ratio``, ``groups`` (:func:`sweep`).
* ``seeds``, ``data_seed``, ``memory`` (bytes or ``"512M"``), ``out`` (write the run directory and
  its report there, as the command does).

Errors are :class:`~regtorch.lab.study.StudyError` naming the argument and the value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import regtorch
from regtorch.lab.analysis.pruning import with_pruning
from regtorch.lab.analysis.summary import summarize
from regtorch.lab.analysis.sweep import (
    SweepSpec,
    default_apply,
    find_lambda_max,
    geometric_grid,
    path_study,
    summarize_sweep,
)
from regtorch.lab.caught import caught_warnings
from regtorch.lab.present import rundir
from regtorch.lab.study import Study, StudyError, parse_study, preset, preset_names, read_toml
from regtorch.lab.study.data import Datasets, make_data
from regtorch.lab.study.parse import parse_data, parse_model, parse_recipe, parse_variants
from regtorch.lab.study.sources import load_arrays
from regtorch.lab.study.spec import DataSpec, ModelSpec, shown
from regtorch.lab.train import StudyResult, run_study
from regtorch.lab.train.build import DTYPES
from regtorch.lab.train.memory import parse_memory

__all__ = ["StudyRun", "SweepRun", "run", "sweep"]

_TRAIN_KEYS = ("loss", "optimizer", "lr", "momentum", "batch_size", "epochs", "dtype", "schedule")


@dataclasses.dataclass
class StudyRun:
    """What :func:`run` returns: the trained study, its records and summary."""

    study: Study
    result: StudyResult
    summary: dict[str, Any]

    @property
    def records(self) -> list[dict[str, Any]]:
        """One record per member per epoch (:class:`regtorch.lab.schema.Record`)."""
        return list(self.result.records)

    @property
    def verdicts(self) -> dict[str, str]:
        """Each variant's verdict, in words."""
        return {name: v["verdict"] for name, v in self.summary["variants"].items()}

    @property
    def table(self):
        """The comparison table: one row per variant (a pandas DataFrame, index ``variant``)."""
        import pandas as pd  # the lab extra's; only tables need it

        rows = [{"variant": name, **{k: v for k, v in entry.items()
                                     if not isinstance(v, list | dict)}}
                for name, entry in self.summary["variants"].items()]
        return pd.DataFrame(rows).set_index("variant")

    def figures(self) -> dict[str, Any]:
        """The report's matplotlib figures by name (``loss``, ``weights``, ``accuracy``)."""
        from regtorch.lab.present.plots import study_figures  # matplotlib, on demand

        return study_figures(self.result.records, self.summary)

    def report(self, path: str | Path) -> Path:
        """Write the run directory (config, metrics, summary, plots, ``report.html``) at
        ``path``; return the report's path."""
        return _write(Path(path), self.study.to_dict(), self.result, self.summary)


@dataclasses.dataclass
class SweepRun:
    """What :func:`sweep` returns: the path of one penalty over λ, and the choices of λ."""

    study: Study
    spec: SweepSpec
    result: StudyResult
    summary: dict[str, Any]
    search_records: list[dict[str, Any]] | None = None

    @property
    def best_lambda(self) -> float | None:
        """The λ with the lowest mean validation loss."""
        return self.summary["best_lambda"]

    @property
    def lambda_1se(self) -> float | None:
        """The largest λ within one standard error of the best (glmnet's ``lambda.1se``)."""
        return self.summary["lambda_1se"]

    @property
    def lambda_max(self) -> float | None:
        """The searched λ_max (None for a given grid)."""
        return self.summary["lambda_max"]

    @property
    def table(self):
        """The path: one row per λ, ascending, then λ = 0 (a pandas DataFrame, index
        ``lambda``)."""
        import pandas as pd  # the lab extra's; only tables need it

        rows = [dict(entry) for entry in self.summary["path"]]
        rows.append({"lambda": 0.0, **self.summary["unregularized"]})
        return pd.DataFrame(rows).set_index("lambda")

    def figures(self) -> dict[str, Any]:
        """The report's matplotlib figures (``path_loss``, ``path_weights``...)."""
        from regtorch.lab.present.plots import path_figures  # matplotlib, on demand

        return path_figures(self.summary)

    def report(self, path: str | Path) -> Path:
        """Write the run directory and ``report.html`` at ``path``; return the report's path."""
        config = {**self.study.to_dict(), "sweep": self.spec.to_dict()}
        return _write(Path(path), config, self.result, self.summary, self.search_records)


def run(study: Study | str | Mapping[str, Any] | None = None, *,
        model: Callable[..., Any] | Mapping[str, Any] | None = None,
        data: Any = None, variants: Sequence[Mapping[str, Any]] | None = None,
        seeds: int | None = None, memory: int | str | None = None,
        out: str | Path | None = None, **pieces: Any) -> StudyRun:
    """Train a study and summarize it (see the module docstring for the arguments).

    Returns:
        a :class:`StudyRun`: ``summary``, ``table``, ``verdicts``, ``figures()``,
        ``report(path)``.
    """
    with caught_warnings() as warned:  # one line each in the summary, not printed raw
        base, datasets = _study(study, model=model, data=data, variants=variants, seeds=seeds,
                                **pieces)
        result = run_study(base, data=datasets, memory=_memory(memory))
    outcome = StudyRun(base, result, with_pruning(summarize(result, warned), result))
    if out is not None:
        outcome.report(out)
    return outcome


def sweep(study: Study | str | Mapping[str, Any] | None = None, *, penalty: str = "l2",
          lambdas: Sequence[float] | None = None, apply: str | None = None,
          l1_ratio: float | None = None, groups: str | None = None,
          model: Callable[..., Any] | Mapping[str, Any] | None = None, data: Any = None,
          seeds: int | None = None, memory: int | str | None = None,
          out: str | Path | None = None, **pieces: Any) -> SweepRun:
    """Train ``penalty`` over a grid of λ × seeds and choose λ on validation, as
    ``regtorch sweep`` does (the grid is searched from λ_max when ``lambdas`` is None).

    Returns:
        a :class:`SweepRun`: ``best_lambda``, ``lambda_1se``, ``table``, ``figures()``,
        ``report(path)``.
    """
    base, datasets = _study(study, model=model, data=data, variants=None, seeds=seeds,
                            **pieces)
    apply = apply or default_apply(penalty)
    grid = None
    if lambdas is not None:
        grid = tuple(sorted(float(v) for v in lambdas))
        if not grid or any(not v > 0 for v in grid):
            raise StudyError(f"lambdas: every λ must be > 0, got {shown(list(lambdas))}")
    spec = SweepSpec(penalty, apply, l1_ratio=l1_ratio, groups=groups, lambdas=grid)
    budget = _memory(memory)

    def train(study: Study, phase: str) -> StudyResult:
        return run_study(study, data=datasets, memory=budget)

    search = None
    with caught_warnings() as warned:  # one line each in the summary, not printed raw
        if grid is None:
            search = find_lambda_max(base, spec, train)
            grid = geometric_grid(search.lambda_max)
        result = train(path_study(base, spec, grid), "path")
    outcome = SweepRun(base, spec, result,
                       with_pruning(summarize_sweep(result, spec, base, search, warned), result),
                       None if search is None else search.records)
    if out is not None:
        outcome.report(out)
    return outcome


# -- the study from its pieces -------------------------------------------------------------------
def _study(study: Study | str | Mapping[str, Any] | None, *, model: Any, data: Any,
           variants: Sequence[Mapping[str, Any]] | None, seeds: int | None, name: str = "study",
           data_seed: int | None = None, val: float = 0.2, test: float = 0.2,
           **train: Any) -> tuple[Study, Datasets | None]:
    unknown = sorted(set(train) - set(_TRAIN_KEYS))
    if unknown:
        raise StudyError(f"unknown argument {shown(unknown[0])} (the [train] keys are "
                         f"{', '.join(_TRAIN_KEYS)})")
    base = _base(study, name)
    if data_seed is not None:
        base = dataclasses.replace(base, data_seed=data_seed)
    if train:  # before the data: the arrays are made in the recipe's dtype
        recipe = {**_recipe_dict(base), **train}
        base = dataclasses.replace(base, train=parse_recipe(recipe, "train"))
    datasets = None
    if data is not None:
        base, datasets = _with_data(base, data, val, test)
    if "loss" not in train and study is None and datasets is not None \
            and datasets.classification:
        recipe = {**_recipe_dict(base), "loss": "cross-entropy"}
        base = dataclasses.replace(base, train=parse_recipe(recipe, "train"))
    if model is not None:
        base = dataclasses.replace(base, model=_model(model))
    if variants is not None:
        base = dataclasses.replace(base, variants=parse_variants(list(variants), base.train))
    if seeds is not None:
        base = base.with_overrides(seeds=seeds)
    return base, datasets


def _base(study: Study | str | Mapping[str, Any] | None, name: str) -> Study:
    if isinstance(study, Study):
        return study
    if isinstance(study, Mapping):
        return parse_study(study, "study")
    if isinstance(study, str | Path):
        ref = str(study)
        if ref in preset_names():
            return preset(ref)
        return parse_study(read_toml(ref), ref, root=Path(ref).parent)
    if study is not None:
        raise StudyError(f"study: expected a Study, a preset name, a .toml path or a dict, got "
                         f"{type(study).__name__}")
    # No study: the pieces make it (data and model are given below).
    return parse_study({"name": name, "seeds": 5, "data": {"kind": "linear"},
                        "variants": [{"name": "none"}]}, "study")


def _with_data(base: Study, data: Any, val: float, test: float
               ) -> tuple[Study, Datasets | None]:
    if isinstance(data, Mapping) and "kind" in data:  # a [data] table: any source
        spec = parse_data(data)
        return (dataclasses.replace(base, data=spec),
                make_data(spec, base.data_seed, DTYPES[base.train.dtype]))
    if isinstance(data, Datasets):
        datasets = data
    else:
        datasets = load_arrays(data, base.data_seed, DTYPES[base.train.dtype], val=val,
                               test=test)
    sizes = {split: datasets.split(split)[0].shape[0] for split in ("train", "val", "test")}
    spec = DataSpec("arrays", features=datasets.features, **sizes)
    return dataclasses.replace(base, data=spec), datasets


def _model(model: Any) -> ModelSpec:
    if callable(model):
        return ModelSpec("python", factory=model)
    if isinstance(model, Mapping):
        return parse_model(model)
    raise StudyError(f"model: expected a factory (a callable returning an nn.Module) or a "
                     f"[model] dict, got {type(model).__name__}")


def _recipe_dict(base: Study) -> dict[str, Any]:
    return base.to_dict()["train"]


def _memory(memory: int | str | None) -> int | None:
    if memory is None:
        return None
    try:
        return parse_memory(memory)
    except ValueError as error:
        raise StudyError(str(error).replace("--memory", "memory")) from None


def _write(directory: Path, config: dict[str, Any], result: StudyResult,
           summary: dict[str, Any], search: list[dict[str, Any]] | None = None) -> Path:
    from regtorch.lab.present.report import write_report  # matplotlib, on demand

    directory.mkdir(parents=True, exist_ok=True)
    config = {**config, "run": {"torch": str(torch.__version__),
                                "regtorch": regtorch.__version__, "groups": result.groups}}
    rundir.write_results(directory, config, result.records, summary, search=search)
    return write_report(directory)
