r"""Regularization paths: one penalty at many strengths λ × seeds, and the λ to choose.

A sweep takes a study's data, model and training recipe and trains one penalty at every λ of a
grid, × the study's seeds, plus the unregularized model (λ = 0, the reference), all as members of
one vectorized group (:mod:`regtorch.lab.train.engine`). The **path** is the final train,
validation and test loss, ‖w‖₂ and sparsity at each λ, mean ± std over the seeds that did not
diverge.

**The grid.** Given (``a:b:n``, ``n`` values log-spaced from ``a`` to ``b``, or a list), or else
found as glmnet does: from a λ_max down to λ_max/100 (:data:`GRID_RATIO`) in :data:`GRID_POINTS`
geometric steps. glmnet computes λ_max in closed form for the lasso; for an arbitrary model and
penalty it is found by a short search, one seed:

1. λ = 10⁻⁵, 10⁻⁴, …, 10⁴ (:data:`SEARCH_DECADES`) with the reference, in one pass;
2. three quarter-decade points below the first decade that qualifies, in a second pass.

λ_max is the smallest λ searched at which the penalized weights are ~0 (‖w‖₂ at most
:data:`ZERO_FRACTION` of the unregularized model's) or the validation loss has stopped changing
(within :data:`FLAT_RTOL` of the most regularized model's, at that λ and every larger one).
Members that diverge (large λ with a plain gradient step: lr·λ > 2 for SGD and L2) are marked and
left out, never fatal; when no λ qualifies, the largest that did not diverge is used.

**The choice**, on validation only — the test set never chooses:

* ``best_lambda``: the lowest mean validation loss;
* ``lambda_1se``: the largest λ whose mean validation loss is within one standard error of the
  best one's, :math:`\bar v(\lambda) \le \bar v_{best} + s_{best}/\sqrt{k}` (``k`` seeds that did
  not diverge at the best λ): glmnet's ``lambda.1se``, the most regularized model that is not
  significantly worse.

A λ at which any member diverged is not chosen. The test loss at both choices and at λ = 0 is
reported. ``summary.json`` of a sweep::

    {"kind": "sweep", "study", "base", "penalty", "apply", "params", "l1_ratio", "groups",
     "seeds", "epochs", "grid": "given" | "searched", "lambda_max", "lambda_max_rule",
     "search": [{"lambda", "val_loss", "weight_norm", "sparsity", "diverged"}, ...],
     "path": [{"lambda", "members", "diverged", "<key>", "<key>_std" for the losses, accuracies,
               penalty, weight_norm, sparsity, lr; "val_loss_se", "test_train_ratio"}, ...],
     "unregularized": {the same, for λ = 0}, "best_lambda", "lambda_1se",
     "best": {path entry}, "one_se": {path entry}, "notes": [...],
     "warnings": [one line per warning raised while training]}
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from regtorch.lab.analysis.numbers import lambda_text, loss_text
from regtorch.lab.analysis.summary import final_stats, group_warnings
from regtorch.lab.schema import (
    SPARSITY,
    VAL_LOSS,
    VAL_LOSS_SE,
    VAL_LOSS_STD,
    WARNINGS_KEY,
    WEIGHT_NORM,
    Entry,
    Record,
    SearchPoint,
    SweepSummary,
)
from regtorch.lab.study.spec import Study, StudyError, Variant, shown
from regtorch.lab.train.engine import StudyResult

__all__ = [
    "FLAT_RTOL",
    "GRID_POINTS",
    "GRID_RATIO",
    "REFERENCE",
    "SEARCH_DECADES",
    "SWEEP_PENALTIES",
    "ZERO_FRACTION",
    "Search",
    "SweepSpec",
    "default_apply",
    "find_lambda_max",
    "geometric_grid",
    "geometric_points",
    "parse_lambdas",
    "path_study",
    "summarize_sweep",
    "sweep_name",
]

GRID_POINTS = 16          # glmnet's convention of a 100× range, in 12–20 points
GRID_RATIO = 100.0        # λ_min = λ_max / 100
SEARCH_DECADES = tuple(10.0 ** k for k in range(-5, 5))   # the first pass: 1e-5 … 1e4
SEARCH_REFINE = (-0.75, -0.5, -0.25)  # the second pass: λ·10^(these) below the decade found
ZERO_FRACTION = 1e-3      # ‖w‖ ≤ 0.1% of the unregularized ‖w‖ counts as ~0
FLAT_RTOL = 0.01          # validation loss within 1% of the most regularized one's: flat
MAX_LAMBDAS = 200         # --lambdas: each λ is `seeds` trainings; glmnet's paths are ≤ 100
REFERENCE = "unregularized"
SWEEP_PENALTIES = ("l1", "l2", "elasticnet", "group", "channels")
DEFAULT_L1_RATIO = 0.5     # elasticnet: l1 = ρ·λ, l2 = (1 − ρ)·λ
DEFAULT_GROUPS = "rows"


def default_apply(penalty: str) -> str:
    """How a penalty acts unless told: ``"prox"`` for the sparse ones (l1, elasticnet, group:
    exact zeros, so the sparsity path means something), ``"gradient"`` for l2."""
    return "gradient" if penalty == "l2" else "prox"


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep trains: the penalty, how it is applied, and the grid (None: searched)."""

    penalty: str
    apply: str = "gradient"
    params: str = "weights"
    l1_ratio: float | None = None
    groups: str | None = None
    lambdas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.penalty not in SWEEP_PENALTIES:
            raise StudyError(f"--penalty: unknown penalty {shown(self.penalty)} (expected one of "
                             f"{', '.join(SWEEP_PENALTIES)})")
        if self.apply not in ("gradient", "prox"):
            raise StudyError(f"--apply: expected 'gradient' or 'prox', got {shown(self.apply)}")
        if self.l1_ratio is not None and (self.penalty != "elasticnet"
                                          or not 0 <= self.l1_ratio <= 1):
            raise StudyError(f"--l1-ratio {shown(self.l1_ratio)}: only for --penalty elasticnet, "
                             f"in [0, 1]")
        if self.groups is not None and (self.penalty != "group"
                                        or self.groups not in ("rows", "columns")):
            raise StudyError(f"--groups {shown(self.groups)}: only for --penalty group, 'rows' or "
                             f"'columns'")

    def variant(self, strengths: tuple[float, ...]) -> Variant:
        """The swept variant, named after the penalty, at ``strengths``."""
        return Variant(name=self.penalty, penalty=self.penalty, strengths=strengths,
                       apply=self.apply, params=self.params,
                       l1_ratio=DEFAULT_L1_RATIO if self.l1_ratio is None else self.l1_ratio,
                       groups=self.groups or DEFAULT_GROUPS)

    def to_dict(self) -> dict[str, Any]:
        return {"penalty": self.penalty, "apply": self.apply, "params": self.params,
                "l1_ratio": self.l1_ratio, "groups": self.groups,
                "lambdas": None if self.lambdas is None else list(self.lambdas)}


