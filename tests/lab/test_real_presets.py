"""The real-data presets and the vocabulary of the user's data: diabetes-lasso against
scikit-learn's lasso_path / LassoCV computed here, breast-cancer and digits-cnn in a few epochs,
and the [data] / [model] tables of csv, npz, python, sklearn and cnn."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LassoCV, lasso_path
from sklearn.model_selection import PredefinedSplit

from regtorch.lab.analysis.summary import summarize
from regtorch.lab.cli.workflow import train_and_write
from regtorch.lab.study import StudyError, parse_study, preset
from regtorch.lab.study.presets import PRESETS, demo_names
from regtorch.lab.study.sources import load_source
from regtorch.lab.study.spec import CsvSource, NpzSource, PythonSource, SklearnSource
from regtorch.lab.train import check_study, run_study

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the lab extra installs tomli
    import tomli as tomllib

COEF_TOL = 1e-6  # the bar: float64, converged (the preset reaches ~1e-9)


@pytest.fixture(scope="module")
def diabetes():
    study = preset("diabetes-lasso").with_overrides(seeds=1)
    result = run_study(study)
    return study, result, summarize(result)


def test_diabetes_lasso_matches_lasso_path_and_lasso_cv(diabetes):
    study, result, summary = diabetes
    (variant,) = [v for v in study.variants if v.penalty == "l1"]
    lambdas = np.array(variant.strengths)
    x, y = (t.numpy() for t in result.data.split("train"))
    xv, yv = (t.numpy() for t in result.data.split("val"))
    assert x.dtype == np.float64
    # the reference, computed here: scikit-learn's Lasso(α = λ/2) ≡ the lab's L1(λ) with MSE
    xm, ym = x.mean(axis=0), y[:, 0].mean()
    _, coefs, _ = lasso_path(x - xm, y[:, 0] - ym, alphas=lambdas / 2, tol=1e-14,
                             max_iter=1_000_000)
    zeros = 0
    for i, lam in enumerate(lambdas):
        w = result.finals[(variant.name, float(lam), 0)]["0.weight"].reshape(-1).numpy()
        np.testing.assert_allclose(w, coefs[:, i], rtol=0, atol=COEF_TOL, err_msg=f"λ={lam}")
        np.testing.assert_array_equal(w == 0, coefs[:, i] == 0, err_msg=f"zeros at λ={lam}")
        zeros += int((w == 0).sum())
    assert zeros > 10  # the path is sparse at the large λ
    folds = PredefinedSplit(np.r_[np.full(len(x), -1), np.zeros(len(xv), dtype=int)])
    cv = LassoCV(alphas=np.sort(lambdas / 2)[::-1], cv=folds, tol=1e-14,
                 max_iter=1_000_000).fit(np.vstack([x, xv]), np.r_[y[:, 0], yv[:, 0]])
    chosen = summary["variants"][variant.name]["strength"]
    order = sorted(lambdas.tolist(), reverse=True)
    assert abs(order.index(chosen) - order.index(float(cv.alpha_ * 2))) <= 1
    lasso = summary["variants"][variant.name]["sklearn_lasso"]
    assert lasso["best_lambda"] == chosen
    assert lasso["sklearn_best_lambda"] == pytest.approx(cv.alpha_ * 2, rel=1e-12)
    assert max(r["max_coef_diff"] for r in lasso["rows"]) < COEF_TOL
    assert lasso["coefficients"]["features"][:3] == ["age", "sex", "bmi"]
    assert "LassoCV" in summary["variants"][variant.name]["verdict"]


def test_breast_cancer_runs_and_reports_its_data():
    study = preset("breast-cancer").with_overrides(seeds=2, epochs=2)
    summary = summarize(run_study(study))
    assert set(summary["variants"]) == {v.name for v in study.variants}
    assert summary["notes"][0].startswith("scikit-learn's breast_cancer: 569 rows")
    assert summary["variants"]["none"]["test_acc"] is not None


def test_digits_cnn_counts_zero_filters():
    study = preset("digits-cnn").with_overrides(seeds=1, epochs=1)
    study = dataclasses.replace(study, variants=tuple(
        v for v in study.variants if v.name in ("none", "group-filters", "l1-bn-scale")))
    result = run_study(study)
    assert result.data.input_shape == (1, 8, 8)
    summary = summarize(result)
    groups = summary["variants"]["group-filters"]["zero_groups"]
    assert [(g["param"], g["groups"]) for g in groups] == [("conv1.weight", 8),
                                                            ("conv2.weight", 16)]
    final = result.finals[("group-filters", 0.1, 0)]
    for g in groups:  # the count is that of the exactly-zero filters of the final weights
        w = final[g["param"]]
        assert g["zero"] == float((w.flatten(1).abs().sum(dim=1) == 0).sum())
    scales = summary["variants"]["l1-bn-scale"]["zero_groups"]
    assert [g["param"] for g in scales] == ["norm1.weight", "norm2.weight"]


def test_new_presets_are_not_in_the_demo():
    assert demo_names() == [n for n in PRESETS
                            if n not in ("diabetes-lasso", "breast-cancer", "digits-cnn",
                                         "digits-prune")]


# -- the vocabulary ----------------------------------------------------------------------------
def study_with(data, model=None, loss="mse"):
    return {"name": "s", "data": data, "model": model or {"kind": "linear"},
            "train": {"loss": loss}, "variants": [{"name": "none"}]}


def test_sources_parse_relative_to_the_study_file_and_round_trip(tmp_path):
    study = parse_study(study_with({"kind": "csv", "path": "d/x.csv", "target": ["a", "b"],
                                    "categorical": "zip", "missing": "drop", "val": 0.1}),
                        source="my.toml", root=tmp_path)
    assert study.data == CsvSource(path=str((tmp_path / "d/x.csv").resolve()),
                                   target=("a", "b"), categorical=("zip",), missing="drop",
                                   val=0.1)
    assert study.data.where == "my.toml: data"
    assert parse_study(study.to_dict()) == study
    npz = parse_study(study_with({"kind": "npz", "path": "/abs/a.npz", "standardize": True}),
                      root=tmp_path)
    assert npz.data == NpzSource(path="/abs/a.npz", standardize=True)
    py = parse_study(study_with({"kind": "python", "factory": "m.py:f", "kwargs": {"n": 3}}),
                     root=tmp_path)
    assert py.data == PythonSource(factory="m.py:f", kwargs=(("n", 3),),
                                   root=str(tmp_path.resolve()))
    assert parse_study(py.to_dict()) == py
    cnn = parse_study(study_with({"kind": "sklearn", "name": "digits", "images": True},
                                 {"kind": "cnn", "channels": [4], "norm": "batch",
                                  "hidden": [8]}, loss="cross-entropy"))
    assert cnn.data == SklearnSource(name="digits", images=True)
    assert (cnn.model.kind, cnn.model.channels, cnn.model.hidden) == ("cnn", (4,), (8,))
    assert parse_study(cnn.to_dict()) == cnn


@pytest.mark.parametrize(("data", "model", "loss", "message"), [
    ({"kind": "csv", "target": "y"}, None, "mse", r"data: missing required key 'path'"),
    ({"kind": "csv", "path": "x.csv"}, None, "mse", r"data: missing required key 'target'"),
    ({"kind": "csv", "path": "x.csv", "target": "y", "task": "ranking"}, None, "mse",
     r"data\.task: unknown value 'ranking'"),
    ({"kind": "csv", "path": "x.csv", "target": "y", "val": 1.5}, None, "mse",
     r"data\.val: must be in \(0, 1\), got 1\.5"),
    ({"kind": "csv", "path": "x.csv", "target": "y", "val": 0.5, "test": 0.5}, None, "mse",
     r"data: val \+ test = 1\.0 leaves no train rows"),
    ({"kind": "csv", "path": "x.csv", "target": "y", "colour": 1}, None, "mse",
     r"data: unknown key 'colour'"),
    ({"kind": "csv", "path": "x.csv", "target": "y", "task": "classification"}, None, "mse",
     r"train\.loss: data\.task is 'classification': 'mse' does not apply"),
    ({"kind": "sklearn", "name": "mnist"}, None, "mse", r"data\.name: unknown value 'mnist'"),
    ({"kind": "sklearn", "name": "iris", "images": True}, None, "cross-entropy",
     r"data\.images: only the digits are images, not 'iris'"),
    ({"kind": "sklearn", "name": "iris"}, None, "mse",
     r"train\.loss: 'iris' is classification: 'mse' does not apply"),
    ({"kind": "sklearn", "name": "digits"}, {"kind": "cnn"}, "cross-entropy",
     r"model\.kind: 'cnn' needs images: set data\.images = true"),
    ({"kind": "linear"}, {"kind": "cnn"}, "mse", r"model\.kind: 'cnn' needs images"),
    ({"kind": "sklearn", "name": "digits", "images": True}, {"kind": "cnn", "channels": []},
     "cross-entropy", r"model\.channels: a cnn needs at least one conv block"),
    ({"kind": "sklearn", "name": "digits", "images": True}, {"kind": "cnn", "pool": "min"},
     "cross-entropy", r"model\.pool: unknown value 'min'"),
], ids=["no-path", "no-target", "task", "val", "val+test", "unknown-key", "task-vs-loss",
        "sklearn-name", "images-not-digits", "sklearn-loss", "cnn-flat", "cnn-linear-data",
        "no-channels", "pool"])
def test_bad_vocabulary(data, model, loss, message):
    with pytest.raises(StudyError, match=message):
        parse_study(study_with(data, model, loss), source="my.toml")


def test_check_study_catches_a_loss_that_does_not_fit_the_inferred_task(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label\n" + "".join(f"{i},{'yes' if i % 2 else 'no'}\n"
                                           for i in range(20)))
    study = parse_study(study_with({"kind": "csv", "path": "d.csv", "target": "label"}),
                        source="my.toml", root=tmp_path)
    with pytest.raises(StudyError, match=r"^my\.toml: train\.loss: the data is classification "
                                         r"\(task: classification \(target 'label' holds "
                                         r"strings"):
        check_study(study)


def test_a_flat_model_on_images_is_an_error():
    study = parse_study(study_with({"kind": "sklearn", "name": "digits", "images": True},
                                   {"kind": "mlp", "hidden": [8]}, loss="cross-entropy"))
    with pytest.raises(StudyError, match=r"model\.kind: 'mlp' needs flat features"):
        check_study(study)


def test_multi_output_regression_trains(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    np.savez(tmp_path / "m.npz", X=x, y=np.c_[x @ [1.0, 2.0, 0.0], x @ [0.0, -1.0, 1.0]])
    study = parse_study({**study_with({"kind": "npz", "path": "m.npz"}),
                         "train": {"loss": "mse", "epochs": 2}, "seeds": 2}, root=tmp_path)
    result = run_study(study)
    assert result.data.outputs == 2
    assert result.finals[("none", 0.0, 0)]["0.weight"].shape == (2, 3)
    summarize(result)
    assert Path(study.data.path).is_absolute()
    assert torch.isfinite(torch.tensor([r["train_loss"] for r in result.records])).all()


def test_diabetes_lasso_report_shows_the_path_next_to_scikit_learn(tmp_path):
    study = preset("diabetes-lasso").with_overrides(seeds=1, epochs=20)
    train_and_write(study, tmp_path)
    page = (tmp_path / study.name / "report.html").read_text()
    assert "lasso: next to scikit-learn's lasso</h" in page
    assert "val MSE (sklearn)" in page and "<td>bmi</td>" in page


def _blocks(language: str) -> list[str]:
    text = (Path(__file__).parents[2] / "docs" / "lab-data.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_docs_examples_parse_and_the_factory_loads(tmp_path):
    tables = [tomllib.loads(block) for block in _blocks("toml")]
    full = [t for t in tables if "name" in t]
    assert full and parse_study(full[0], root=tmp_path).data.kind == "csv"
    for table in tables:
        if "name" in table:
            continue
        data = table.get("data", {"kind": "sklearn", "name": "digits", "images": True})
        model = table.get("model", {"kind": "cnn"} if data.get("images") else None)
        parse_study(study_with(data, model, loss="cross-entropy"), root=tmp_path)
    (python,) = _blocks("python")
    (tmp_path / "mydata.py").write_text(python)
    data = load_source(PythonSource(factory="mydata.py:make", kwargs=(("n", 50), ("noise", 0.1)),
                                    root=str(tmp_path)), seed=0)
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 50
