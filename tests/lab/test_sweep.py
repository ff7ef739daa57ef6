"""Sweeps: the grid, λ_max, the glmnet-style choice of λ, and the d2l path end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from regtorch.lab.analysis.sweep import (
    REFERENCE,
    SweepSpec,
    find_lambda_max,
    geometric_grid,
    parse_lambdas,
    path_study,
    summarize_sweep,
    sweep_name,
)
from regtorch.lab.cli import main
from regtorch.lab.present.tables import path_rows
from regtorch.lab.study import StudyError, parse_study
from regtorch.lab.study.presets import preset
from regtorch.lab.train.engine import StudyResult, run_study

RTOL = 1e-12  # float64 arithmetic on the same few values


# -- the grid ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("0.01:1:3", [0.01, 0.1, 1.0]),
    ("1:0.01:3", [0.01, 0.1, 1.0]),
    ("0.001:10:9", list(np.geomspace(0.001, 10, 9))),
    ("3,0.1,1e-2", [0.01, 0.1, 3.0]),
    ("0.5", [0.5]),
    ("2:2000:1", [2.0]),
], ids=["decades", "descending", "nine", "list", "one", "range-of-one"])
def test_parse_lambdas(text, expected):
    np.testing.assert_allclose(parse_lambdas(text), expected, rtol=RTOL)


@pytest.mark.parametrize("text", ["0:1:3", "-1,2", "1,1", "1:2:0", "nan", "inf,1", "a:b:c",
                                  "1:2", "", "1,,2", "1:2:3.5"])
def test_parse_lambdas_rejects(text):
    with pytest.raises(StudyError, match="--lambdas"):
        parse_lambdas(text)


def test_geometric_grid_is_glmnets():
    grid = geometric_grid(17.0)
    assert 12 <= len(grid) <= 20
    np.testing.assert_allclose(grid, np.geomspace(0.17, 17.0, len(grid)), rtol=RTOL)
    assert grid[-1] == 17.0 and grid == tuple(sorted(grid))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"penalty": "blog"}, "--penalty"),
    ({"penalty": "l2", "l1_ratio": 0.5}, "--l1-ratio"),
    ({"penalty": "elasticnet", "l1_ratio": 1.5}, "--l1-ratio"),
    ({"penalty": "l1", "groups": "rows"}, "--groups"),
    ({"penalty": "l1", "apply": "both"}, "--apply"),
])
def test_spec_rejects(kwargs, match):
    with pytest.raises(StudyError, match=match):
        SweepSpec(**kwargs)


# -- the choice: best_lambda and lambda_1se, against numpy -------------------------------------
def _fake_result(val: dict[float, list[float | None]], seeds: int) -> StudyResult:
    """Final-epoch records of a sweep whose validation losses are given per λ and seed (None:
    that member diverged); the other metrics are simple functions of λ."""
    base = preset("d2l-highdim").with_overrides(seeds=seeds, epochs=1)
    spec = SweepSpec("l2")
    study = path_study(base, spec, tuple(sorted(val)))
    records = []
    for lam, losses in [(None, [1.0] * seeds), *sorted(val.items())]:
        for seed, loss in enumerate(losses):
            dead = loss is None
            records.append({
                "variant": REFERENCE if lam is None else "l2", "strength": lam, "seed": seed,
                "epoch": 1, "train_loss": None if dead else 0.5 * loss, "val_loss": loss,
                "test_loss": None if dead else 2 * loss, "penalty": 0.0,
                "weight_norm": None if dead else 1 / (1 + (lam or 0)), "sparsity": 0.0,
                "lr": 0.1, "diverged": dead})
    return StudyResult(study, data=None, records=records)


def _glmnet_choice(val: dict[float, list[float | None]]) -> tuple[float, float]:
    """glmnet's lambda.min and lambda.1se, written out with numpy (diverged λ excluded)."""
    lams = sorted(lam for lam, v in val.items() if None not in v)
    means = np.array([np.mean(val[lam]) for lam in lams])
    best = int(np.argmin(means))
    k = len(val[lams[best]])
    se = np.std(val[lams[best]], ddof=1) / np.sqrt(k)
    return lams[best], max(lam for lam, m in zip(lams, means) if m <= means[best] + se)


