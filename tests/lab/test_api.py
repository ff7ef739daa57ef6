"""The Python API (regtorch.lab.run, regtorch.lab.sweep): the same numbers as the command, the
user's own model factory and arrays, the result objects, and errors that name the argument."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import regtorch.lab
from regtorch.lab.cli import main
from regtorch.lab.study import StudyError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lab_api.py"


def _json(value):
    return json.loads(json.dumps(value))


def test_run_gives_the_command_s_numbers(tmp_path):
    assert main(["run", "linear-1d", "--seeds", "2", "--epochs", "3", "--out",
                 str(tmp_path)]) == 0
    done = regtorch.lab.run("linear-1d", seeds=2, epochs=3)
    directory = tmp_path / "linear-1d"
    assert _json(done.summary) == json.loads((directory / "summary.json").read_text())
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    assert _json(done.records) == [json.loads(line) for line in lines]


def test_sweep_gives_the_command_s_numbers(tmp_path):
    assert main(["sweep", "d2l-highdim", "--penalty", "l1", "--lambdas", "0.01,0.1",
                 "--seeds", "2", "--epochs", "3", "--out", str(tmp_path)]) == 0
    done = regtorch.lab.sweep("d2l-highdim", penalty="l1", lambdas=[0.1, 0.01], seeds=2,
                              epochs=3)
    summary = json.loads((tmp_path / "d2l-highdim-sweep-l1" / "summary.json").read_text())
    assert _json(done.summary) == summary
    assert done.best_lambda == summary["best_lambda"]
    assert done.lambda_1se == summary["lambda_1se"]
    assert list(done.table.index) == [0.01, 0.1, 0.0]  # the path, then λ = 0


def make_mlp(width: int = 8, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(width, 1))


def _arrays(n: int = 120):
    generator = np.random.default_rng(0)
    x = generator.normal(size=(n, 4))
    y = x @ np.array([1.0, -2.0, 0.0, 0.5]) + 0.1 * generator.normal(size=n)
    return x, y


def test_sweep_on_arrays_with_a_model_factory(tmp_path):
    x, y = _arrays()
    done = regtorch.lab.sweep(model=make_mlp, data=(x, y), penalty="l2",
                              lambdas=[1e-3, 1e-1, 10.0], optimizer="adam", lr=0.02,
                              batch_size=32, epochs=4, seeds=2, dtype="float64")
    assert done.summary["seeds"] == 2 and len(done.summary["path"]) == 3
    assert done.best_lambda in (1e-3, 1e-1, 10.0)
    # 120 rows: 20% test, 20% validation (of all rows), the rest train
    assert [done.result.data.split(s)[0].shape[0] for s in ("train", "val", "test")] == \
        [72, 24, 24]
    assert done.result.groups[0]["mode"] == "vectorized"
    figures = done.figures()
    assert set(figures) >= {"path_loss", "path_weights"}
    assert all(isinstance(f, Figure) for f in figures.values())
    page = done.report(tmp_path / "sweep")
    assert page.name == "report.html" and page.exists()
    written = {p.name for p in page.parent.iterdir()}
    assert {"config.json", "metrics.jsonl", "summary.json"} <= written
    assert main(["report", str(page.parent)]) == 0  # the command reads what the API wrote


def test_run_with_variants_and_splits_given():
    x, y = _arrays(100)
    splits = {"train": (x[:60], y[:60]), "val": (x[60:80], y[60:80]),
              "test": (torch.as_tensor(x[80:]), torch.as_tensor(y[80:]))}
    done = regtorch.lab.run(model=make_mlp, data=splits, lr=0.05, epochs=3, seeds=2,
                            variants=[{"name": "none"},
                                      {"name": "l2", "penalty": "l2", "strength": 0.1},
                                      {"name": "drop", "dropout": 0.2}])
    assert list(done.table.index) == ["none", "l2", "drop"]
    assert set(done.verdicts) == {"none", "l2", "drop"}
    assert done.study.train.loss == "mse"  # a float target: regression


def test_classification_is_inferred_from_an_integer_target():
    x, y = _arrays(90)
    labels = (y > 0).astype(np.int64)
    done = regtorch.lab.run(model={"kind": "mlp", "hidden": [8]}, data=(x, labels), epochs=2,
                            seeds=1)
    assert done.study.train.loss == "cross-entropy"
    assert "test_acc" in done.summary["variants"]["none"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": 3}, "model: expected a factory"),
    ({"optimiser": "sgd"}, "unknown argument 'optimiser'"),
    ({"lr": -1.0}, "train.lr"),
    ({"memory": "lots"}, "memory 'lots'"),
    ({"variants": []}, "variants is empty"),
], ids=["model", "unknown", "lr", "memory", "variants"])
def test_bad_arguments_name_themselves(kwargs, message):
    x, y = _arrays(40)
    with pytest.raises(StudyError, match=message):
        regtorch.lab.run(**{"model": make_mlp, "data": (x, y), "epochs": 1, **kwargs})


def test_the_example_runs():
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          check=True, timeout=600)
    assert "best λ" in done.stdout


def test_the_manuals_own_model_example_runs(tmp_path, monkeypatch):
    """docs/lab.md "Your own model and data": its study file and five-line factory, written next
    to each other, run with `regtorch run` and `regtorch sweep` (vectorized, BatchNorm
    included)."""
    manual = (Path(__file__).resolve().parents[2] / "docs" / "lab.md").read_text(encoding="utf-8")
    section = manual.split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
    toml = next(b for b in re.findall(r"```toml\n(.*?)```", section, flags=re.DOTALL))
    factory = next(b for b in re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL))
    assert len([line for line in factory.strip().splitlines() if line.strip()]) == 4
    (tmp_path / "my-model.toml").write_text(toml)
    (tmp_path / "my_model.py").write_text(factory)
    monkeypatch.chdir(tmp_path / "..")  # the factory is found next to the study file
    study = str(tmp_path / "my-model.toml")
    out = str(tmp_path / "runs")
    assert main(["run", study, "--seeds", "2", "--epochs", "2", "--out", out]) == 0
    config = json.loads((tmp_path / "runs" / "my-model" / "config.json").read_text())
    assert config["model"] == {"kind": "python", "factory": "my_model.py:make",
                               "kwargs": {"width": 32}, "root": str(tmp_path.resolve())}
    assert {g["mode"] for g in config["run"]["groups"]} == {"vectorized"}
    assert main(["sweep", study, "--penalty", "l2", "--lambdas", "0.001,0.1", "--seeds", "1",
                 "--epochs", "1", "--out", out]) == 0
    assert (tmp_path / "runs" / "my-model-sweep-l2" / "report.html").exists()
