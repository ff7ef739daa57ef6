"""Interrupted runs continue: checkpoints restore every bit of state, configurations are
guarded, and a killed `regtorch` process resumes to the results of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from regtorch.lab.cli import command, main
from regtorch.lab.present import rundir as store
from regtorch.lab.present.rundir import ConfigMismatchError, checkpoint_directory, first_difference
from regtorch.lab.study import parse_study
from regtorch.lab.train import engine
from regtorch.lab.train.checkpoints import Checkpoints
from regtorch.lab.train.engine import run_study

# A study with everything a group carries between epochs: dropout masks (the random state), an
# exponential schedule and a plateau schedule (scheduler state), Adam moments, a proximal L1
# step, and a BatchNorm model (stacked buffers).
STATEFUL = {
    "name": "stateful", "seeds": 2,
    "data": {"kind": "linear", "features": 6, "train": 40, "val": 20, "test": 20,
             "weights": 1.0, "noise_std": 0.1},
    "model": {"kind": "mlp", "hidden": [8]},
    "train": {"optimizer": "adam", "lr": 0.01, "batch_size": 16, "epochs": 6,
              "schedule": {"kind": "exponential", "rate": 0.9, "min_lr": 0.001}},
    "variants": [
        {"name": "none"},
        {"name": "prox-l1", "penalty": "l1", "strength": [0.01, 0.1], "apply": "prox"},
        {"name": "dropout", "dropout": 0.3},
        {"name": "plateau", "schedule": {"kind": "plateau", "patience": 1, "factor": 0.5,
                                         "per": "epoch"}},
    ],
}
BATCHNORM = {**STATEFUL, "name": "batchnorm",
             "model": {"kind": "mlp", "hidden": [8], "norm": "batch"},
             "variants": [{"name": "none"}, {"name": "l2", "penalty": "l2", "strength": 0.1}]}


class _Stop(Exception):  # noqa: N818 -- a control-flow signal, not an error
    pass


def _interrupted_then_resumed(study, directory: Path, stop_at: int):
    """Run with a checkpoint after every epoch, stop at the ``stop_at``-th progress call, then
    run again from the checkpoints."""
    checkpoints = Checkpoints(checkpoint_directory(directory), interval=0)
    calls = 0

    def on_epoch(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if calls == stop_at:
            raise _Stop

    with pytest.raises(_Stop):
        run_study(study, on_epoch=on_epoch, checkpoints=checkpoints)
    return run_study(study, checkpoints=checkpoints)


def _assert_same(a, b):
    assert json.dumps(a.records) == json.dumps(b.records)  # bit for bit, NaN-free by design
    assert a.finals.keys() == b.finals.keys()
    for key in a.finals:
        for name, tensor in a.finals[key].items():
            assert torch.equal(tensor, b.finals[key][name]), (key, name)


@pytest.mark.parametrize(("spec", "stop_at"), [
    (STATEFUL, 3), (STATEFUL, 9), (STATEFUL, 17), (BATCHNORM, 2), (BATCHNORM, 5),
], ids=["stateful-group-1", "stateful-group-2", "stateful-plateau", "batchnorm-1",
        "batchnorm-4"])
def test_resumed_run_equals_uninterrupted(tmp_path, spec, stop_at):
    """Stopped at the ``stop_at``-th group epoch (STATEFUL has 4 groups × 6 epochs: the prox
    group, the dropout group, one per plateau member; BATCHNORM one
    vectorized group of 6 with stacked buffers)."""
    study = parse_study(spec)
    resumed = _interrupted_then_resumed(study, tmp_path, stop_at)
    _assert_same(run_study(study), resumed)
    assert resumed.resumed  # something came from the checkpoints


def test_finished_groups_are_not_trained_again(tmp_path, monkeypatch):
    study = parse_study(STATEFUL)
    checkpoints = Checkpoints(checkpoint_directory(tmp_path), interval=0)
    first = run_study(study, checkpoints=checkpoints)
    trained = []
    original = engine._Group.run

    def spy(self, *args, **kwargs):
        trained.append(self.members)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(engine._Group, "run", spy)
    again = run_study(study, checkpoints=checkpoints)
    assert trained == []
    assert again.resumed == [f"group-{i}: finished" for i in range(len(first.groups))]
    _assert_same(first, again)
    assert again.groups == first.groups


def test_a_killed_group_continues_from_its_last_epoch(tmp_path):
    study = parse_study(STATEFUL)
    resumed = _interrupted_then_resumed(study, tmp_path, stop_at=3)
    # the first group trains 3 members; its third epoch's progress call stopped it after epoch 2
    # was saved (the checkpoint of epoch 3 comes after the progress call)
    assert resumed.resumed[0] == "group-0: from epoch 3"


def test_a_resumed_group_is_named_as_its_checkpoint_file(tmp_path):
    """One numbering: what the console says continued is the file on disk (from 0)."""
    study = parse_study(STATEFUL)
    checkpoints = Checkpoints(checkpoint_directory(tmp_path), interval=0)
    calls = 0

    def stop(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 9:  # in the second group: the first one has finished
            raise _Stop

    with pytest.raises(_Stop):
        run_study(study, on_epoch=stop, checkpoints=checkpoints)
    on_disk = {path.name for path in checkpoint_directory(tmp_path).glob("*.pt")}
    resumed = run_study(study, checkpoints=checkpoints).resumed
    assert len(resumed) == 2, resumed
    finished, partial = (line.split(": ")[0] for line in resumed)
    assert resumed[0].endswith(": finished") and f"{finished}.pt" in on_disk, (resumed, on_disk)
    assert "from epoch" in resumed[1] and f"{partial}-partial.pt" in on_disk, (resumed, on_disk)


# -- the configuration guard -------------------------------------------------------------------
def test_first_difference_names_the_key():
    old = {"seeds": 2, "train": {"lr": 0.1, "epochs": 5}, "variants": [{"name": "a"}]}
    assert first_difference(old, json.loads(json.dumps(old))) is None
    assert first_difference(old, {**old, "seeds": 3}) == "seeds: 2 there, 3 now"
    assert first_difference(old, {**old, "train": {"lr": 0.2, "epochs": 5}}) == \
        "train.lr: 0.1 there, 0.2 now"
    assert first_difference(old, {**old, "variants": [{"name": "b"}]}) == \
        'variants.[0].name: "a" there, "b" now'
    assert first_difference(old, {**old, "extra": 1}) == "extra: absent there, 1 now"
    assert first_difference(1, 1.0) is not None  # a type change is a change


def test_prepare_directory(tmp_path):
    config = {"name": "x", "seeds": 2, "run": {"created": "then"}}
    assert store.prepare_directory(tmp_path, config) == config
    # the same configuration made later: resumed, with the first start's metadata
    later = {**config, "run": {"created": "now"}}
    assert store.prepare_directory(tmp_path, later) == config
    with pytest.raises(ConfigMismatchError, match=r"seeds: 2 there, 3 now.*--fresh"):
        store.prepare_directory(tmp_path, {**config, "seeds": 3})
    Checkpoints(checkpoint_directory(tmp_path), 0).save("group-0", {"records": []})
    fresh = {**config, "seeds": 3}
    assert store.prepare_directory(tmp_path, fresh, fresh=True) == fresh
    assert Checkpoints(checkpoint_directory(tmp_path), 0).load("group-0") is None
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigMismatchError, match="cannot be read"):
        store.prepare_directory(tmp_path, config)


def test_checkpoint_interval_is_validated(tmp_path):
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="checkpoint interval"):
            Checkpoints(tmp_path, bad)
    assert command.CHECKPOINT_SECONDS is store.CHECKPOINT_SECONDS  # one default


def test_cli_refuses_another_configuration(tmp_path, capsys):
    args = ["run", "d2l-highdim", "--seeds", "2", "--epochs", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args[:3], "3", *args[4:]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seeds: 2 there, 3 now" in err and "--fresh" in err
    assert main([*args[:3], "3", *args[4:], "--fresh"]) == 0
    config = json.loads((tmp_path / "d2l-highdim" / "config.json").read_text())
    assert config["seeds"] == 3
    capsys.readouterr()
    assert main([*args[:3], "3", *args[4:]]) == 0  # finished: nothing trained again
    assert "continued an earlier run (group-0: finished" in capsys.readouterr().err


# -- killing the real command ------------------------------------------------------------------
# Enough epochs that the path outlasts a loaded machine's scheduling delay between seeing its
# first checkpoint and signalling it (with 40, ~1.7 s were left: a busy CI machine once let the
# sweep finish first, and Ctrl-C found it done).
_EPOCHS = "120"


def _command(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "regtorch.lab", "sweep", "d2l-highdim", "--penalty", "l2",
            "--seeds", "2", "--epochs", _EPOCHS, "--out", str(out), *args]


def _env() -> dict[str, str]:
    # one thread in every run: reductions then add up in the same order in all of them
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _as_from_a_terminal() -> None:
    # A command started from a shell has Ctrl-C's default disposition; a child inherits an
    # ignored or blocked SIGINT from its parent, and the test process's may have been changed by
    # a library an earlier test ran (the full suite once made this child ignore the signal).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in
            ("metrics.jsonl", "search.jsonl", "summary.json")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("whole")
    whole = subprocess.run(_command(out), env=_env(), capture_output=True, timeout=300)
    assert whole.returncode == 0, whole.stderr.decode()
    return _files(out / "d2l-highdim-sweep-l2")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_killed_sweep_resumes_to_identical_results(tmp_path, how, uninterrupted):
    """The issue's test: a sweep killed mid-way (during its path, after the λ search) and run
    again equals an uninterrupted run, byte for byte."""
    directory = tmp_path / "cut" / "d2l-highdim-sweep-l2"
    partial = directory / "checkpoints" / "path-group-0-partial.pt"
    process = subprocess.Popen(_command(tmp_path / "cut", "--checkpoint-every", "0"),
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=_as_from_a_terminal)
    try:
        deadline = time.monotonic() + 120
        while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert partial.exists(), "the path never checkpointed before the sweep ended"
        process.send_signal(how)
        status = process.wait(timeout=60)
    finally:
        process.kill()
        process.wait()
    if how == signal.SIGINT:
        assert status == 130
        assert process.stderr.read().decode().strip().endswith("regtorch: interrupted")
    else:
        assert status == -signal.SIGKILL
    assert not (directory / "summary.json").exists()
    assert not list(directory.rglob(".*.tmp"))  # no half-written file left behind
    again = subprocess.run(_command(tmp_path / "cut"), env=_env(), capture_output=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    err = again.stderr.decode()
    assert "search-1-group-0: finished" in err and "path-group-0: from epoch" in err, err
    assert _files(directory) == uninterrupted