@pytest.mark.parametrize("seed", range(5))
def test_best_lambda_and_lambda_1se_match_glmnets_rule(seed):
    rng = np.random.default_rng(seed)
    lams = [float(v) for v in np.geomspace(1e-3, 10, 12)]
    # a U-shaped validation curve with seed noise, and a diverged point or two
    val = {lam: [float((np.log10(lam) - 0.3) ** 2 + 1 + rng.normal(0, 0.3)) for _ in range(4)]
           for lam in lams}
    val[lams[-1]][2] = None
    summary = summarize_sweep(_fake_result(val, 4), SweepSpec("l2"),
                              preset("d2l-highdim"))
    best, one_se = _glmnet_choice(val)
    assert summary["best_lambda"] == best
    assert summary["lambda_1se"] == one_se
    assert summary["best"]["lambda"] == best and summary["one_se"]["lambda"] == one_se
    entry = next(p for p in summary["path"] if p["lambda"] == best)
    np.testing.assert_allclose(entry["val_loss"], np.mean(val[best]), rtol=RTOL)
    np.testing.assert_allclose(entry["val_loss_std"], np.std(val[best], ddof=1), rtol=RTOL)
    np.testing.assert_allclose(entry["test_loss"], 2 * np.mean(val[best]), rtol=RTOL)
    assert next(p for p in summary["path"] if p["lambda"] == lams[-1])["diverged"] == 1


def test_a_diverged_lambda_is_never_chosen():
    val = {0.1: [3.0, 3.1], 1.0: [2.0, 2.2], 10.0: [0.5, None]}  # 10's alive member looks best
    summary = summarize_sweep(_fake_result(val, 2), SweepSpec("l2"), preset("d2l-highdim"))
    assert summary["best_lambda"] == 1.0
    assert any("diverged" in note and "10" in note for note in summary["notes"])


def test_one_seed_means_lambda_1se_is_best():
    val = {0.1: [3.0], 1.0: [2.0], 10.0: [2.01]}
    summary = summarize_sweep(_fake_result(val, 1), SweepSpec("l2"), preset("d2l-highdim"))
    assert summary["best_lambda"] == summary["lambda_1se"] == 1.0
    assert any("one seed" in note for note in summary["notes"])


def test_everything_diverged_chooses_nothing():
    val = {0.1: [None, None], 1.0: [None, None]}
    summary = summarize_sweep(_fake_result(val, 2), SweepSpec("l2"), preset("d2l-highdim"))
    assert summary["best_lambda"] is None and summary["lambda_1se"] is None
    headers, rows = path_rows(summary)
    assert len(rows) == 3 and rows[0][headers.index("diverged")] == "2/2"


# -- λ_max -------------------------------------------------------------------------------------
LASSO = {
    "name": "lasso", "seeds": 1,
    "data": {"kind": "linear", "features": 10, "train": 200, "val": 100, "test": 100,
             "weights": 0.5, "nonzeros": 3, "noise_std": 0.5},
    "model": {"kind": "linear"},
    "train": {"loss": "mse", "optimizer": "sgd", "lr": 0.1, "batch_size": 0, "epochs": 400,
              "dtype": "float64"},
    "variants": [{"name": "none"}],
}