def parse_lambdas(text: str) -> tuple[float, ...]:
    """``--lambdas``: ``a:b:n`` (n values log-spaced from a to b) or ``v1,v2,...``; ascending.

    Raises:
        StudyError: malformed, a λ that is not a positive finite number, ``n < 1``, more than
            :data:`MAX_LAMBDAS` values, or a repeat.
    """
    where = f"--lambdas {shown(text)}"
    try:
        if ":" in text:
            a, b, n = text.split(":")
            ends, count = [float(a), float(b)], int(n)
        else:
            values = [float(v) for v in text.split(",")]
            ends, count = None, len(values)
    except ValueError:
        raise StudyError(f"{where}: expected a:b:n (n values log-spaced from a to b) or "
                         f"v1,v2,...") from None
    if count < 1:
        raise StudyError(f"{where}: the number of points must be >= 1, got {count}")
    if count > MAX_LAMBDAS:
        raise StudyError(f"{where}: at most {MAX_LAMBDAS} values of λ (each is --seeds "
                         f"trainings), got {count}")
    if ends is not None:
        values = geometric_points(*ends, count) if _positive(*ends) else ends
    for value in values:
        if not _positive(value):
            raise StudyError(f"{where}: every λ must be finite and > 0, got {shown(value)} (λ = 0 "
                             f"is always trained, as the reference)")
    if len(set(values)) != len(values):
        raise StudyError(f"{where}: repeated value")
    return tuple(sorted(values))


