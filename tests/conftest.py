"""Set-up shared by every test: the fused kernel is built (or loaded from its cache) once per
session before any test runs, so its one-line build notice never lands in a test's captured log
and every test sees the same path (the kernel when a compiler exists, else the pure-PyTorch one).
"""

from __future__ import annotations

import pytest

from regtorch._fused import load_kernel


@pytest.fixture(scope="session", autouse=True)
def fused_kernel():
    return load_kernel()
