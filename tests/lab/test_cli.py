"""The `regtorch` command: its outputs, its exit statuses, and the atomic writer behind them."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

import regtorch
from regtorch.lab.analysis.summary import summarize
from regtorch.lab.atomic import atomic_writer, write_json, write_jsonl
from regtorch.lab.cli import command, main, parallel, workflow
from regtorch.lab.cli.command import MAX_ERROR_LINE
from regtorch.lab.present import rundir
from regtorch.lab.study import parse_study, presets
from regtorch.lab.study.presets import PRESETS, preset
from regtorch.lab.train.engine import run_study

# The presets in `regtorch list` order: the six classic experiments, then the real-data three.
ROOT = Path(__file__).resolve().parents[2]
PRESET_NAMES = ["d2l-highdim", "mlp-synthetic", "digits", "linear-1d", "lr-decay",
                "sparse-recovery", "diabetes-lasso", "breast-cancer", "digits-cnn",
                "digits-prune"]
RECORD_KEYS = {"variant", "strength", "seed", "epoch", "train_loss", "val_loss", "test_loss",
               "penalty", "weight_norm", "sparsity", "lr", "diverged"}
SUMMARY_KEYS = {"train_loss", "val_loss", "test_loss", "train_loss_std", "val_loss_std",
                "test_loss_std", "penalty", "weight_norm", "sparsity", "diverged"}

# A small study file in the documented vocabulary: 2 variants, one of them tuned over two λ.
SMALL_TOML = """\
name = "tiny"
description = "a small linear study for the CLI tests"
seeds = 3

[data]
kind = "linear"
features = 5
train = 20
val = 20
test = 20
weights = 1.0
noise_std = 0.1

[train]
optimizer = "sgd"
lr = 0.05
epochs = 10

[[variants]]
name = "none"