def test_lambda_max_of_the_lasso_is_the_closed_form_one():
    """Full-batch proximal gradient converges to the lasso, whose weights are all 0 exactly from
    λ_max = ‖∇_w L(0, b*)‖_∞ = (2/n)·‖Xᵀ(y − ȳ)‖_∞ up (MSE loss): the search must land on the
    first point of its quarter-decade grid at or above it."""
    study = parse_study(LASSO)
    results: dict[str, StudyResult] = {}

    def train(s, phase):
        results[phase] = run_study(s)
        return results[phase]

    found = find_lambda_max(study, SweepSpec("l1", "prox"), train)
    x, y = (t.double() for t in results["search-1"].data.split("train"))
    y = y.reshape(-1)
    closed_form = float((2 / x.shape[0]) * (x.T @ (y - y.mean())).abs().max())
    assert closed_form <= found.lambda_max <= closed_form * 10 ** 0.25
    assert "~0" in found.rule
    assert set(results) == {"search-1", "search-2"}  # refined below the first decade found


def test_lambda_max_falls_back_to_the_largest_stable_lambda():
    """No point qualifies (the weights never vanish, the validation loss never flattens):
    λ_max is the largest λ that did not diverge; diverged points are marked."""
    base = preset("d2l-highdim")

    def train(s, phase):
        lams = s.variants[1].strengths
        records = [{"variant": REFERENCE, "strength": None, "seed": 0, "epoch": 100,
                    "val_loss": 1.0, "weight_norm": 1.0, "sparsity": 0.0, "diverged": False}]
        for i, lam in enumerate(lams):
            dead = lam > 50
            records.append({"variant": "l2", "strength": lam, "seed": 0, "epoch": 100,
                            "val_loss": None if dead else 1.0 + i, "weight_norm": None if dead
                            else 0.5, "sparsity": 0.0, "diverged": dead})
        return StudyResult(s, data=None, records=records)

    found = find_lambda_max(base, SweepSpec("l2"), train)
    assert found.lambda_max == 10.0
    assert "did not diverge" in found.rule
    assert [p["lambda"] for p in found.points if p["diverged"]] == [100.0, 1000.0, 10000.0]


# -- end to end: the d2l sweep -----------------------------------------------------------------
def _sweep(tmp_path, *args):
    status = main(["sweep", "d2l-highdim", "--penalty", "l2", "--seeds", "3", "--out",
                   str(tmp_path), *args])
    assert status == 0
    directory = tmp_path / "d2l-highdim-sweep-l2"
    return directory, json.loads((directory / "summary.json").read_text())


def test_d2l_sweep_chooses_a_lambda_that_generalizes(tmp_path, capsys):
    """The issue's finding: with the grid searched, best_lambda's test loss is within 1.5× of the
    best grid point's and far below λ = 0's, and the search marks its diverging high λ."""
    directory, summary = _sweep(tmp_path)
    path = summary["path"]
    assert summary["grid"] == "searched" and 12 <= len(path) <= 20
    lams = [p["lambda"] for p in path]
    np.testing.assert_allclose(lams[-1] / lams[0], 100, rtol=1e-9)
    assert lams[-1] == summary["lambda_max"]
    best_test = min(p["test_loss"] for p in path if p["test_loss"] is not None)
    chosen = summary["best"]["test_loss"]
    assert chosen <= 1.5 * best_test
    assert chosen < 0.01 * summary["unregularized"]["test_loss"]  # far below λ = 0's
    assert summary["lambda_1se"] >= summary["best_lambda"]
    # SGD with lr 0.003 diverges for λ > 2/0.003: the search's top decades, marked, not fatal
    diverged = [p["lambda"] for p in summary["search"] if p["diverged"]]
    assert diverged == [1000.0, 10000.0]
    # the files: the path's members, the search's, and a report naming both choices
    records = [json.loads(line) for line in (directory / "metrics.jsonl").open()]
    assert {(r["variant"], r["strength"]) for r in records} == \
        {(REFERENCE, None)} | {("l2", lam) for lam in lams}
    assert (directory / "search.jsonl").stat().st_size > 0
    out = capsys.readouterr().out
    assert "best_lambda" in out and "lambda_1se" in out


