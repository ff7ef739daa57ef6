"""Data sources (CSV, npz, Python factory, scikit-learn): splits, encoding and standardization
against hand computations with pandas / NumPy, and every bad input as one StudyError line that
names the key and the value."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_diabetes, load_digits, load_iris

from regtorch.lab.study import StudyError
from regtorch.lab.study.sources import CLASS_LIMIT, import_factory, infer_task, load_source
from regtorch.lab.study.spec import (
    SKLEARN_DATASETS,
    CsvSource,
    NpzSource,
    PythonSource,
    SklearnSource,
    source_dict,
)

F64 = torch.float64


def frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Two numeric features, a categorical one, a string target and a numeric target."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "a": rng.normal(3.0, 2.0, n),
        "b": rng.integers(0, 100, n),
        "color": rng.choice(["red", "green", "blue"], n),
        "species": rng.choice(["cat", "dog"], n),
        "price": rng.normal(10.0, 1.0, n),
    })


def write_csv(tmp_path: Path, df: pd.DataFrame, name: str = "data.csv") -> str:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


# -- CSV ---------------------------------------------------------------------------------------
def test_csv_onehot_and_standardization_fitted_on_train_only(tmp_path):
    df = frame(40)
    df["fold"] = ["train"] * 24 + ["val"] * 8 + ["test"] * 8
    spec = CsvSource(path=write_csv(tmp_path, df), target=("species",),
                     features=("a", "b", "color"), split="fold")
    data = load_source(spec, seed=3, dtype=F64)
    assert data.classes == ("cat", "dog")
    assert data.feature_names == ("a", "b", "color_blue", "color_green", "color_red")
    assert data.y_train.dtype == torch.long and data.outputs == 2
    assert any("classification" in n and "strings" in n for n in data.notes)
    train, test = df.iloc[:24], df.iloc[32:]
    for j, column in enumerate(("a", "b")):
        mean, std = train[column].mean(), train[column].std(ddof=0)
        np.testing.assert_allclose(data.x_train[:, j].numpy(), (train[column] - mean) / std,
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(data.x_test[:, j].numpy(), (test[column] - mean) / std,
                                   rtol=0, atol=1e-12)
    expected = pd.get_dummies(test["color"]).reindex(columns=["blue", "green", "red"],
                                                     fill_value=False).to_numpy(float)
    np.testing.assert_array_equal(data.x_test[:, 2:].numpy(), expected)
    np.testing.assert_array_equal(np.array(data.classes)[data.y_test.numpy()],
                                  test["species"].to_numpy())


def test_csv_fraction_split_covers_every_row_once(tmp_path):
    df = frame(60)
    df["b"] = np.random.default_rng(5).permutation(60)  # a row id
    spec = CsvSource(path=write_csv(tmp_path, df), target=("species",), features=("b",),
                     standardize=False, val=0.25, test=0.25)
    data = load_source(spec, seed=3, dtype=F64)
    ids = [getattr(data, f"x_{s}")[:, 0].long().tolist() for s in ("train", "val", "test")]
    assert [len(i) for i in ids] == [30, 15, 15]
    assert sorted(ids[0] + ids[1] + ids[2]) == list(range(60))
    species = df.set_index("b")["species"]
    for rows, y in zip(ids, (data.y_train, data.y_val, data.y_test)):
        np.testing.assert_array_equal(np.array(data.classes)[y.numpy()],
                                      species.loc[rows].to_numpy())


def test_csv_split_is_stratified_and_seeded(tmp_path):
    df = frame(200)
    spec = CsvSource(path=write_csv(tmp_path, df), target=("species",), val=0.2, test=0.3)
    one, two = load_source(spec, seed=1), load_source(spec, seed=1)
    other = load_source(spec, seed=2)
    torch.testing.assert_close(one.x_train, two.x_train, rtol=0, atol=0)
    assert not torch.equal(one.x_train, other.x_train)
    share = (df["species"] == "dog").mean()
    for y in (one.y_train, one.y_val, one.y_test):
        assert abs(float(y.double().mean()) - share) <= 1.0 / len(y) + 1e-12


def test_csv_regression_multi_output_and_inferred_task(tmp_path):
    df = frame()
    path = write_csv(tmp_path, df)
    data = load_source(CsvSource(path=path, target=("price", "a"), features=("b", "color"),
                                 standardize_target=True), seed=0, dtype=F64)
    assert data.classes is None and data.outputs == 2 and data.y_train.shape[1] == 2
    assert all("regression" in n for n in data.notes if n.startswith("task"))
    y = data.y_train.numpy()
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-12)
    # without standardize_target the target keeps its units
    raw = load_source(CsvSource(path=path, target=("price",), features=("b",)), seed=0,
                      dtype=F64)
    assert set(raw.y_test[:, 0].tolist()) <= set(df["price"].tolist())


def test_csv_few_valued_integer_target_is_classification(tmp_path):
    df = frame()
    df["grade"] = np.arange(60) % 4 + 1
    data = load_source(CsvSource(path=write_csv(tmp_path, df), target=("grade",),
                                 features=("a",)), seed=0)
    assert data.classes == ("1", "2", "3", "4")
    assert set(data.y_train.tolist()) == {0, 1, 2, 3}
    forced = load_source(CsvSource(path=write_csv(tmp_path, df), target=("grade",),
                                   features=("a",), task="regression"), seed=0)
    assert forced.classes is None and forced.y_train.is_floating_point()


def test_csv_split_column_and_categorical_integers(tmp_path):
    df = frame(30)
    df["fold"] = ["train"] * 20 + ["val"] * 5 + ["test"] * 5
    df["zone"] = np.arange(30) % 3
    spec = CsvSource(path=write_csv(tmp_path, df), target=("price",),
                     features=("a", "zone"), categorical=("zone",), split="fold",
                     standardize=False)
    data = load_source(spec, seed=0, dtype=F64)
    np.testing.assert_allclose(data.x_train[:, 0].numpy(), df["a"].iloc[:20].to_numpy(),
                               rtol=0, atol=0)
    np.testing.assert_allclose(data.y_test[:, 0].numpy(), df["price"].iloc[25:].to_numpy())
    assert data.feature_names == ("a", "zone_0", "zone_1", "zone_2")


def test_csv_missing_values_error_or_drop(tmp_path):
    df = frame()
    df.loc[[3, 7, 9], "a"] = np.nan
    path = write_csv(tmp_path, df)
    with pytest.raises(StudyError, match=r"^t: data\.features: column 'a' has 3 missing"):
        load_source(CsvSource(path=path, target=("species",), where="t: data"), seed=0)
    data = load_source(CsvSource(path=path, target=("species",), missing="drop"), seed=0)
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 57
    assert any("dropped 3 of 60 rows" in n for n in data.notes)


def test_csv_nan_in_target(tmp_path):
    df = frame()
    df.loc[[1, 2], "price"] = np.nan
    with pytest.raises(StudyError, match=r"data\.target: column 'price' has 2 missing"):
        load_source(CsvSource(path=write_csv(tmp_path, df), target=("price",)), seed=0)


@pytest.mark.parametrize(("change", "message"), [
    ({"path": "/nonexistent/x.csv"}, r"data\.path: no such file '/nonexistent/x\.csv'"),
    ({"target": ("nope",)}, r"data\.target: no column 'nope' in data\.csv \(columns: a, b,"),
    ({"features": ("a", "zz")}, r"data\.features: no column 'zz'"),
    ({"features": ("a", "species")}, r"data\.features: 'species' is also the target"),
    ({"categorical": ("a",), "features": ("b",)}, r"data\.categorical: 'a' is not a feature"),
    ({"split": "fold"}, r"data\.split: no column 'fold'"),
    ({"target": ("species", "color")}, r"data\.target: classification takes one target"),
    ({"target": ("color",), "task": "regression"}, r"data\.target: column 'color' is not "
                                                   r"numeric"),
    ({"val": 0.5, "test": 0.49}, r"data\.val: cannot split 60 rows stratified by class"),
], ids=["file", "target", "feature", "feature-is-target", "categorical", "split",
        "multi-class-target", "string-regression", "split-fractions"])
def test_csv_bad_input(tmp_path, change, message):
    fields = {"path": write_csv(tmp_path, frame()), "target": ("species",), **change}
    with pytest.raises(StudyError, match=message) as caught:
        load_source(CsvSource(**fields), seed=0)
    assert "\n" not in str(caught.value)


def test_csv_bad_split_values(tmp_path):
    df = frame(10)
    df["fold"] = ["train"] * 6 + ["valid"] * 2 + ["test"] * 2
    with pytest.raises(StudyError, match=r"data\.split: column 'fold' holds 'valid'"):
        load_source(CsvSource(path=write_csv(tmp_path, df), target=("price",), split="fold"),
                    seed=0)
    df["fold"] = ["train"] * 8 + ["test"] * 2
    with pytest.raises(StudyError, match=r"data\.split: column 'fold' has no 'val' row"):
        load_source(CsvSource(path=write_csv(tmp_path, df), target=("price",), split="fold"),
                    seed=0)


def test_csv_unreadable(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"")
    with pytest.raises(StudyError, match=r"data\.path: cannot read .* as CSV"):
        load_source(CsvSource(path=str(path), target=("y",)), seed=0)


# -- npz ---------------------------------------------------------------------------------------
def test_npz_images_split_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 1, 4, 4))
    y = np.arange(40) % 2
    path = tmp_path / "img.npz"
    np.savez(path, X=x, y=y)
    data = load_source(NpzSource(path=str(path), val=0.25, test=0.25), seed=0, dtype=F64)
    assert data.input_shape == (1, 4, 4) and data.features == 16
    assert data.classes == ("0", "1") and data.outputs == 2
    everything = torch.cat([data.x_train, data.x_val, data.x_test]).numpy()
    # a permutation of the rows, untouched (standardize is off by default)
    np.testing.assert_array_equal(np.sort(everything.reshape(40, -1), axis=0),
                                  np.sort(x.reshape(40, -1), axis=0))


def test_npz_presplit_with_val_drawn_from_train_and_standardized(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"X_train": rng.normal(2.0, 3.0, (50, 3)), "y_train": rng.normal(size=50),
              "X_test": rng.normal(size=(10, 3)), "y_test": rng.normal(size=10)}
    path = tmp_path / "split.npz"
    np.savez(path, **arrays)
    data = load_source(NpzSource(path=str(path), val=0.2, standardize=True), seed=0, dtype=F64)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (40, 10, 10)
    assert data.y_train.shape == (40, 1)
    np.testing.assert_allclose(data.x_train.numpy().mean(axis=0), 0.0, atol=1e-12)
    # the test rows are standardized with the *train* rows' mean and std
    rows = np.isin(arrays["y_train"], data.y_train[:, 0].numpy())
    mean, std = arrays["X_train"][rows].mean(axis=0), arrays["X_train"][rows].std(axis=0)
    np.testing.assert_allclose(data.x_test.numpy(), (arrays["X_test"] - mean) / std,
                               rtol=1e-12, atol=1e-12)


def test_npz_full_split_kept(tmp_path):
    arrays = {f"{a}_{s}": np.arange(12.0).reshape(6, 2) if a == "X" else np.arange(6.0) * 100
              for a in "Xy" for s in ("train", "val", "test")}
    path = tmp_path / "all.npz"
    np.savez(path, **arrays)
    data = load_source(NpzSource(path=str(path)), seed=0, dtype=F64)
    np.testing.assert_array_equal(data.x_val.numpy(), arrays["X_val"])


@pytest.mark.parametrize(("arrays", "message"), [
    ({"X": np.zeros((4, 2))}, r"data\.path: e\.npz has no array 'y'"),
    ({"X_train": np.zeros((4, 2)), "y_train": np.zeros(4)}, r"has no array 'X_test'"),
    ({"X": np.zeros((4, 2)), "y": np.zeros(5)}, r"y has shape \[5\] for X of shape \[4, 2\]"),
    ({"X": np.zeros(4), "y": np.zeros(4)}, r"X has shape \[4\]"),
    ({"X": np.zeros((10, 2)), "y": np.r_[np.zeros(9), np.nan]},
     r"y has 1 row\(s\) with NaN"),
], ids=["no-y", "no-test", "lengths", "1-d-x", "nan-target"])
def test_npz_bad_input(tmp_path, arrays, message):
    path = tmp_path / "e.npz"
    np.savez(path, **arrays)
    with pytest.raises(StudyError, match=message):
        load_source(NpzSource(path=str(path)), seed=0)


def test_npz_missing_file():
    with pytest.raises(StudyError, match=r"^data\.path: no such file 'nope\.npz'$"):
        load_source(NpzSource(path="nope.npz"), seed=0)


# -- python ------------------------------------------------------------------------------------
FACTORY = '''
import numpy as np
import torch

def pairs(n=30, as_tensor=False):
    x = np.arange(n * 2, dtype=float).reshape(n, 2)
    y = np.arange(n) % 3
    return (torch.as_tensor(x), torch.as_tensor(y)) if as_tensor else (x, y)

def splits():
    x = np.ones((5, 2))
    return {"train": (x, np.zeros(5)), "val": (x, np.zeros(5)), "test": (x, np.ones(5))}

def broken():
    raise RuntimeError("disk on fire")

def wrong():
    return 42

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def factory_dir(tmp_path):
    (tmp_path / "mydata.py").write_text(textwrap.dedent(FACTORY))
    return tmp_path


@pytest.mark.parametrize("ref", ["mydata.py:pairs", "mydata:pairs"])
def test_python_factory_pair_is_split(factory_dir, ref):
    spec = PythonSource(factory=ref, root=str(factory_dir), kwargs=(("n", 30),
                                                                    ("as_tensor", True)))
    data = load_source(spec, seed=0, dtype=F64)
    assert data.classes == ("0", "1", "2")
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 30
    x = torch.cat([data.x_train, data.x_val, data.x_test])
    assert sorted(x[:, 0].tolist()) == list(np.arange(0.0, 60.0, 2.0))


def test_python_factory_mapping(factory_dir):
    data = load_source(PythonSource(factory="mydata.py:splits", root=str(factory_dir)), seed=0)
    assert data.y_test.shape == (5, 1) and float(data.y_test.sum()) == 5.0


@pytest.mark.parametrize(("ref", "message"), [
    ("mydata.py:broken", r"data\.factory: 'mydata\.py:broken' raised RuntimeError: disk on "
                         r"fire$"),
    ("mydata.py:wrong", r"data\.factory: 'mydata\.py:wrong' returned a int \(expected \(X, y\)"),
    ("mydata.py:absent", r"data\.factory: cannot import 'mydata\.py:absent': module "
                         r"'mydata\.py' has no 'absent'"),
    ("mydata.py:NOT_A_FUNCTION", r"'mydata\.py:NOT_A_FUNCTION' is a int, not a function"),
    ("nosuchmodule_xyz:f", r"data\.factory: cannot import 'nosuchmodule_xyz:f': "
                           r"ModuleNotFoundError"),
    ("other.py:f", r"data\.factory: 'other\.py:f': no such file"),
    ("no_colon", r"data\.factory: 'no_colon' must be 'module:function'"),
], ids=["raises", "wrong-type", "no-attribute", "not-callable", "no-module", "no-file",
        "no-colon"])
def test_python_factory_bad(factory_dir, ref, message):
    with pytest.raises(StudyError, match=message) as caught:
        load_source(PythonSource(factory=ref, root=str(factory_dir)), seed=0)
    assert "\n" not in str(caught.value)


def test_python_factory_syntax_error(tmp_path):
    (tmp_path / "bad.py").write_text("def f(:\n")
    with pytest.raises(StudyError, match=r"cannot import 'bad\.py:f': SyntaxError"):
        import_factory("bad.py:f", tmp_path, "data.factory")


# -- scikit-learn ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SKLEARN_DATASETS))
def test_sklearn_sets_load_offline(name):
    data = load_source(SklearnSource(name=name), seed=0, dtype=F64)
    task = SKLEARN_DATASETS[name][1]
    assert data.classification == (task == "classification")
    np.testing.assert_allclose(data.x_train.numpy().mean(axis=0), 0.0, atol=1e-10)


def test_sklearn_matches_the_loader_and_stratifies():
    data = load_source(SklearnSource(name="iris", standardize=False), seed=0, dtype=F64)
    x, _ = load_iris(return_X_y=True)
    assert data.classes == ("setosa", "versicolor", "virginica")
    everything = torch.cat([data.x_train, data.x_val, data.x_test]).numpy()
    np.testing.assert_array_equal(np.sort(everything, axis=0), np.sort(x, axis=0))
    assert torch.bincount(data.y_test).tolist() == [10, 10, 10]
    diabetes = load_source(SklearnSource(name="diabetes", standardize=False), seed=0, dtype=F64)
    _, target = load_diabetes(return_X_y=True)
    assert sorted(torch.cat([diabetes.y_train, diabetes.y_val, diabetes.y_test])[:, 0].tolist()
                  ) == sorted(target.tolist())


def test_sklearn_digits_as_images():
    data = load_source(SklearnSource(name="digits", images=True, standardize=False), seed=0)
    assert data.input_shape == (1, 8, 8) and data.outputs == 10
    x, _ = load_digits(return_X_y=True)
    assert float(data.x_train.max()) == float(x.max())


# -- inference, round trip ---------------------------------------------------------------------
def test_infer_task_limit():
    assert infer_task(np.arange(CLASS_LIMIT))[0] == "classification"
    assert infer_task(np.arange(CLASS_LIMIT + 1))[0] == "regression"
    assert infer_task(np.array([True, False]))[0] == "classification"
    assert infer_task(pd.Series(["a", "b"], dtype="category"))[0] == "classification"


def test_source_dict_leaves_defaults_out():
    spec = CsvSource(path="/d/x.csv", target=("y",), features=("a", "b"), missing="drop")
    assert source_dict(spec) == {"kind": "csv", "path": "/d/x.csv", "target": ["y"],
                                 "features": ["a", "b"], "missing": "drop"}
    assert source_dict(PythonSource(factory="m:f", kwargs=(("n", 3),))) == {
        "kind": "python", "factory": "m:f", "kwargs": {"n": 3}}


def test_messages_are_one_line(tmp_path):
    with pytest.raises(StudyError) as caught:
        load_source(CsvSource(path=str(tmp_path / "x.csv"), target=("y",),
                              where="my.toml: data"), seed=0)
    assert re.fullmatch(r"my\.toml: data\.path: no such file '.*x\.csv'", str(caught.value))
