"""Verdicts that say what the numbers allow: one seed claims no significance, a runaway loss is a
divergence, a collapse to chance is called so, and ``not_converged`` is what the verdict says."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from regtorch.lab.analysis.summary import OPTIMUM_TOLERANCE, RUNAWAY_FACTOR, summarize
from regtorch.lab.present.tables import table_rows
from regtorch.lab.study.presets import preset
from regtorch.lab.train import run_study


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def linear_one_seed():
    return run_study(preset("linear-1d").with_overrides(seeds=1, epochs=3))


@pytest.fixture(scope="module")
def linear_two_seeds():
    return run_study(preset("linear-1d").with_overrides(seeds=2, epochs=3))


def test_one_seed_claims_no_significance(linear_one_seed):
    verdict = summarize(linear_one_seed)["variants"]["wd-0.01"]["verdict"]
    assert "on 1 seed: no significance can be claimed" in verdict
    assert "paired over" not in verdict and "1 seeds" not in verdict


@pytest.mark.parametrize("factor", [RUNAWAY_FACTOR * 10, RUNAWAY_FACTOR / 10],
                         ids=["runaway", "large-but-not-runaway"])
def test_a_runaway_loss_marks_the_member_diverged(linear_two_seeds, factor):
    result = linear_two_seeds
    epochs = result.study.train.epochs
    initial = next(r["train_loss"] for r in result.records
                   if (r["variant"], r["seed"], r["epoch"]) == ("none", 1, 0))
    records = [{**r, "train_loss": initial * factor}
               if (r["variant"], r["seed"], r["epoch"]) == ("none", 1, epochs) else r
               for r in result.records]
    summary = summarize(dataclasses.replace(result, records=records))
    none = summary["variants"]["none"]
    seed0 = next(r["train_loss"] for r in records
                 if (r["variant"], r["seed"], r["epoch"]) == ("none", 0, epochs))
    if factor > RUNAWAY_FACTOR:
        assert none["diverged"] == 1
        assert none["train_loss"] == seed0  # the mean over the member that did not run away
        assert "1 of 2 members diverged" in none["verdict"]
    else:
        assert none["diverged"] == 0
        assert none["train_loss"] == pytest.approx((seed0 + initial * factor) / 2, rel=1e-12)
    assert [r for r in result.records if r["train_loss"] == initial * factor] == []  # untouched


def test_a_collapse_to_chance_is_not_a_smaller_gap():
    study = preset("digits")
    study = dataclasses.replace(study, seeds=2, variants=tuple(
        v for v in study.variants if v.name in ("none", "wd-10000"))).with_overrides(epochs=2)
    summary = summarize(run_study(study))
    collapsed = summary["variants"]["wd-10000"]
    assert collapsed["test_acc"] <= 1.5 / 10
    assert collapsed["verdict"].startswith(
        f"collapsed to chance level (test accuracy {collapsed['test_acc']:.4g}, 1/10 is chance)")
    assert "shrank" not in collapsed["verdict"]


@pytest.mark.parametrize("epochs", [3, 100])
def test_not_converged_is_what_the_verdict_says(epochs):
    summary = summarize(run_study(preset("linear-1d").with_overrides(seeds=2, epochs=epochs)))
    for name, entry in summary["variants"].items():
        assert entry["not_converged"] == (entry["optimum_distance"] > OPTIMUM_TOLERANCE), name
        assert entry["not_converged"] == ("not converged" in entry["verdict"]), name


def _cells(summary):
    headers, rows = table_rows(summary)
    return {row[0]: {h: cell.split(" ± ")[0] for h, cell in zip(headers, row)} for row in rows}


def _assert_verdicts_quote_the_table(summary):
    """Every number a verdict quotes from the table is written as the table writes it."""
    cells = _cells(summary)
    base = cells[summary["baseline"]]
    quoted = 0
    for name, entry in summary["variants"].items():
        verdict, mine = entry["verdict"], cells[name]
        for pattern, expected in (
                (r"test loss:? (\S+) vs (\S+) ", (mine["test loss"], base["test loss"])),
                (r"test/train (\S+) vs (\S+)\)", (mine["test/train"], base["test/train"])),
                (r"test/train = (\S+?)(?:;|\.$)", (mine["test/train"],)),
                (r"(\S+) of the weights are exactly 0", (mine["sparsity"],)),
                (r"test accuracy (\S+?)[,:]", (mine.get("test acc"),)),
                (r"λ = (\S+) chosen", (mine["λ"],))):
            for match in re.finditer(pattern, verdict):
                assert match.groups() == expected, (name, pattern, verdict)
                quoted += 1
    return quoted


def test_verdicts_round_as_the_table_does(linear_one_seed, linear_two_seeds):
    quoted = sum(_assert_verdicts_quote_the_table(summarize(result))
                 for result in (linear_one_seed, linear_two_seeds))
    study = preset("sparse-recovery")
    study = dataclasses.replace(study, variants=study.variants[:1] + tuple(
        v for v in study.variants if v.apply == "prox")[:1]).with_overrides(seeds=2, epochs=3)
    summary = summarize(run_study(study))
    assert any("of the weights are exactly 0" in v["verdict"]
               for v in summary["variants"].values()), summary
    quoted += _assert_verdicts_quote_the_table(summary)
    assert quoted >= 6
