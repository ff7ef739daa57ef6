"""Faults around a run directory: ``--fresh`` leaves nothing of the old run, ``report`` refuses
files of two runs, stale temporaries are removed, a truncated checkpoint is one line, two runs
into one directory are refused, and a bad option leaves no directory behind."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from regtorch.lab.cli import main
from regtorch.lab.present import rundir

TINY = ["--seeds", "2", "--epochs", "2", "--checkpoint-every", "0"]


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def finished(tmp_path):
    """A finished `regtorch run linear-1d` (2 seeds, 2 epochs): its run directory."""
    status, _, err = _main(["run", "linear-1d", *TINY, "--out", str(tmp_path)])
    assert status == 0, err
    return tmp_path / "linear-1d"


def test_fresh_removes_every_result_of_the_old_run(finished):
    before = {p.name for p in finished.iterdir()}
    assert {"metrics.jsonl", "summary.json", "report.html", "loss.png"} <= before
    config = json.loads((finished / "config.json").read_text())
    other = {**config, "seeds": 3}
    # What an interrupted `--fresh` run leaves: its own configuration, nothing of the old run.
    rundir.prepare_directory(finished, other, fresh=True)
    assert [p.name for p in finished.iterdir()] == ["config.json"]
    assert json.loads((finished / "config.json").read_text()) == other


@pytest.mark.parametrize("case", ["config-seeds", "config-epochs", "metrics-variant",
                                  "metrics-seeds"])
def test_report_refuses_files_that_disagree(finished, case):
    config_path, metrics_path = finished / "config.json", finished / "metrics.jsonl"
    config = json.loads(config_path.read_text())
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    if case == "config-seeds":
        config["seeds"] = 5
    elif case == "config-epochs":
        config["train"]["epochs"] = 100
    elif case == "metrics-variant":
        records = [r for r in records if r["variant"] != "none"]
    else:
        records = [r for r in records if r["seed"] == 0]
    config_path.write_text(json.dumps(config))
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    (finished / "report.html").unlink()
    status, out, err = _main(["report", str(finished)])
    assert status == 2
    assert err.startswith(f"regtorch: {finished}: ") and "disagrees with summary.json" in err
    assert err.count("\n") == 1 and out == ""
    assert not (finished / "report.html").exists()


def test_report_of_agreeing_files_is_drawn(finished):
    (finished / "report.html").unlink()
    assert _main(["report", str(finished)])[0] == 0
    assert (finished / "report.html").is_file()


def test_stale_temporaries_are_removed_by_the_next_run(finished):
    stale = [finished / ".metrics.jsonl.0badf00d.tmp",
             rundir.checkpoint_directory(finished) / ".group-0.pt.0badf00d.tmp"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_text("half a file")
    status, _, err = _main(["run", "linear-1d", *TINY, "--out", str(finished.parent)])
    assert status == 0, err
    assert [p for p in stale if p.exists()] == []


def test_a_truncated_checkpoint_is_one_line_and_exit_2(finished):
    checkpoints = rundir.checkpoint_directory(finished)
    checkpoints.mkdir(exist_ok=True)
    path = checkpoints / "group-0.pt"
    path.write_bytes(b"PK\x03\x04 cut short")
    status, _, err = _main(["run", "linear-1d", *TINY, "--out", str(finished.parent)])
    assert status == 2
    assert err == f"regtorch: checkpoint unreadable: {path}; --fresh starts over\n"
    status, _, err = _main(["run", "linear-1d", *TINY, "--out", str(finished.parent),
                            "--fresh"])
    assert status == 0, err


def test_a_second_run_into_a_busy_directory_exits_2_naming_it(tmp_path):
    directory = tmp_path / "linear-1d"
    with rundir.locked(directory):  # what a run in progress holds
        status, _, err = _main(["run", "linear-1d", *TINY, "--out", str(tmp_path)])
    assert status == 2
    assert err == (f"regtorch: {directory} is in use by another regtorch run; wait for it or "
                   f"choose another --out\n")
    assert list(directory.iterdir()) == []  # it trained nothing, wrote nothing
    assert _main(["run", "linear-1d", *TINY, "--out", str(tmp_path)])[0] == 0  # released


def test_the_lock_is_released_and_its_file_removed(tmp_path):
    directory = tmp_path / "run"
    busy = pytest.raises(rundir.DirectoryBusyError, match="in use by another regtorch run")
    with rundir.locked(directory), busy, rundir.locked(directory):
        pass
    assert list(directory.iterdir()) == []
    with rundir.locked(directory):
        pass


@pytest.mark.parametrize("bad", [["--checkpoint-every", "-1"], ["--seeds", "0"],
                                 ["--threads", "0"]], ids=["checkpoint-every", "seeds", "threads"])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_bad_option_leaves_no_directory(tmp_path, command, bad):
    out = tmp_path / "new" / "runs"
    argv = [command, "linear-1d", *bad, "--out", str(out)]
    if command == "sweep":
        argv += ["--penalty", "l2", "--lambdas", "0.1"]
    status, _, err = _main(argv)
    assert status == 2 and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_another_configuration_before_training_any_study(tmp_path):
    from regtorch.lab.study.presets import demo_names
    names = demo_names()
    last = tmp_path / names[-1]
    last.mkdir()
    (last / "config.json").write_text(json.dumps({"name": names[-1], "seeds": 99}))
    status, out, err = _main(["demo", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path)])
    assert status == 2 and out == ""
    assert err.startswith(f"regtorch: {last} holds a run of another configuration (")
    assert sorted(p.name for p in tmp_path.iterdir()) == [names[-1]]  # nothing trained
