"""End to end: a study of the user's own CSV file (a categorical feature, a string target) and a
Python model factory runs with `regtorch run` and `regtorch sweep`; bad input exits 2 with one
line naming the key and the value, and writes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regtorch.lab.cli import main

TIMEOUT = 300  # seconds for one command (a few epochs; the machine may be shared)

STUDY = """\
name = "mine"
seeds = 2
data_seed = 1

[data]
kind = "csv"
path = "animals.csv"
target = "species"

[model]
kind = "python"
factory = "mymodel.py:make"
kwargs = {width = 8}

[train]
loss = "cross-entropy"
optimizer = "adam"
lr = 0.01
batch_size = 16
epochs = 3

[[variants]]
name = "none"

[[variants]]
name = "l2"
penalty = "l2"
strength = [0.001, 0.01]
"""

MODEL = """\
from torch import nn

def make(width):  # weight, legs, habitat one-hot (3) -> cat, dog, owl
    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, 3))
"""


def animals(n: int = 90) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    species = rng.choice(["cat", "dog", "owl"], n)
    return pd.DataFrame({
        "weight": rng.normal(5, 2, n) + (species == "dog") * 10,
        "legs": np.where(species == "owl", 2, 4),
        "habitat": rng.choice(["city", "farm", "forest"], n),
        "species": species,
    })


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    animals().to_csv(tmp_path / "animals.csv", index=False)
    (tmp_path / "mymodel.py").write_text(MODEL)
    (tmp_path / "my.toml").write_text(STUDY)
    return tmp_path


def regtorch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "regtorch.lab", *args], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=cwd, env=env)


def test_run_and_sweep_on_a_csv_and_a_model_factory(study_dir):
    other = study_dir / "elsewhere"
    other.mkdir()
    # run from another directory: the paths are relative to the study file
    done = regtorch("run", str(study_dir / "my.toml"), "--out", str(study_dir / "runs"),
                    cwd=other)
    assert done.returncode == 0, done.stderr
    summary = json.loads((study_dir / "runs" / "mine" / "summary.json").read_text())
    assert set(summary["variants"]) == {"none", "l2"}
    assert "classification" in done.stdout + done.stderr  # the inferred task is said
    done = regtorch("sweep", "my.toml", "--penalty", "l2", "--lambdas", "0.001:0.1:3",
                    "--out", "runs", cwd=study_dir)
    assert done.returncode == 0, done.stderr
    sweeps = [p for p in (study_dir / "runs").iterdir() if p.name != "mine" and p.is_dir()]
    assert sweeps and (sweeps[0] / "summary.json").is_file()


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


BAD = [
    ("missing-column", "my.toml", 'target = "species"', 'target = "specie"',
     r"data\.target: no column 'specie'"),
    ("missing-file", "my.toml", 'path = "animals.csv"', 'path = "nope.csv"',
     r"data\.path: no such file '.*nope\.csv'"),
    ("factory-not-importable", "my.toml", '"mymodel.py:make"', '"nomodule_xyz:make"',
     r"model\.factory: cannot import 'nomodule_xyz:make'"),
    ("factory-raises", "mymodel.py", "    return nn.Sequential",
     "    raise ValueError('width too small')\n    return nn.Sequential",
     r"model\.factory: 'mymodel\.py:make' raised ValueError: width too small"),
    ("wrong-return-type", "mymodel.py", "    return nn.Sequential(", "    return 3, (",
     r"model\.factory: 'mymodel\.py:make' returned tuple"),
]


def run_here(study_dir: Path, monkeypatch, capsys) -> tuple[int, list[str]]:
    """``regtorch run my.toml`` in this process (the status main() returns, stderr's lines)."""
    monkeypatch.chdir(study_dir)
    status = main(["run", "my.toml", "--out", "runs"])
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(("file", "old", "new", "message"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(study_dir, monkeypatch, capsys,
                                                            file, old, new, message):
    _edit(study_dir / file, old, new)
    status, lines = run_here(study_dir, monkeypatch, capsys)
    assert status == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("regtorch: my.toml: ")
    assert re.search(message, lines[0]), lines[0]
    # nothing is written: not even --out (made only with the run directory inside it)
    assert not (study_dir / "runs").exists()


def test_nan_in_the_target_exits_2(study_dir, monkeypatch, capsys):
    df = animals()
    df.loc[[4, 5], "species"] = np.nan
    df.to_csv(study_dir / "animals.csv", index=False)
    status, lines = run_here(study_dir, monkeypatch, capsys)
    assert status == 2
    assert lines == ["regtorch: my.toml: data.target: column 'species' has 2 missing value(s) "
                     "(set missing = 'drop' to drop those rows)"]
    assert not (study_dir / "runs").exists()
