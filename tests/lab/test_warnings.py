"""A warning raised while the lab trains (a group lasso with Adam's element-wise steps) is one
line: in the console, in ``summary.json``'s ``warnings`` and at the end of the verdicts of the
variants it concerns — never Python's raw two lines with a source line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from regtorch.lab import api
from regtorch.lab.caught import caught_warnings
from regtorch.lab.schema import WARNINGS_KEY
from regtorch.lab.study import parse_study
from regtorch.lab.train import Checkpoints, run_study

ROOT = Path(__file__).resolve().parents[2]
STUDY = """\
name = "warned"
seeds = 1
[data]
kind = "linear"
features = 4
train = 16
val = 16
test = 16
[model]
kind = "mlp"
hidden = [4]
[train]
optimizer = "adam"
epochs = 2
[[variants]]
name = "none"
[[variants]]
name = "group"
penalty = "group"
strength = 0.01
apply = "prox"
"""
WARNING = "UserWarning: Rule WEIGHTS -> GroupLasso("


def test_a_training_warning_is_one_line_everywhere(tmp_path):
    (tmp_path / "warned.toml").write_text(STUDY)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-m", "regtorch.lab", "run", "warned.toml", "--out",
                           "runs"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "warn" not in done.stderr.lower(), done.stderr  # nothing printed raw
    lines = [line for line in done.stdout.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {WARNING}"), done.stdout
    summary = json.loads((tmp_path / "runs" / "warned" / "summary.json").read_text())
    assert len(summary[WARNINGS_KEY]) == 1 and summary[WARNINGS_KEY][0].startswith(WARNING)
    assert "\n" not in summary[WARNINGS_KEY][0]
    verdicts = {name: v["verdict"] for name, v in summary["variants"].items()}
    assert verdicts["group"].endswith(f"Warned while training: {summary[WARNINGS_KEY][0]}")
    assert "Warned" not in verdicts["none"]  # stacked with it as a λ = 0 member: not concerned


def test_a_resumed_run_keeps_the_warnings_of_its_finished_groups(tmp_path):
    study = parse_study(__import__("tomllib").loads(STUDY))
    checkpoints = Checkpoints(tmp_path, interval=0)
    with caught_warnings() as first_lines:
        first = run_study(study, checkpoints=checkpoints)
    with caught_warnings() as again_lines:
        again = run_study(study, checkpoints=checkpoints)  # every group finished: none trains
    assert again.resumed and again_lines == [] and first_lines == []  # the groups kept them
    assert again.groups == first.groups
    assert any(line.startswith(WARNING) for g in again.groups for line in g.get("warnings", []))


def test_the_python_api_reports_the_warning(tmp_path):
    run = api.run(str(tmp_path / "warned.toml") if (tmp_path / "warned.toml").write_text(STUDY)
                  else None)
    assert run.summary[WARNINGS_KEY][0].startswith(WARNING)


@pytest.mark.parametrize("category", [UserWarning, DeprecationWarning])
def test_caught_warnings_keep_one_line_each_once(category):
    import warnings

    with caught_warnings() as lines:
        warnings.warn("first\n  second", category, stacklevel=1)
        warnings.warn("first\n  second", category, stacklevel=1)
        warnings.warn("other", category, stacklevel=1)
    assert lines == [f"{category.__name__}: first second", f"{category.__name__}: other"]