def _positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def geometric_points(a: float, b: float, n: int) -> list[float]:
    """``n`` values log-spaced from ``a`` to ``b`` (both included; ``n = 1``: ``[a]``)."""
    if n == 1:
        return [a]
    step = math.log(b / a) / (n - 1)
    return [a if i == 0 else b if i == n - 1 else a * math.exp(step * i) for i in range(n)]


def geometric_grid(lambda_max: float, points: int = GRID_POINTS, ratio: float = GRID_RATIO
                   ) -> tuple[float, ...]:
    """glmnet's grid: ``points`` values from ``lambda_max / ratio`` to ``lambda_max``,
    ascending, log-spaced."""
    return tuple(geometric_points(lambda_max / ratio, lambda_max, points))


def sweep_name(base: Study, spec: SweepSpec) -> str:
    """The sweep's directory and study name: ``<study>-sweep-<penalty>``, then what differs from
    the sweep's defaults, so that variants of a sweep sit side by side: ``-prox`` or
    ``-gradient`` (``--apply`` other than :func:`default_apply`), ``-r<R>`` (``--l1-ratio``
    other than 0.5), ``-cols`` (``--groups columns``), ``-params-<glob>`` (the Python API's
    ``params`` other than ``weights``).

    >>> from regtorch.lab.study import preset
    >>> study = preset("digits")
    >>> sweep_name(study, SweepSpec("l1", "prox")), sweep_name(study, SweepSpec("l1", "gradient"))
    ('digits-sweep-l1', 'digits-sweep-l1-gradient')
    >>> sweep_name(study, SweepSpec("elasticnet", "prox", l1_ratio=0.25))
    'digits-sweep-elasticnet-r0.25'
    >>> sweep_name(study, SweepSpec("group", "gradient", groups="columns"))
    'digits-sweep-group-gradient-cols'
    """
    name = f"{base.name}-sweep-{spec.penalty}"
    if spec.apply != default_apply(spec.penalty):
        name += f"-{spec.apply}"
    if spec.l1_ratio is not None and spec.l1_ratio != DEFAULT_L1_RATIO:
        name += f"-r{spec.l1_ratio:g}"
    if (spec.groups or DEFAULT_GROUPS) != DEFAULT_GROUPS:
        name += "-cols" if spec.groups == "columns" else f"-{spec.groups}"
    if spec.params != "weights":
        name += "-params-" + "".join(c if c.isalnum() or c in "._-" else "_"
                                     for c in spec.params)
    return name


def path_study(base: Study, spec: SweepSpec, lambdas: tuple[float, ...], *,
               seeds: int | None = None, name: str | None = None) -> Study:
    """``base``'s data, model and recipe with two variants: the reference (λ = 0) and the
    penalty at every λ of ``lambdas``."""
    return replace(base, name=name or sweep_name(base, spec),
                   description=f"{spec.penalty} path of {base.name}",
                   seeds=seeds or base.seeds,
                   variants=(Variant(REFERENCE), spec.variant(tuple(lambdas))))


# -- λ_max -------------------------------------------------------------------------------------
@dataclass
class Search:
    """What :func:`find_lambda_max` found: λ_max, the rule that chose it, every point tried."""

    lambda_max: float
    rule: str
    points: list[dict[str, Any]]
    records: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)  # raised while the search trained


