"""Lightning's ModelParallelStrategy (FSDP2 ``fully_shard``) and DDP with 2 CPU processes and
gloo: the callback's three modes against single-process training of the full model, written
here; FSDP2 on even (6 hidden units) and uneven (1 output row over 2 ranks) shards."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

# The ranks import lightning; this process only needs to know it is there.
if importlib.util.find_spec("lightning") is None:
    pytest.skip("the lightning extra is not installed", allow_module_level=True)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lightning_fsdp_worker as worker  # noqa: E402

# The bar for sharded training: float64, 3 steps, equal to single-process to 1e-10 (the
# ranks average two half-batch means where one process takes one mean).
RTOL, ATOL = 1e-10, 1e-12


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("fsdp")
    src = str(HERE.parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", str(HERE / "lightning_fsdp_worker.py"), str(out)],
                   env=env, check=True, timeout=300, capture_output=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def reference(mode: str) -> tuple[nn.Module, list[float]]:
    """Single process, full model, full batch: the penalty in the loss, or soft-thresholding
    by the effective step lr/(1−μ); the penalty recorded at each step's starting weights."""
    model = worker.make_model()
    x, y = worker.data()
    optimizer = torch.optim.SGD(model.parameters(), lr=worker.LR, momentum=worker.MOMENTUM)
    weights = (model[0].weight, model[2].weight)
    penalties = []
    for _ in range(worker.STEPS):
        optimizer.zero_grad()
        penalty = worker.LAM * sum(w.abs().sum() for w in weights)
        penalties.append(penalty.item())
        loss = nn.functional.mse_loss(model(x), y)
        (loss if mode == "prox" else loss + penalty).backward()
        optimizer.step()
        if mode == "prox":
            with torch.no_grad():
                tau = worker.LR / (1 - worker.MOMENTUM) * worker.LAM
                for w in weights:
                    w.copy_(torch.sign(w) * torch.clamp(w.abs() - tau, min=0.0))
    return model, penalties


def result(ranks: list[dict], case: str, rank: int) -> dict:
    got = ranks[rank][case]
    assert "error" not in got, got.get("traceback")
    return got


CASES = pytest.mark.parametrize(("strategy", "mode"), [(s, m) for s in worker.STRATEGIES
                                                        for m in ("grad", "loss", "prox")])


@CASES
def test_distributed_training_equals_single_process(ranks, strategy, mode):
    expected, _ = reference(mode)
    for rank in range(2):
        got = result(ranks, f"{strategy}-{mode}", rank)["weights"]
        for name, p in expected.named_parameters():
            actual = torch.tensor(got[name], dtype=torch.float64)
            assert torch.equal(actual == 0, p.detach() == 0), f"rank {rank}: zeros of {name}"
            torch.testing.assert_close(actual, p.detach(), rtol=RTOL, atol=ATOL,
                                       msg=f"rank {rank}: {name} differs")


@CASES
def test_every_rank_logs_the_global_penalty(ranks, strategy, mode):
    _, penalties = reference(mode)
    for rank in range(2):
        logged = result(ranks, f"{strategy}-{mode}", rank)["penalties"]
        assert logged == pytest.approx(penalties, rel=RTOL)
