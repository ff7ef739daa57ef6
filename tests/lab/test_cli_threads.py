"""``--threads``: the torch threads of ``regtorch run`` / ``sweep``, and the default chosen for
the model's size (see ``benchmarks/bench_threads.py`` for the measurement behind it)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace

import pytest
import torch

from regtorch.lab.cli import main
from regtorch.lab.cli.threads import MIN_STEP_SIZE, default_threads, step_size
from regtorch.lab.study.presets import preset, preset_names
from regtorch.lab.study.spec import ModelSpec


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, err.getvalue()


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_trains_on_one_thread_by_default(name):
    assert step_size(preset(name)) < MIN_STEP_SIZE
    assert default_threads(preset(name), cpus=2) == 1


def test_a_large_model_gets_every_cpu():
    study = preset("mlp-synthetic")
    large = replace(study, model=replace(study.model, hidden=(4096, 4096)), seeds=16)
    assert default_threads(large, cpus=2) == 2


def test_step_size_of_an_mlp_by_hand():
    # digits: 300 training rows, batch 32; 64-200-100-10; members = strengths × seeds.
    study = replace(preset("digits"), seeds=1)
    members = sum(len(v.strengths) for v in study.variants)
    assert step_size(study) == members * 32 * (64 * 200 + 200 * 100 + 100 * 10)


def test_step_size_of_a_cnn_by_hand():
    study = replace(preset("digits-cnn"), seeds=1,
                    model=ModelSpec(kind="cnn", channels=(8, 16), kernel=3))
    members = sum(len(v.strengths) for v in study.variants)
    per_example = 64 * 9 * (1 * 8 + 8 * 16) + 16 * 10
    assert step_size(study) == members * study.train.batch_size * per_example


@pytest.mark.parametrize("threads", [None, 2], ids=["default", "two"])
def test_run_sets_the_threads(threads, tmp_path):
    torch.set_num_threads(2 if threads is None else 1)  # not what the run should choose
    argv = ["run", "linear-1d", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path)]
    status, err = _main(argv + ([] if threads is None else ["--threads", str(threads)]))
    assert status == 0, err
    assert torch.get_num_threads() == (1 if threads is None else threads)


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_threads_must_be_positive(command, tmp_path):
    argv = [command, "linear-1d", "--threads", "0", "--out", str(tmp_path / "out")]
    if command == "sweep":
        argv += ["--penalty", "l2", "--lambdas", "0.1"]
    status, err = _main(argv)
    assert status == 2
    assert err == "regtorch: --threads: must be a positive integer, got 0\n"


# --------------------------------------------------------------------------------------------
# Per group (regtorch.lab.train.threads): one thread below MIN_STEP_WORK, the process's above.
# --------------------------------------------------------------------------------------------


def test_group_threads_by_work():
    from regtorch.lab.train.threads import MIN_STEP_WORK, group_threads

    assert group_threads(MIN_STEP_WORK / 2, available=2) == 1
    assert group_threads(MIN_STEP_WORK, available=2) == 2
    torch.set_num_threads(2)
    assert group_threads(MIN_STEP_WORK * 10) == 2


def test_step_work_of_a_cnn_by_hand():
    from regtorch.lab.train.threads import step_work

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3, padding=1, groups=2),
                                torch.nn.BatchNorm2d(6), torch.nn.Flatten(),
                                torch.nn.Linear(6 * 8 * 8, 10))
    x = torch.randn(5, 2, 8, 8)
    per_example = 6 * 8 * 8 * (2 // 2) * 9 + 10 * 6 * 8 * 8
    assert step_work(model, x, members=3) == 3 * 5 * per_example
    assert model[1].num_batches_tracked == 0  # a copy ran, not the model


_SEEN: list[int] = []


class _ThreadProbe(torch.nn.Module):
    """Records the torch thread count each time it runs (vmap runs the Python forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _SEEN.append(torch.get_num_threads())
        return self.linear(x)


def test_a_small_group_trains_on_one_thread_and_the_count_comes_back():
    from regtorch.lab.train import run_study

    study = replace(preset("digits"), seeds=2, variants=preset("digits").variants[:2],
                    model=ModelSpec("python", factory=_ThreadProbe)).with_overrides(epochs=1)
    torch.set_num_threads(2)
    _SEEN.clear()
    run_study(study)
    assert _SEEN and set(_SEEN[-3:]) == {1}  # the training passes
    assert torch.get_num_threads() == 2