def find_lambda_max(base: Study, spec: SweepSpec,
                    train: Callable[[Study, str], StudyResult]) -> Search:
    """Search λ_max for ``spec`` on ``base`` with one seed (see the module docstring).

    Args:
        base: the study whose data, model and recipe are swept.
        spec: the penalty.
        train: runs a study and returns its result, given the study and a phase name
            (``"search-1"``, ``"search-2"``): the caller adds progress and checkpoints.

    Raises:
        StudyError: every member of the search diverged, the unregularized one included.
    """
    first = train(path_study(base, spec, SEARCH_DECADES, seeds=1,
                             name=f"{sweep_name(base, spec)}-search"), "search-1")
    reference = _final(first, REFERENCE, None)
    points = _search_points(first, spec)
    records = list(first.records)
    warned = group_warnings(first)
    found, _ = _qualifying(points, reference)
    below = [p["lambda"] for p in points if p["lambda"] < found] if found else []
    if found is not None and below:
        refine = tuple(found * 10.0 ** k for k in SEARCH_REFINE)
        second = train(path_study(base, spec, refine, seeds=1,
                                  name=f"{sweep_name(base, spec)}-search-2"), "search-2")
        points = sorted(points + _search_points(second, spec), key=lambda p: p["lambda"])
        records += second.records
        warned += group_warnings(second)
    found, rule = _qualifying(points, reference)
    if found is None:
        alive = [p["lambda"] for p in points if not p["diverged"]]
        if not alive:
            raise StudyError(f"sweep of {shown(base.name)}: every λ of the search diverged (the "
                             f"recipe's lr may be too large); give --lambdas")
        found, rule = max(alive), "the largest λ searched that did not diverge"
    return Search(found, rule, points, records, warned)


def _search_points(result: StudyResult, spec: SweepSpec) -> list[SearchPoint]:
    points = []
    for lam in result.study.variants[1].strengths:
        row = _final(result, spec.penalty, lam)
        points.append({"lambda": lam, VAL_LOSS: row[VAL_LOSS],
                       WEIGHT_NORM: row[WEIGHT_NORM], SPARSITY: row[SPARSITY],
                       "diverged": row["diverged"]})
    return points


def _final(result: StudyResult, variant: str, strength: float | None) -> Record:
    epochs = result.study.train.epochs
    return next(r for r in result.records if r["variant"] == variant and r["epoch"] == epochs
                and r["strength"] == strength)


def _qualifying(points: list[dict[str, Any]], reference: dict[str, Any]
                ) -> tuple[float | None, str]:
    """The smallest λ whose weights are ~0 or whose validation loss is flat, and the rule."""
    alive = sorted((p for p in points if not p["diverged"]), key=lambda p: p["lambda"])
    if not alive:
        return None, ""
    norm0 = None if reference["diverged"] else reference[WEIGHT_NORM]
    top = alive[-1][VAL_LOSS]
    for i, p in enumerate(alive):
        if norm0 is not None and p[WEIGHT_NORM] <= ZERO_FRACTION * norm0:
            return p["lambda"], f"penalized weights ~0 (‖w‖ ≤ {ZERO_FRACTION:.1%} of λ = 0's)"
        if i < len(alive) - 1 and all(abs(q[VAL_LOSS] - top) <= FLAT_RTOL * top
                                      for q in alive[i:]):
            return p["lambda"], (f"validation loss flat (within {FLAT_RTOL:.0%} of the largest "
                                 f"λ's from here on)")
    return None, ""