def test_d2l_sweep_with_a_diverging_grid_point(tmp_path):
    """A given grid whose top point diverges: marked with every member, left out, not fatal."""
    _, summary = _sweep(tmp_path, "--lambdas", "0.3,3,3000")
    top = summary["path"][-1]
    assert top["lambda"] == 3000 and top["diverged"] == top["members"] == 3
    assert top["val_loss"] is None
    assert summary["best_lambda"] == 3.0 and summary["grid"] == "given"
    assert summary["search"] == [] and summary["lambda_max"] is None


def test_sweep_usage_errors(tmp_path, capsys):
    for args, match in [(["--penalty", "l2", "--l1-ratio", "0.5"], "--l1-ratio"),
                        (["--penalty", "l1", "--lambdas", "0:1:4"], "--lambdas"),
                        (["--penalty", "blog"], "invalid choice")]:
        status = main(["sweep", "d2l-highdim", *args, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert status == 2 and match in err and err.count("\n") == 1, err


# Adam's per-element steps make the group-lasso prox approximate; regtorch says so, rightly.
@pytest.mark.filterwarnings("ignore:Rule WEIGHTS.*group-lasso proximal step:UserWarning")
def test_sweep_of_a_classifier_reports_accuracy(tmp_path):
    """A sweep trains any study: the digits classifier, two λ, accuracy on the path."""
    status = main(["sweep", "digits", "--penalty", "group", "--groups", "columns",
                   "--lambdas", "0.001,0.1", "--seeds", "2", "--epochs", "2", "--out",
                   str(tmp_path)])
    assert status == 0
    summary = json.loads((tmp_path / "digits-sweep-group-cols" / "summary.json").read_text())
    assert summary["apply"] == "prox" and summary["groups"] == "columns"
    assert all(0 <= p["test_acc"] <= 1 for p in summary["path"])
    assert summary["path"][-1]["sparsity"] >= summary["path"][0]["sparsity"]


@pytest.mark.parametrize(("args", "directory"), [
    ([], "linear-1d-sweep-l1"),
    (["--apply", "gradient"], "linear-1d-sweep-l1-gradient"),
], ids=["default", "gradient"])
def test_variants_of_a_sweep_sit_side_by_side(tmp_path, capsys, args, directory):
    """A sweep's directory says how it differs from the default sweep of its penalty, so a
    variant does not collide with it (before: "holds a run of another configuration")."""
    common = ["sweep", "linear-1d", "--penalty", "l1", "--lambdas", "0.1", "--seeds", "1",
              "--epochs", "1", "--out", str(tmp_path)]
    other = ["--apply", "prox"] if args else ["--apply", "gradient"]
    assert main([*common, *other]) == 0
    assert main([*common, *args]) == 0, capsys.readouterr().err
    assert (tmp_path / directory / "summary.json").exists()
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2  # besides index.html
    assert f"wrote {tmp_path / directory}" in capsys.readouterr().out


def test_sweep_directory_names_every_non_default_option():
    base = preset("linear-1d")
    names = {sweep_name(base, SweepSpec(penalty, apply, l1_ratio=ratio, groups=groups))
             for penalty, apply, ratio, groups in [
                 ("l1", "prox", None, None), ("l1", "gradient", None, None),
                 ("elasticnet", "prox", None, None), ("elasticnet", "prox", 0.5, None),
                 ("elasticnet", "prox", 0.25, None), ("elasticnet", "gradient", 0.25, None),
                 ("group", "prox", None, None), ("group", "prox", None, "rows"),
                 ("group", "prox", None, "columns"), ("l2", "gradient", None, None),
                 ("l2", "prox", None, None)]}
    assert names == {"linear-1d-sweep-l1", "linear-1d-sweep-l1-gradient",
                     "linear-1d-sweep-elasticnet", "linear-1d-sweep-elasticnet-r0.25",
                     "linear-1d-sweep-elasticnet-gradient-r0.25", "linear-1d-sweep-group",
                     "linear-1d-sweep-group-cols", "linear-1d-sweep-l2", "linear-1d-sweep-l2-prox"}

