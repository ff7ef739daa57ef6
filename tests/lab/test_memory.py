"""The memory budget: groups split into stacked chunks that train exactly as one group would, a
budget too small for two members trains one by one, and sizes parse with units."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regtorch.lab.cli import main
from regtorch.lab.present.rundir import checkpoint_directory
from regtorch.lab.study import parse_study
from regtorch.lab.train import Checkpoints, run_study
from regtorch.lab.train.memory import (
    MAX_DEFAULT_MEMORY,
    chunk_sizes,
    default_memory,
    member_bytes,
    parse_memory,
    state_bytes,
)

# float64; chunks run the same ops on fewer stacked members: only the rounding order of batched
# reductions may differ (~1e-15 per step), as between a stacked member and its plain run
# (test_engine's ATOL). SGD, not Adam: see test_engine's BatchNorm test.
ATOL = 1e-10

STUDY = {
    "name": "chunks", "seeds": 5, "data_seed": 1,
    "data": {"kind": "linear", "features": 5, "train": 20, "val": 10, "test": 10},
    "model": {"kind": "mlp", "hidden": [7], "norm": "batch"},
    "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.5, "batch_size": 8, "epochs": 3,
              "dtype": "float64"},
    "variants": [{"name": "none"}, {"name": "l2", "penalty": "l2", "strength": 0.1}],
}


def _same(a, b) -> None:
    def key(r):
        return (r["variant"], r["strength"] or 0.0, r["seed"], r["epoch"])

    assert len(a.records) == len(b.records)
    # chunks write their records one chunk after the other: compare member by member
    for x, y in zip(sorted(a.records, key=key), sorted(b.records, key=key)):
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, float):
                assert abs(value - y[key]) <= ATOL, key
            else:
                assert value == y[key], key
    assert a.finals.keys() == b.finals.keys()
    for key, tensors in a.finals.items():
        for name, t in tensors.items():
            torch.testing.assert_close(t, b.finals[key][name], rtol=0, atol=ATOL)


def test_chunks_train_as_one_group():
    study = parse_study(STUDY)
    whole = run_study(study)
    assert whole.groups == [{"variants": ["l2", "none"], "members": 10, "mode": "vectorized"}]
    from regtorch.lab.study.data import make_data
    from regtorch.lab.study.models import build_model

    data = make_data(study.data, 1, torch.float64)
    model = build_model(study.model, 5, 1, dtype=torch.float64)
    cost = member_bytes(model, data.x_train[:8], 40, "sgd")
    chunked = run_study(study, memory=4 * cost + 10 * state_bytes(model))  # 4 at a time
    assert chunked.groups == [{"variants": ["l2", "none"], "members": 10, "mode": "vectorized",
                               "chunks": [4, 3, 3]}]  # trained one chunk after the other
    _same(whole, chunked)


def test_a_budget_below_two_members_trains_one_by_one(caplog):
    study = parse_study(STUDY)
    with caplog.at_level("WARNING", logger="regtorch.lab"):
        alone = run_study(study, memory=1)
    assert alone.groups[0]["mode"] == "loop"
    assert "memory budget" in alone.groups[0]["reason"]
    assert len(caplog.records) == 1
    _same(run_study(study), alone)


def test_another_budget_does_not_pick_up_another_plan_s_checkpoint(tmp_path):
    """Interrupted one by one (a tiny budget), run again stacked: the partial state of the other
    plan is left alone and the results are an uninterrupted run's."""
    study = parse_study(STUDY)
    checkpoints = Checkpoints(checkpoint_directory(tmp_path), interval=0)

    def stop(done: int, total: int) -> None:
        if done >= 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(study, checkpoints=checkpoints, on_epoch=stop, memory=1)
    again = run_study(study, checkpoints=checkpoints)
    assert again.resumed == []
    _same(run_study(study), again)
    # one by one again: the first run's partial state is that plan's, and is continued
    alone = run_study(study, checkpoints=checkpoints, memory=2)
    assert alone.groups[0]["mode"] == "loop"
    # one by one, each member over every epoch: 6 members had finished, the 7th was at epoch 2
    assert alone.resumed == [f"group-0-members-{i}-{i + 1}: finished" for i in range(6)] + [
        "group-0-members-6-7: from epoch 2"]
    _same(again, alone)


@pytest.mark.parametrize(("text", "size"), [
    ("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("800mb", 800 << 20),
    ("4096", 4096), (1000, 1000), ("64 K", 64 << 10)])
def test_sizes_parse(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "lots", "2X", "-1G", "0", "1e3G"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError, match="--memory"):
        parse_memory(text)


def test_default_is_a_quarter_of_the_ram_at_most_2_gib():
    assert 0 < default_memory() <= MAX_DEFAULT_MEMORY == 2 << 30


@pytest.mark.parametrize(("members", "cost", "budget", "sizes"), [
    (10, 10, 100, [10]), (10, 10, 1000, [10]), (10, 10, 40, [4, 3, 3]),
    (10, 10, 90, [5, 5]), (3, 10, 19, [1, 1, 1]), (1, 10, 5, [1])])
def test_chunk_sizes(members, cost, budget, sizes):
    assert chunk_sizes(members, cost, budget) == sizes
    # what is kept of every member (its final state) comes off the budget first
    assert chunk_sizes(members, cost, budget + 3 * members, kept=3) == sizes


def test_the_estimate_counts_parameters_state_and_activations():
    model = nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 1)).double()
    params = (10 * 100 + 100 + 100 + 1) * 8
    small = member_bytes(model, torch.zeros(4, 10, dtype=torch.float64), 10, "sgd")
    large = member_bytes(model, torch.zeros(400, 10, dtype=torch.float64), 10, "sgd")
    adam = member_bytes(model, torch.zeros(4, 10, dtype=torch.float64), 10, "adam")
    assert small > 5 * params and adam - small == params  # Adam keeps one more state tensor
    # the training activations: (100 + 100 + 1) doubles per example, twice (forward, backward)
    assert large - small == 2 * 396 * (100 + 100 + 1) * 8


def test_a_bad_memory_option_exits_2_and_makes_no_directory(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "linear-1d", "--memory", "lots", "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("regtorch: --memory 'lots': expected a size such as "
                                       "512M or 2G\n")
    assert not out.exists()
