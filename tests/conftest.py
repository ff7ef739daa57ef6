"""Set-up shared by every test: the fused kernel is built (or loaded from its cache) once per
session before any test runs, so its one-line build notice never lands in a test's captured log
and every test sees the same path (the kernel when a compiler exists, else the pure-PyTorch one).

The `mesh` fixture is a one-process DeviceMesh: a world of one gloo rank, torn down after the test.
"""

from __future__ import annotations

import pytest

from regtorch._fused import load_kernel


@pytest.fixture(scope="session", autouse=True)
def fused_kernel():
    return load_kernel()


@pytest.fixture
def mesh():
    """A one-rank gloo process group and its DeviceMesh, destroyed after the test."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()
