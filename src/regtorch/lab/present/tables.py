"""The lab's tables as rows of strings: the comparison table of a study, the path table and the
choices of λ of a sweep. The console (:mod:`regtorch.lab.present.console`) and the HTML reports
(:mod:`regtorch.lab.present.report`) show the same rows. Numbers are written by
:mod:`regtorch.lab.analysis.numbers`, as the verdicts write them.
"""

from __future__ import annotations

from typing import Any

from regtorch.lab.analysis.numbers import (
    fraction_text,
    lambda_text,
    mean_std_text,
    ratio_text,
    strength_text,
)
from regtorch.lab.schema import (
    LOSS_KEYS,
    SPARSITY,
    TEST_ACC,
    TEST_ACC_STD,
    TEST_LOSS,
    TEST_LOSS_STD,
    TEST_TRAIN_RATIO,
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_LOSS_STD,
    WEIGHT_NORM,
    std_key,
)

__all__ = ["choice_rows", "mean_std_text", "path_rows", "table_rows"]


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the comparison table (mean ± std over seeds, final epoch)."""
    variants = summary["variants"]
    accuracy = any(TEST_ACC in v for v in variants.values())
    headers = ["variant", "λ", "train loss", "val loss", "test loss", "test/train"]
    headers += ["test acc"] if accuracy else []
    headers += ["‖w‖", SPARSITY, "diverged"]
    rows = []
    for name, v in variants.items():
        row = [name, "" if v.get("strength") is None else strength_text(v["strength"])]
        row += [mean_std_text(v[k], v[std_key(k)]) for k in LOSS_KEYS]
        row.append("" if v[TEST_TRAIN_RATIO] is None else ratio_text(v[TEST_TRAIN_RATIO]))
        if accuracy:
            row.append(mean_std_text(v.get(TEST_ACC), v.get(TEST_ACC_STD)))
        row += [mean_std_text(v[WEIGHT_NORM], v.get(std_key(WEIGHT_NORM))),
                "" if v[SPARSITY] is None else fraction_text(v[SPARSITY]),
                f"{v['diverged']}/{summary['seeds']}"]
        rows.append(row)
    return headers, rows


def path_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the path table: one row per λ (ascending), then λ = 0."""
    accuracy = any(TEST_ACC in p for p in summary["path"])
    headers = ["λ", "train loss", "val loss", "test loss"]
    headers += ["test acc"] if accuracy else []
    headers += ["‖w‖", SPARSITY, "diverged", "chosen"]
    marks: dict[float, str] = {}
    for key, label in (("best_lambda", "best"), ("lambda_1se", "1se")):
        if summary.get(key) is not None:
            marks[summary[key]] = (marks.get(summary[key], "") + " " + label).strip()
    rows = []
    entries = [(p["lambda"], p, marks.get(p["lambda"], "")) for p in summary["path"]]
    entries.append((0.0, summary["unregularized"], "reference"))
    for lam, p, mark in entries:
        row = [lambda_text(lam)]
        row += [mean_std_text(p.get(k), p.get(std_key(k)))
                for k in (TRAIN_LOSS, VAL_LOSS, TEST_LOSS)]
        if accuracy:
            row.append(mean_std_text(p.get(TEST_ACC), p.get(TEST_ACC_STD)))
        row += [mean_std_text(p.get(WEIGHT_NORM), p.get(std_key(WEIGHT_NORM))),
                "—" if p.get(SPARSITY) is None else fraction_text(p[SPARSITY]),
                f"{p['diverged']}/{p['members']}", mark]
        rows.append(row)
    return headers, rows


def choice_rows(summary: dict[str, Any]) -> list[list[str]]:
    """``[choice, λ, validation loss, test loss]`` for best_lambda, lambda_1se and λ = 0."""
    rows = []
    for name, lam, entry in (("best_lambda", summary.get("best_lambda"), summary.get("best")),
                             ("lambda_1se", summary.get("lambda_1se"), summary.get("one_se")),
                             ("λ = 0", 0.0, summary.get("unregularized"))):
        entry = entry or {}
        rows.append([name, "—" if lam is None else lambda_text(lam),
                     mean_std_text(entry.get(VAL_LOSS), entry.get(VAL_LOSS_STD)),
                     mean_std_text(entry.get(TEST_LOSS), entry.get(TEST_LOSS_STD))])
    return rows
