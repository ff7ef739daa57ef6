"""DTensor parameters (FSDP2 ``fully_shard``, tensor parallel ``Shard(0)`` / ``Shard(1)``, even and
uneven shards): two gloo processes on 127.0.0.1 train every case of
``tests/distributed_cases.py`` once (one launch for all cases), and each case is compared with
single-process training of the full model in float64."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import distributed_cases as cases
import pytest
import torch

# Sharded sums add the same numbers in another order than the single process: float64 rounding.
DISTRIBUTED_RTOL = 1e-10
LAUNCH_TIMEOUT_S = 300  # the whole launch (both ranks, every case), on a loaded 2-core machine

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="torch built without torch.distributed / gloo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Launch the 2 ranks once; their per-case results."""
    outdir = tmp_path_factory.mktemp("distributed")
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(cases.__file__).parent),
                                           *sys.path]))
    procs = [subprocess.Popen([sys.executable, cases.__file__, str(rank), str(port),
                               str(outdir)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for rank in range(cases.WORLD)]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"
    return [torch.load(outdir / f"rank{rank}.pt") for rank in range(cases.WORLD)]


@pytest.mark.parametrize("case", cases.CASES, ids=cases.case_id)
def test_sharded_training_equals_single_process(ranks, case):
    expected_values, expected_params, expected_final = cases.reference(case)
    for rank, results in enumerate(ranks):
        got = results[cases.case_id(case)]
        assert "error" not in got, f"rank {rank}: {got.get('error')}"
        # The reported penalty is the global one on every rank, at every step.
        torch.testing.assert_close(got["values"], expected_values, rtol=DISTRIBUTED_RTOL,
                                   atol=0)
        assert got["final"].item() == pytest.approx(expected_final, rel=DISTRIBUTED_RTOL)
        assert got["breakdown"].item() == pytest.approx(expected_final, rel=DISTRIBUTED_RTOL)
        for name, expected in expected_params.items():
            torch.testing.assert_close(got["params"][name], expected, rtol=DISTRIBUTED_RTOL,
                                       atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
        # value(), breakdown() and add_grad_(value=True): one all-reduce each, for two rules.
        assert got["all_reduce_calls"] == 3, f"rank {rank}"