# -- the path and the choice -------------------------------------------------------------------
def summarize_sweep(result: StudyResult, spec: SweepSpec, base: Study,
                    search: Search | None = None, warnings: Sequence[str] = ()) -> SweepSummary:
    """The sweep's ``summary.json`` (schema in the module docstring); ``warnings``: lines
    caught outside the training groups (loading the data), listed after the groups'."""
    study = result.study
    epochs = study.train.epochs
    finals: dict[float | None, list[dict]] = defaultdict(list)
    for row in result.records:
        if row["epoch"] == epochs:
            finals[row["strength"] if row["variant"] == spec.penalty else None].append(row)
    path = [{"lambda": lam, **_entry(finals[lam], study)} for lam in study.variants[1].strengths]
    reference = _entry(finals[None], study)
    eligible = [p for p in path if p[VAL_LOSS] is not None and not p["diverged"]]
    best = min(eligible, key=lambda p: p[VAL_LOSS]) if eligible else None
    one_se = None
    if best is not None:
        threshold = best[VAL_LOSS] + best[VAL_LOSS_SE]
        one_se = max((p for p in eligible if p[VAL_LOSS] <= threshold),
                     key=lambda p: p["lambda"])
    return {
        "kind": "sweep", "study": study.name, "base": base.name, **_spec_fields(spec),
        "seeds": study.seeds, "epochs": epochs,
        "grid": "given" if search is None else "searched",
        "lambda_max": None if search is None else search.lambda_max,
        "lambda_max_rule": None if search is None else search.rule,
        "search": [] if search is None else search.points,
        "path": path, "unregularized": reference,
        "best_lambda": None if best is None else best["lambda"],
        "lambda_1se": None if one_se is None else one_se["lambda"],
        "best": best, "one_se": one_se,
        "notes": _notes(path, reference, best, one_se, study.seeds, searched=search is not None),
        WARNINGS_KEY: list(dict.fromkeys([*(search.warnings if search is not None else []),
                                           *group_warnings(result), *warnings])),
    }


def _spec_fields(spec: SweepSpec) -> dict[str, Any]:
    fields = spec.to_dict()
    del fields["lambdas"]
    return fields


def _entry(rows: list[Record], study: Study) -> Entry:
    stats = final_stats(rows, study)
    alive = len(rows) - stats["diverged"]
    std = stats[VAL_LOSS_STD]
    stats[VAL_LOSS_SE] = None if std is None else std / math.sqrt(alive)
    stats["members"] = len(rows)
    return stats


def _notes(path: list[dict], reference: dict, best: dict | None, one_se: dict | None,
           seeds: int, *, searched: bool) -> list[str]:
    notes = []
    diverged = [p["lambda"] for p in path if p["diverged"]]
    if diverged:
        notes.append(f"diverged (left out of the choice): λ = "
                     f"{', '.join(lambda_text(lam) for lam in diverged)}")
    if best is None:
        notes.append("no λ of the path trained without diverging: nothing to choose")
        return notes
    lams = [p["lambda"] for p in path]
    if best["lambda"] == lams[0] and len(lams) > 1:
        notes.append("best_lambda is the smallest λ of the grid: a smaller λ may do better "
                     "(extend the grid downwards)")
    if best["lambda"] == lams[-1] and len(lams) > 1:
        notes.append("best_lambda is λ_max, where the penalized weights are ~0 or the "
                     "validation loss no longer changes: on validation, the model does best "
                     "with these weights (almost) switched off" if searched else
                     "best_lambda is the largest λ of the grid: a larger λ may do better "
                     "(extend the grid upwards)")
    if reference[VAL_LOSS] is not None and reference[VAL_LOSS] < best[VAL_LOSS]:
        notes.append(f"λ = 0 has a lower validation loss ({loss_text(reference[VAL_LOSS])}) than "
                     f"every λ of the path: this penalty does not help here")
    if seeds == 1:
        notes.append("one seed: no standard error, so lambda_1se = best_lambda")
    elif one_se is not None and one_se["lambda"] == best["lambda"]:
        notes.append("no larger λ is within one standard error of the best: lambda_1se = "
                     "best_lambda")
    return notes