[[variants]]
name = "prox-l1"
penalty = "l1"
strength = [0.01, 0.1]
apply = "prox"
"""


@pytest.fixture(autouse=True)
def _plain_width(monkeypatch):
    # Off a terminal the output is PLAIN_WIDTH wide unless COLUMNS says otherwise (some test
    # plugins export COLUMNS=80): the tests read the default layout.
    monkeypatch.delenv("COLUMNS", raising=False)


def _env_without_columns() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "COLUMNS"}


def _run(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) with stdout and stderr captured (usable from module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _words(text: str) -> str:
    return " ".join(text.split())


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- list ----------------------------------------------------------------------------------------
def test_list_shows_each_preset_with_its_description(capsys):
    assert main(["list"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == PRESET_NAMES
    for name, line in zip(PRESET_NAMES, lines):
        assert _words(line) == _words(f"{name} {PRESETS[name]['description']}")
    assert err == ""


def test_python_dash_m_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "regtorch.lab", "list"], capture_output=True,
                          text=True, timeout=120, env=_env_without_columns())
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == PRESET_NAMES


@pytest.mark.parametrize("argv", [["list"], ["--help"], ["--version"], ["run", "--help"]],
                         ids=["list", "help", "version", "run-help"])
def test_list_help_and_version_import_no_torch(argv):
    # `import torch` is nearly all of a cold start: the commands that train nothing skip it.
    code = ("import contextlib, io, sys; from regtorch.lab.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()): status = main(sys.argv[1:])\n"
            "print(status, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120, env=_env_without_columns())
    assert done.stdout.split() == ["0", "False"], done.stderr


def test_version_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"regtorch {regtorch.__version__}\n"


def _option_helps(parser) -> dict[str, str | None]:
    """Every option of every subcommand → its help text."""
    import argparse
    helps = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                helps |= {f"{name} {k}": v for k, v in _option_helps(sub).items()}
        elif action.option_strings:
            helps[action.option_strings[-1]] = action.help
    return helps


def test_every_option_has_help():
    from regtorch.lab.cli.command import _parser
    helps = _option_helps(_parser())
    assert "sweep --penalty" in helps and "--version" in helps
    assert [option for option, text in helps.items() if not text] == []


def test_sweep_out_help_names_the_sweep_directory(capsys):
    assert main(["sweep", "--help"]) == 0
    assert "DIR/<study>-sweep-<penalty>[-<apply>][-r<R>][-cols]/" in _words(
        capsys.readouterr().out)


# -- bad input -----------------------------------------------------------------------------------
def _study_file(tmp_path, **replace: str) -> str:
    """SMALL_TOML with some text replaced, written to a file; returns its path."""
    text = SMALL_TOML
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return _file(tmp_path, "study.toml", text)


def _file(tmp_path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


# (argv builder, a fragment the error line must contain)
BAD_INPUTS = {
    "unknown preset": (lambda tmp: ["run", "no-such-preset"], "'no-such-preset'"),
    "missing file": (lambda tmp: ["run", str(tmp / "missing.toml")], "missing.toml"),
    "directory as file": (lambda tmp: ["run", str(tmp)], "cannot read"),
    "malformed TOML": (lambda tmp: ["run", _study_file(tmp, **{'name = "tiny"': "name = "})],
                       "malformed TOML"),
    "not UTF-8": (lambda tmp: ["run", _file(tmp, "bin.toml", b'name = "\xff"\n')], "not UTF-8"),
    "unknown penalty": (lambda tmp: ["run", _study_file(tmp, **{'"l1"': '"l3"'})],
                        "unknown penalty 'l3'"),
    "negative strength": (lambda tmp: ["run", _study_file(tmp, **{"0.01, 0.1": "-1.0"})],
                          "strength: must be finite and >= 0, got -1.0"),
    "unknown study key": (lambda tmp: ["run", _study_file(tmp, **{"seeds = 3": "seed = 3"})],
                          "unknown key 'seed'"),
    "long value is cut": (lambda tmp: ["run", _study_file(
        tmp, **{"weights = 1.0": f"weights = {[0.125] * 300}"})], "data.weights"),
    "params glob matches nothing": (
        lambda tmp: ["run", _study_file(tmp, **{'apply = "prox"': 'params = "*nomatch*"'})],
        "*nomatch*"),
    "--seeds 0": (lambda tmp: ["run", "linear-1d", "--seeds", "0"], "--seeds"),
    "--seeds not a number": (lambda tmp: ["run", "linear-1d", "--seeds", "two"], "'two'"),
    "--epochs -1": (lambda tmp: ["run", "linear-1d", "--epochs", "-1"], "--epochs"),
    "demo --seeds 0": (lambda tmp: ["demo", "--seeds", "0"], "--seeds"),
    "--out is a file": (lambda tmp: ["run", "linear-1d", "--out", _file(tmp, "file", "x")],
                        "--out"),
    "unknown subcommand": (lambda tmp: ["frobnicate"], "'frobnicate'"),
    "unknown option": (lambda tmp: ["run", "linear-1d", "--lr", "0.1"], "--lr"),
    "no subcommand": (lambda tmp: [], "COMMAND"),
    "run without a study": (lambda tmp: ["run"], "NAME|FILE"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_exits_2_with_a_short_message(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run that wrongly went ahead would write under ./runs
    argv_of, fragment = BAD_INPUTS[case]
    argv = argv_of(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert 1 <= len(lines) <= 2, err
    # short, the path of the study file aside (tmp_path is long)
    assert all(line.startswith("regtorch:")
               and len(line.replace(str(tmp_path), "")) <= MAX_ERROR_LINE for line in lines), err
    assert "Traceback" not in err
    assert fragment in err
    assert out == ""
    assert not any((tmp_path / "runs").rglob("*"))  # nothing written (runs/ itself may be)


def test_bad_input_in_a_real_process_has_no_traceback():
    done = subprocess.run([sys.executable, "-m", "regtorch.lab", "run", "no-such-preset"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_help_exits_0(capsys):
    assert main(["run", "--help"]) == 0
    assert "NAME|FILE" in capsys.readouterr().out


@pytest.mark.parametrize(("module", "package"), [("rich", "rich"), ("sklearn", "scikit-learn"),
                                                 ("matplotlib", "matplotlib")])
@pytest.mark.parametrize("argv", [["list"], ["run", "linear-1d"], ["demo"]],
                         ids=["list", "run", "demo"])
def test_missing_extra_exits_2_with_one_line(module, package, argv, tmp_path, capsys,
                                             monkeypatch):
    # sys.modules[name] = None makes both find_spec and a real import say "not installed".
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err == (f'regtorch: the lab needs the "lab" extra (missing: {package}); '
                   f'pip install "regtorch[lab]"\n')
    assert out == ""
    assert not (tmp_path / "runs").exists()


def test_the_command_module_imports_no_lab_extra():
    # What makes the missing-extra message reachable: importing the command needs none of them.
    code = ("import sys, regtorch.lab.cli; "
            "print(sorted({'rich', 'sklearn', 'matplotlib'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_interrupt_exits_130_and_writes_no_results(tmp_path, capsys, monkeypatch):
    def interrupted(study, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "run_study", interrupted)
    assert main(["run", "linear-1d", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "regtorch: interrupted\n"
    # only the configuration, written before training so that a rerun can continue the run
    assert [p.name for p in (tmp_path / "linear-1d").iterdir()] == ["config.json"]


def test_a_bug_raises(tmp_path, monkeypatch):
    def broken(study, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(workflow, "run_study", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["run", "linear-1d", "--out", str(tmp_path)])


def test_results_that_cannot_be_written_exit_1(tmp_path, capsys, monkeypatch):
    def disk_full(path, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir, "write_jsonl", disk_full)
    assert main(["run", "linear-1d", "--seeds", "1", "--epochs", "1", "--out",
                 str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == (f"regtorch: cannot write {tmp_path / 'linear-1d' / 'metrics.jsonl'}: "
                   f"No space left on device\n")


# -- a run end to end ----------------------------------------------------------------------------
SEEDS, EPOCHS = 2, 3


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("COLUMNS", raising=False)
        status, stdout, stderr = _run(["run", "linear-1d", "--seeds", str(SEEDS), "--epochs",
                                       str(EPOCHS), "--out", str(out)])
    return status, stdout, stderr, out / "linear-1d"


@pytest.fixture(scope="module")
def linear_reference():
    """The same study run and summarized through the Python API."""
    study = preset("linear-1d").with_overrides(seeds=SEEDS, epochs=EPOCHS)
    result = run_study(study)
    return study, result, summarize(result)


def test_run_writes_its_files_and_nothing_else(linear_run):
    status, _, stderr, directory = linear_run
    assert status == 0
    assert stderr == ""  # progress is drawn on terminals only
    assert sorted(p.name for p in directory.iterdir()) == [
        "checkpoints", "config.json", "loss.png", "metrics.jsonl", "report.html",
        "summary.json", "weights.png"]


def test_metrics_jsonl_is_every_record_in_order(linear_run, linear_reference):
    _, _, _, directory = linear_run
    _, result, _ = linear_reference
    records = _read_jsonl(directory / "metrics.jsonl")
    variants = ["none", "wd-0.01"]
    assert len(records) == SEEDS * len(variants) * (EPOCHS + 1)
    assert all(set(r) == RECORD_KEYS for r in records)
    assert sorted((r["variant"], r["seed"], r["epoch"]) for r in records) == sorted(
        (v, s, e) for v in variants for s in range(SEEDS) for e in range(EPOCHS + 1))
    assert records == result.records  # JSON round-trips floats exactly


def test_summary_json_is_the_summary(linear_run, linear_reference):
    _, _, _, directory = linear_run
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["study"] == "linear-1d" and summary["seeds"] == SEEDS
    assert set(summary["variants"]) == {"none", "wd-0.01"}
    for stats in summary["variants"].values():
        assert set(stats) >= SUMMARY_KEYS
    assert summary == json.loads(json.dumps(linear_reference[2]))


def test_config_json_is_the_study_and_how_it_ran(linear_run, linear_reference):
    _, _, _, directory = linear_run
    study, result, _ = linear_reference
    config = json.loads((directory / "config.json").read_text())
    run = config.pop("run")
    assert parse_study(config) == study  # the rest is the study file, as run
    assert config["seeds"] == SEEDS and config["train"]["epochs"] == EPOCHS
    assert run["torch"] == torch.__version__ and run["regtorch"] == regtorch.__version__
    assert run["groups"] == result.groups
    assert sum(g["members"] for g in run["groups"]) == SEEDS * 2
    assert datetime.fromisoformat(run["created"]).utcoffset().total_seconds() == 0


def test_run_prints_table_verdicts_and_notes(linear_run, linear_reference):
    _, stdout, _, directory = linear_run
    summary = linear_reference[2]
    text = _words(stdout)
    assert text.startswith(f"linear-1d: {SEEDS} seeds × {EPOCHS} epochs")
    for name, stats in summary["variants"].items():
        assert _words(f"{name} {stats['verdict']}") in text
    for note in summary["notes"]:
        assert _words(f"note: {note}") in text
    assert f"wrote {directory}{os.sep} (config.json, metrics.jsonl, summary.json, report.html)" \
        in text
    assert not any(line.endswith(" ") for line in stdout.splitlines())


def test_a_toml_study_runs_end_to_end(tmp_path, capsys):
    path = _study_file(tmp_path)
    assert main(["run", path, "--epochs", "4", "--out", str(tmp_path / "out")]) == 0
    directory = tmp_path / "out" / "tiny"
    records = _read_jsonl(directory / "metrics.jsonl")
    seeds, members_per_seed, epochs = 3, 1 + 2, 4  # "none" + prox-l1 at two λ
    assert len(records) == seeds * members_per_seed * (epochs + 1)
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["study"] == "tiny" and summary["seeds"] == seeds
    assert set(summary["variants"]) == {"none", "prox-l1"}
    config = json.loads((directory / "config.json").read_text())
    assert config["train"]["epochs"] == epochs
    assert "prox-l1" in capsys.readouterr().out


def test_demo_runs_every_preset_in_order_with_5_seeds(tmp_path, capsys, monkeypatch):
    # Two tiny studies stand in for the presets (the real ones are tested in test_presets.py).
    tiny = {name: {"name": name, "description": "tiny",
                   "data": {"kind": "linear", "features": 2, "train": 10, "val": 10, "test": 10},
                   "train": {"epochs": 2},
                   "variants": [{"name": "none"}, {"name": "l2", "penalty": "l2",
                                                   "strength": 0.1}]}
            for name in ("second-first", "first-second")}
    monkeypatch.setattr(presets, "PRESETS", tiny)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if ": 5 seeds × 2 epochs" in line] \
        == ["second-first", "first-second"]
    assert [line for line in out.splitlines() if line][-2].startswith("2 studies in ")
    assert out.splitlines()[-2] == f"wrote {tmp_path}{os.sep} (index.html)"
    assert (tmp_path / "index.html").exists()
    for name in tiny:
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["seeds"] == 5
        assert len(_read_jsonl(tmp_path / name / "metrics.jsonl")) == 5 * 2 * (2 + 1)


def test_demo_in_processes_equals_demo_in_this_process(tmp_path, capsys, monkeypatch):
    """--jobs 2 (one process per study, one torch thread each here) writes the same results as
    --jobs 1 (in this process, one thread under the tests) and prints them in preset order."""
    tiny = {name: {"name": name, "description": "tiny",
                   "data": {"kind": "linear", "features": 3, "train": 12, "val": 10, "test": 10},
                   "train": {"epochs": 3, "batch_size": 5},
                   "variants": [{"name": "none"}, {"name": "prox", "penalty": "l1",
                                                   "strength": 0.05, "apply": "prox"}]}
            for name in ("small-b", "small-a", "small-c")}
    monkeypatch.setattr(presets, "PRESETS", tiny)
    outputs = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs-{jobs}"
        assert main(["demo", "--jobs", str(jobs), "--seeds", "2", "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert [line.split(":")[0] for line in printed.splitlines()
                if ": 2 seeds × 3 epochs" in line] == list(tiny)
        outputs[jobs] = {name: ((out / name / "metrics.jsonl").read_text(),
                                json.loads((out / name / "summary.json").read_text()))
                         for name in tiny}
    assert outputs[1] == outputs[2]


def test_demo_workers_with_several_threads_are_spawned(tmp_path, capsys, monkeypatch):
    """With CPUs to spare, each worker gets several torch threads and is spawned (a forked child
    must not use its parent's OpenMP pool); the results are those of the in-process run."""
    tiny = {name: {"name": name,
                   "data": {"kind": "linear", "features": 2, "train": 8, "val": 8, "test": 8},
                   "train": {"epochs": 2, "dtype": "float64"},
                   "variants": [{"name": "none"}, {"name": "l1", "penalty": "l1",
                                                   "strength": 0.1}]}
            for name in ("tiny-a", "tiny-b")}
    monkeypatch.setattr(presets, "PRESETS", tiny)
    methods = []
    original = multiprocessing.get_context

    def record(method=None):
        methods.append(method)
        return original(method)

    monkeypatch.setattr(multiprocessing, "get_context", record)
    monkeypatch.setattr(parallel, "available_cpus", lambda: 4)
    assert main(["demo", "--jobs", "2", "--seeds", "2", "--out", str(tmp_path / "p")]) == 0
    assert methods == ["spawn"]
    assert main(["demo", "--jobs", "1", "--seeds", "2", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    for name in tiny:
        assert (tmp_path / "p" / name / "summary.json").read_text() == \
            (tmp_path / "s" / name / "summary.json").read_text()


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_demo_refuses_a_nonpositive_jobs(jobs, capsys):
    assert main(["demo", "--jobs", jobs]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--jobs" in err and jobs in err


def test_toml_without_tomllib_names_python_3_11(tmp_path, capsys, monkeypatch):
    # Python 3.10 without tomli: `import tomllib` and `import tomli` both fail.
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    assert main(["run", _study_file(tmp_path)]) == 2
    assert capsys.readouterr().err == ("regtorch: reading a TOML study needs Python 3.11 or "
                                       "later (or pip install tomli)\n")


def test_toml_falls_back_to_tomli(tmp_path, capsys, monkeypatch):
    tomllib = pytest.importorskip("tomllib", reason="a TOML parser to stand in for tomli")
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # the same parser under tomli's name
    # The file is parsed (the parser then rejects the penalty): tomli was used.
    assert main(["run", _study_file(tmp_path, **{'"l1"': '"l3"'})]) == 2
    assert "unknown penalty 'l3'" in capsys.readouterr().err


# -- atomic writes -------------------------------------------------------------------------------
def test_write_json_replaces_the_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    write_json(path, {"a": [1, 2.5, None], "b": "λ"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": [1, 2.5, None], "b": "λ"}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_write_jsonl_writes_one_document_per_line(tmp_path):
    rows = [{"epoch": 0, "loss": 1.5}, {"epoch": 1, "loss": None}]
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    assert _read_jsonl(tmp_path / "metrics.jsonl") == rows


FAILURES = {
    # json.dump streams: the large value is written before the unserializable one is reached.
    "json not serializable": (lambda p: write_json(p, {"a": "x" * 100_000, "b": object()}),
                              TypeError),
    "json NaN": (lambda p: write_json(p, {"a": [0.0] * 10_000, "b": float("nan")}), ValueError),
    "jsonl not serializable": (lambda p: write_jsonl(p, [{"ok": 1}] * 10_000 + [{"b": {1, 2}}]),
                               TypeError),
    "jsonl infinity": (lambda p: write_jsonl(p, [{"ok": 1}] * 10_000 + [{"b": float("inf")}]),
                       ValueError),
}


@pytest.mark.parametrize("case", list(FAILURES), ids=list(FAILURES))
@pytest.mark.parametrize("existing", [True, False], ids=["old file", "no file"])
def test_failed_write_keeps_the_old_file_and_no_temp_file(case, existing, tmp_path):
    write, error = FAILURES[case]
    path = tmp_path / "out.json"
    if existing:
        path.write_text("old content")
    with pytest.raises(error):
        write(path)
    assert os.listdir(tmp_path) == (["out.json"] if existing else [])
    if existing:
        assert path.read_text() == "old content"


def test_interrupt_inside_the_writer_removes_the_temp_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old content")
    with pytest.raises(KeyboardInterrupt), atomic_writer(path) as stream:
        stream.write("half of the new content")
        stream.flush()
        assert len(os.listdir(tmp_path)) == 2  # the temp file sits next to the target
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["out.json"]
    assert path.read_text() == "old content"


@pytest.mark.skipif(os.name != "posix", reason="umask and mode bits are POSIX")
def test_new_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


def test_report_redraws_from_the_files(tmp_path, capsys):
    """`regtorch report DIR`: no training (the engine is not called), every report and the
    index rewritten from the files; a directory with nothing to report exits 2, one line."""
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("regtorch: ") and str(tmp_path) in err
    assert main(["run", "linear-1d", "--seeds", "1", "--epochs", "2", "--out",
                 str(tmp_path)]) == 0
    report = tmp_path / "linear-1d" / "report.html"
    first = report.read_bytes()
    report.unlink()
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workflow, "run_study", None)  # any training would fail
        assert main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == ["wrote", str(report), "wrote",
                                               str(tmp_path / "index.html")]
    assert report.read_bytes() == first  # the same page, from the files alone


# -- the usage blocks --------------------------------------------------------------------------
def _usage_options(block: str) -> dict[str, set[str]]:
    """``{command: its --options and positionals}`` from a usage block: a line starting with
    ``regtorch`` starts a command, the lines after it continue it; comments are left out."""
    commands: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "regtorch":
            current = "" if words[1].startswith("-") else words[1]
            words = words[1:] if current == "" else words[2:]
        text = " ".join(words)
        positionals = re.findall(r"\bNAME\|FILE\b|\bDIR\b", re.sub(r"\[[^]]*\]", "", text))
        commands.setdefault(current, set()).update(re.findall(r"--[a-z][a-z0-9-]*", text),
                                                   positionals)
    return commands


def _argparse_options() -> dict[str, set[str]]:
    parser = command._parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {"": {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
               - {"--help"}}
    for name, sub in subparsers.choices.items():
        options[name] = ({o for a in sub._actions for o in a.option_strings
                          if o.startswith("--")} - {"--help"}
                         | {a.metavar for a in sub._actions if not a.option_strings})
    return options


def _readme_usage() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"The commands:\n\n```\n(.*?)```", readme, flags=re.DOTALL).group(1)


@pytest.mark.parametrize("where", ["README.md", "regtorch.lab.cli.command"])
def test_the_usage_blocks_list_every_option(where):
    """The README's usage block and the command's docstring name every option of every command
    argparse knows, and no other."""
    block = (_readme_usage() if where == "README.md"
             else command.__doc__.split("Usage::", 1)[1].split("\n\n", 2)[1])
    assert _usage_options(block) == _argparse_options()


def test_the_readme_test_command_is_what_ci_runs():
    """The README's test command installs the extras .ci/run installs and runs what it runs;
    what .ci/run adds beyond it — Chromium for the browser test, which otherwise skips — is
    said next to it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    match = re.search(r"Set up and run the tests \((.*?)\):\n\n```bash\n(.*?)\n```", readme,
                      flags=re.DOTALL)
    assert match, "the README's test command"
    words, line = " ".join(match.group(1).split()), match.group(2)
    extras = re.search(r'-e "\.\[([^\]]*)\]"', ci).group(1)
    assert f'-e ".[{extras}]"' in line
    assert "ruff check ." in line and "python -m pytest" in line
    assert "/usr/bin/chromium" in ci and "REGTORCH_REQUIRE_BROWSER=1" in ci
    assert "`.ci/run`" in words and "`chromium`" in words and "skips without it" in words
