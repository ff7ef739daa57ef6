"""From records to answers: final-epoch means over seeds, λ chosen on validation, verdicts.

* **Per variant** (final epoch, over the seeds that did not diverge): mean and standard deviation
  (``ddof=1``) of the train / validation / test data losses, the means of the penalty, ‖w‖₂,
  sparsity and accuracies, the test/train ratio of the mean losses, and how many members diverged.
* **λ on validation.** A variant with several strengths keeps the one with the lowest mean final
  validation loss; the test set never chooses. The candidates are listed with their losses.
* **Verdicts** compare each variant with the baseline (the study's first variant) seed by seed —
  members with the same seed share init and batch order, so the differences are paired: a test
  loss "improved" when the mean paired difference is below zero by more than two standard errors
  (and by more than 1%), "worse" when above by as much, else "no clear change". The gap shrank when
  the test/train ratio is lower than the baseline's. They also say when training had not converged
  (train loss still falling more than 5% over the last tenth of the epochs, or, for a linear model
  with a closed-form optimum, parameters more than 1% away from it), when every penalized weight is
  exactly 0, when accuracy is at chance, and when members diverged. With one seed there is no
  standard error: the verdict gives the change and says that no significance can be claimed. A
  variant whose test accuracy is at chance has *collapsed*; its test/train ratio is not read as a
  smaller generalization gap.
* **Diverged** members: a non-finite loss (the engine's ``diverged``), or a *runaway* — a final
  train loss above :data:`RUNAWAY_FACTOR` (10⁶) times the member's own initial (epoch 0) train
  loss, finite but meaningless (e.g. 6.8e29). Either is left out of the means and counted.
* ``not_converged`` is what the verdict says: for a linear model with a closed-form optimum, more
  than 1% away from it; else the train loss still falling.
* **Warnings** raised while training (a group lasso with Adam's element-wise steps...) are
  ``warnings``, one line each (:mod:`regtorch.lab.caught`), and end the verdicts of the penalized
  variants of the group that raised them.
* **Notes** say which variants produced the same numbers (``wd-3`` and ``l2-3``), and for linear
  models with known true weights how well the support was recovered.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from regtorch.lab.analysis.numbers import fraction_text, loss_text, ratio_text, strength_text
from regtorch.lab.analysis.reference import ALPHA_PER_LAMBDA, lasso_comparison, lasso_reference
from regtorch.lab.schema import (
    ACC_KEYS,
    LOSS_KEYS,
    SPARSITY,
    STAT_KEYS,
    STOPPED_EPOCH,
    TEST_ACC,
    TEST_LOSS,
    TEST_TRAIN_RATIO,
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_LOSS_STD,
    WARNINGS_KEY,
    Record,
    Stats,
    StudySummary,
    std_key,
)
from regtorch.lab.study.models import LINEAR_BIAS, LINEAR_WEIGHT
from regtorch.lab.study.spec import Study, Variant
from regtorch.lab.train.engine import StudyResult

__all__ = ["final_stats", "group_warnings", "summarize"]

IMPROVEMENT_SES = 2.0      # a change counts when it exceeds two standard errors of the paired mean
MIN_RELATIVE_CHANGE = 0.01  # ... and 1% of the baseline
NOT_CONVERGED_DROP = 0.05   # train loss still falling by more than 5% over the last tenth
OPTIMUM_TOLERANCE = 0.01    # linear models: ‖θ − θ*‖ ≤ 1% of ‖θ*‖ counts as converged
RUNAWAY_FACTOR = 1e6       # a final train loss above 10⁶ × the member's initial one: diverged
SAME_RTOL = 1e-7            # "the same": float32 rounding (two runs that merely collapsed to
#                             the same constant predictor agree only to ~1e-6)


def summarize(result: StudyResult, warnings: Sequence[str] = ()) -> StudySummary:
    """The summary of a finished study (what ``summary.json`` holds; see the module docstring).

    ``warnings``: lines caught outside the training groups (loading the data,
    :func:`regtorch.lab.caught.caught_warnings`), listed after the groups' own
    (``GroupInfo.warnings``, which also end the verdicts of the variants they trained)."""
    study = result.study
    epochs = study.train.epochs
    finals: dict[tuple[str, float | None], list[dict]] = defaultdict(list)
    history: dict[tuple[str, float | None, int], dict[int, dict]] = defaultdict(dict)
    for row in result.records:
        history[(row["variant"], row["strength"], row["seed"])][row["epoch"]] = row
    for (name, strength, _seed), by_epoch in history.items():
        if epochs in by_epoch:
            finals[(name, strength)].append(_with_runaway(by_epoch[epochs], by_epoch.get(0)))

    variants: dict[str, dict[str, Any]] = {}
    chosen_rows: dict[str, list[dict]] = {}
    for variant in study.variants:
        strengths = [s if variant.penalty else None for s in variant.strengths]
        candidates = [final_stats(finals[(variant.name, s)], study) for s in strengths]
        best = _choose(candidates)
        entry = dict(candidates[best])
        entry["strength"] = strengths[best]
        if variant.tuned:
            entry["candidates"] = [
                {"strength": s, VAL_LOSS: c[VAL_LOSS], VAL_LOSS_STD: c[VAL_LOSS_STD],
                 TEST_LOSS: c[TEST_LOSS], "diverged": c["diverged"]}
                for s, c in zip(strengths, candidates)]
        rows = finals[(variant.name, strengths[best])]
        chosen_rows[variant.name] = rows
        if variant.early_stopping is not None:
            entry["stopped_epochs"] = [r.get(STOPPED_EPOCH, epochs)
                                       for r in sorted(rows, key=lambda r: r["seed"])]
        entry.update(_linear_extras(result, variant, strengths[best], rows))
        entry.update(_lasso_extras(result, variant, candidates, strengths[best]))
        entry.update(_zero_groups(result, variant, strengths[best], rows))
        distance = entry.get("optimum_distance")
        entry["not_converged"] = (distance > OPTIMUM_TOLERANCE if distance is not None
                                  else _still_falling(history, variant.name, strengths[best],
                                                      epochs))
        variants[variant.name] = entry

    baseline = study.variants[0].name
    # A group's warnings end the verdicts of its penalized variants (those of all its variants
    # when none is): an unpenalized variant stacked with them trains as a λ = 0 member, which
    # a penalty's warning (group lasso with Adam) does not concern.
    penalized = {v.name for v in study.variants if v.penalty is not None}
    warned: dict[str, list[str]] = defaultdict(list)
    for group in result.groups:
        names = [n for n in group["variants"] if n in penalized] or group["variants"]
        for name in names:
            warned[name] = _once([*warned[name], *group.get(WARNINGS_KEY, [])])
    for variant in study.variants:
        verdict = _verdict(study, variant, variants, chosen_rows, baseline,
                           classes=result.data.outputs)
        variants[variant.name]["verdict"] = " ".join(
            [verdict, *(f"Warned while training: {line}" for line in warned[variant.name])])
    return {"study": study.name, "seeds": study.seeds, "epochs": epochs, "baseline": baseline,
            "variants": variants,
            "notes": [*result.data.notes, *_notes(study, variants, chosen_rows)],
            WARNINGS_KEY: _once([*group_warnings(result), *warnings])}


def group_warnings(result: StudyResult) -> list[str]:
    """The warnings raised while ``result``'s groups trained (``GroupInfo.warnings``), each
    once, in order."""
    return _once([line for group in result.groups for line in group.get(WARNINGS_KEY, [])])


def _once(lines: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(lines))


# -- statistics --------------------------------------------------------------------------------
def final_stats(rows: list[Record], study: Study) -> Stats:
    """Means and standard deviations (``ddof=1``) of final-epoch records over the members that
    did not diverge, the test/train ratio of the mean losses, and how many diverged."""
    alive = [r for r in rows if not r["diverged"]]
    out: dict[str, Any] = {}
    for key in LOSS_KEYS:
        out[key], out[std_key(key)] = _mean_std([r[key] for r in alive])
    for key in STAT_KEYS:
        out[key], out[std_key(key)] = _mean_std([r[key] for r in alive])
    if study.classification:
        for key in ACC_KEYS:
            out[key], out[std_key(key)] = _mean_std([r[key] for r in alive])
    train, test = out[TRAIN_LOSS], out[TEST_LOSS]
    out[TEST_TRAIN_RATIO] = (test / train if train and test is not None and train > 0
                               else None)
    out["diverged"] = len(rows) - len(alive)
    return out


def _with_runaway(final: dict, initial: dict | None) -> dict:
    """``final``, marked diverged when its train loss ran away from the initial one (a copy; the
    records are not changed)."""
    loss, start = final[TRAIN_LOSS], None if initial is None else initial[TRAIN_LOSS]
    if (not final["diverged"] and loss is not None and start is not None and start > 0
            and loss > RUNAWAY_FACTOR * start):
        return {**final, "diverged": True}
    return final


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std


def _choose(candidates: list[dict[str, Any]]) -> int:
    """Index of the lowest mean validation loss (a candidate whose members all diverged loses)."""
    scored = [(c[VAL_LOSS], i) for i, c in enumerate(candidates) if c[VAL_LOSS] is not None]
    return min(scored)[1] if scored else 0


def _still_falling(history, name: str, strength, epochs: int) -> bool:
    """Mean train loss fell by more than 5% over the last tenth of the epochs."""
    back = max(1, epochs // 10)
    drops = []
    for (variant, lam, _seed), rows in history.items():
        if variant != name or lam != strength:
            continue
        last, before = rows.get(epochs, {}), rows.get(epochs - back, {})
        if last.get(TRAIN_LOSS) is not None and before.get(TRAIN_LOSS):
            drops.append(1 - last[TRAIN_LOSS] / before[TRAIN_LOSS])
    return bool(drops) and statistics.fmean(drops) > NOT_CONVERGED_DROP


# -- linear models: scikit-learn's lasso on the same split ------------------------------------
def _lasso_extras(result: StudyResult, variant: Variant, candidates: list[dict[str, Any]],
                  strength: float | None) -> dict[str, Any]:
    """``sklearn_lasso``: a tuned L1 variant of a linear regression (one target, mse or
    half-mse loss, every λ > 0) next to scikit-learn's ``lasso_path`` and ``LassoCV`` on the
    same train / validation split (:func:`regtorch.lab.analysis.reference.lasso_comparison`)."""
    study = result.study
    if (study.model.kind != "linear" or variant.penalty != "l1" or not variant.tuned
            or study.train.loss not in ALPHA_PER_LAMBDA or result.data.outputs != 1
            or study.classification or min(variant.strengths) <= 0 or strength is None):
        return {}
    weights = []
    for lam in variant.strengths:
        thetas = [t[LINEAR_WEIGHT].reshape(-1).double() for (name, s, _), t in
                  result.finals.items() if name == variant.name and s == lam]
        if not thetas:
            return {}
        weights.append(torch.stack(thetas).mean(dim=0).numpy())
    x, y = (t.double().numpy() for t in result.data.split("train"))
    xv, yv = (t.double().numpy() for t in result.data.split("val"))
    reference = lasso_reference(x, y, xv, yv, variant.strengths, study.train.loss)
    return {"sklearn_lasso": lasso_comparison(
        reference, weights, [c[VAL_LOSS] for c in candidates], strength,
        result.data.feature_names)}


# -- proximal group sparsity: whole groups exactly zero ------------------------------------
def _zero_groups(result: StudyResult, variant: Variant, strength: float | None,
                 rows: list[dict]) -> dict[str, Any]:
    """``zero_groups``: for a proximal ``group`` (or ``l1``) variant, per penalized tensor, the
    groups (slices along dim 0: conv filters, output units — entries for a 1-D tensor such as a
    BatchNorm scale) that are exactly 0, mean over the seeds that did not diverge."""
    if variant.apply != "prox" or variant.penalty not in ("group", "l1") or strength is None:
        return {}
    seeds = [r["seed"] for r in rows if not r["diverged"]]
    finals = [result.finals[(variant.name, strength, seed)] for seed in seeds]
    if not finals:
        return {}
    out: list[dict[str, Any]] = []
    for name, tensor in finals[0].items():
        if not _penalized(name, tensor, variant) or (variant.penalty == "l1"
                                                      and tensor.ndim != 1):
            continue  # an L1 on a matrix zeroes entries (the sparsity), not whole groups
        axis = 0 if variant.groups == "rows" or variant.penalty == "l1" else 1
        if tensor.ndim < 1 or (axis == 1 and tensor.ndim < 2):
            continue
        zeros = [float((t[name].movedim(axis, 0).reshape(t[name].shape[axis], -1) == 0)
                       .all(dim=1).sum()) for t in finals]
        out.append({"param": name, "zero": statistics.fmean(zeros),
                    "groups": int(tensor.shape[axis])})
    return {"zero_groups": out} if out else {}


def _penalized(name: str, tensor: torch.Tensor, variant: Variant) -> bool:
    """Whether ``variant``'s ``params`` picks parameter ``name`` (a name glob; ``weights``:
    matrices and conv kernels, as :data:`regtorch.WEIGHTS` selects them in the built-in models;
    ``all``: everything)."""
    if variant.params == "all":
        return True
    if variant.params == "weights":
        return tensor.ndim >= 2
    return fnmatch.fnmatchcase(name, variant.params)


# -- linear models: closed forms ---------------------------------------------------------------
def _linear_extras(result: StudyResult, variant: Variant, strength: float | None,
                   rows: list[dict]) -> dict[str, Any]:
    study = result.study
    if study.model.kind != "linear" or not rows or study.classification \
            or result.data.outputs != 1:  # the closed forms are for one regression target
        return {}
    thetas = [result.finals[(variant.name, strength if strength is not None else
                             variant.strengths[0], r["seed"])] for r in rows
              if not r["diverged"]]
    if not thetas:
        return {}
    weights = torch.stack([t[LINEAR_WEIGHT].reshape(-1).double() for t in thetas])
    biases = torch.stack([t[LINEAR_BIAS].reshape(-1).double() for t in thetas])
    out: dict[str, Any] = {}
    if weights.shape[1] == 1:
        out["slope"] = float(weights.mean())
        out["intercept"] = float(biases.mean())
    x, y = (t.double() for t in result.data.split("train"))
    scale = 1.0 if study.train.loss == "half-mse" else 2.0  # d/dŷ of the loss is scale·(ŷ − y)
    if variant.penalty == "l1" or (variant.penalty == "elasticnet" and variant.l1_ratio > 0):
        lam = (strength or 0.0) * (variant.l1_ratio if variant.penalty == "elasticnet" else 1.0)
        centered = y.reshape(-1) - y.mean()
        out["lambda_max"] = float((scale / x.shape[0]) * (x.T @ centered).abs().max())
        out["at_or_above_lambda_max"] = lam >= out["lambda_max"]
    optimum = _ridge_optimum(x, y, scale, variant, strength or 0.0)
    if optimum is not None:
        theta = torch.cat([weights, biases], dim=1)
        distance = (theta - optimum).norm(dim=1) / optimum.norm()
        out["optimum_distance"] = float(distance.mean())
        if weights.shape[1] == 1:
            out["optimum_slope"], out["optimum_intercept"] = float(optimum[0]), float(optimum[1])
    true_w = result.data.true_weights
    if getattr(study.data, "nonzeros", None) is not None and true_w is not None:
        truth = true_w.reshape(-1) != 0
        found = weights != 0
        hits = (found & truth).sum(1).double()
        out["support_precision"] = float((hits / found.sum(1).clamp(min=1)).mean())
        out["support_recall"] = float((hits / truth.sum()).mean())
        out["exact_zeros"] = float((~found).sum(1).double().mean())
    return out


def _ridge_optimum(x, y, scale: float, variant: Variant, strength: float):
    """argmin of loss + ½Σ λ_j θ_j² over θ = (w, b) for a linear model, when it is unique.

    ``scale/(2n)·‖Xθ − y‖²`` is the mean (half-)squared loss; λ_j is the variant's L2 strength
    and weight decay on the parameters it selects (weights, or weights and bias).
    """
    if variant.penalty not in (None, "l2"):
        return None
    n, d = x.shape
    lam = torch.zeros(d + 1, dtype=torch.float64)
    for value, params in ((strength if variant.penalty == "l2" else 0.0, variant.params),
                          (variant.weight_decay, variant.params)):
        if value:
            if params == "all":
                lam += value
            elif params == "weights":
                lam[:d] += value
            else:
                return None
    design = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    gram = (scale / n) * design.T @ design + torch.diag(lam)
    if torch.linalg.matrix_rank(gram) < d + 1:
        return None  # not unique (n < d without a penalty on every weight)
    return torch.linalg.solve(gram, (scale / n) * design.T @ y.reshape(-1))


# -- words -------------------------------------------------------------------------------------
def _verdict(study: Study, variant: Variant, variants: dict[str, dict], chosen: dict[str, list],
             baseline: str, classes: int) -> str:
    me = variants[variant.name]
    parts: list[str] = []
    if variant.tuned:
        lams = ", ".join(strength_text(s) for s in variant.strengths)
        parts.append(f"λ = {strength_text(me['strength'])} chosen on validation from [{lams}]")
        if me["strength"] in (min(variant.strengths), max(variant.strengths)):
            parts.append("at the edge of the grid: a wider grid may do better")
    if me[TRAIN_LOSS] is None:
        return "; ".join([*parts, f"all {me['diverged']} members diverged"]) + "."
    if variant.name == baseline:
        ratio = me[TEST_TRAIN_RATIO]
        parts.append("baseline" + (f": test/train = {ratio_text(ratio)}" if ratio is not None
                                   else ""))
    else:
        base = variants[baseline]
        collapsed = (study.classification and me.get(TEST_ACC) is not None
                     and me[TEST_ACC] <= 1.5 / classes)
        parts.append(f"collapsed to chance level (test accuracy {loss_text(me[TEST_ACC])}, 1/"
                     f"{classes} is chance): its test/train ratio is no smaller gap"
                     if collapsed else _gap_words(me, base))
        parts.append(_test_words(chosen[variant.name], chosen[baseline], me, base))
    if me["diverged"]:
        parts.append(f"{me['diverged']} of {study.seeds} members diverged")
    if me.get(SPARSITY) == 1.0:
        words = "every penalized weight is exactly 0: the model predicts a constant"
        if me.get("at_or_above_lambda_max"):
            words += (f" (λ = {strength_text(me['strength'])} ≥ λ_max = "
                      f"{loss_text(me['lambda_max'])}, where the "
                      f"exact solution is w = 0)")
        parts.append(words)
    elif me.get(SPARSITY):
        parts.append(f"{fraction_text(me[SPARSITY])} of the weights are exactly 0")
    if study.classification and me.get(TEST_ACC) is not None \
            and me[TEST_ACC] <= 1.5 / classes and variant.name == baseline:
        parts.append(f"test accuracy {loss_text(me[TEST_ACC])}: chance level (1/{classes})")
    for group in me.get("zero_groups", []):
        parts.append(f"{group['zero']:g} of {group['groups']} groups of {group['param']} are "
                     f"exactly 0")
    lasso = me.get("sklearn_lasso")
    if lasso:
        worst = max(row["max_coef_diff"] for row in lasso["rows"])
        alpha = ALPHA_PER_LAMBDA[study.train.loss]
        parts.append(f"scikit-learn's LassoCV on the same split chooses λ = "
                     f"{lasso['sklearn_best_lambda']:g} (α = {alpha:g}·λ); coefficients within "
                     f"{worst:.1e} of lasso_path")
    schedule = study.schedule_of(variant)
    if schedule.kind != "constant" and me.get("lr") is not None:
        if me["lr"] == study.train.lr:
            parts.append(f"the {schedule.kind} schedule never lowered the lr "
                         f"({study.train.lr:g})")
        else:
            parts.append(f"lr {study.train.lr:g} → {me['lr']:.3g} at the end")
    parts.append(_convergence_words(me, study))
    return "; ".join(p for p in parts if p) + "."


def _gap_words(me: dict, base: dict) -> str:
    mine, theirs = me[TEST_TRAIN_RATIO], base[TEST_TRAIN_RATIO]
    if mine is None or theirs is None:
        return ""
    ratios = f"test/train {ratio_text(mine)} vs {ratio_text(theirs)}"
    if abs(mine / theirs - 1) <= MIN_RELATIVE_CHANGE:
        return f"about the same generalization gap ({ratios})"
    if mine < theirs:
        return f"shrank the generalization gap ({ratios})"
    return f"did not shrink the generalization gap ({ratios})"


def _test_words(mine: list[dict], theirs: list[dict], me: dict, base: dict) -> str:
    """The paired change of the test loss; the losses quoted are the table's (the means over
    the members that did not diverge), written as the table writes them."""
    by_seed = {r["seed"]: r[TEST_LOSS] for r in theirs if r[TEST_LOSS] is not None}
    diffs = [r[TEST_LOSS] - by_seed[r["seed"]] for r in mine
             if r[TEST_LOSS] is not None and r["seed"] in by_seed]
    if not diffs or base[TEST_LOSS] is None or me[TEST_LOSS] is None:
        return ""
    mean = statistics.fmean(diffs)
    relative = mean / base[TEST_LOSS] if base[TEST_LOSS] else 0.0
    if len(diffs) == 1:
        return (f"test loss {loss_text(me[TEST_LOSS])} vs {loss_text(base[TEST_LOSS])} "
                f"({relative:+.0%}) on 1 seed: no significance can be claimed")
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    if abs(relative) > MIN_RELATIVE_CHANGE and abs(mean) > IMPROVEMENT_SES * se:
        word = "improved" if mean < 0 else "worsened"
        return (f"{word} test loss: {loss_text(me[TEST_LOSS])} vs {loss_text(base[TEST_LOSS])} "
                f"({relative:+.0%}, paired over {len(diffs)} seeds)")
    return f"no clear change in test loss ({relative:+.1%}, within the seeds' noise)"


def _convergence_words(me: dict, study: Study) -> str:
    words = []
    if "slope" in me:
        words.append(f"slope {me['slope']:.3f}, intercept {me['intercept']:.3f}")
        if "optimum_slope" in me:
            words[-1] += (f" (optimum {me['optimum_slope']:.3f}, "
                          f"{me['optimum_intercept']:.3f})")
    distance = me.get("optimum_distance")
    if distance is not None:
        if distance > OPTIMUM_TOLERANCE:
            words.append(f"not converged: {distance:.1%} from the closed-form optimum after "
                         f"{study.train.epochs} epochs")
        else:
            words.append("converged to the closed-form optimum")
    elif me.get("not_converged"):
        words.append("not converged: train loss still falling at the last epoch")
    return "; ".join(words)


def _notes(study: Study, variants: dict[str, dict], chosen: dict[str, list]) -> list[str]:
    notes = []
    names = [v.name for v in study.variants]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            gap = _max_relative_difference(chosen[a], chosen[b])
            if gap is not None and gap <= SAME_RTOL:
                notes.append(f"{b} and {a} give the same losses on every seed (largest relative "
                             f"difference {gap:.1e}).")
    for name, entry in variants.items():
        if "support_recall" in entry:
            notes.append(f"{name}: support precision {entry['support_precision']:.2f}, recall "
                         f"{entry['support_recall']:.2f}, {entry['exact_zeros']:.0f} exact zeros "
                         f"of {study.data.features} weights ({study.data.nonzeros} truly "
                         f"non-zero).")
    return notes


def _max_relative_difference(a: list[dict], b: list[dict]) -> float | None:
    theirs = {r["seed"]: r for r in b}
    worst = 0.0
    pairs = 0
    for row in a:
        other = theirs.get(row["seed"])
        if other is None:
            return None
        for key in LOSS_KEYS:
            x, y = row[key], other[key]
            if x is None or y is None:
                return None
            worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-300))
            pairs += 1
    return worst if pairs else None
