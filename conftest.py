"""Test session setup: one intra-op thread, and the doctest namespace (torch, nn and regtorch's
public names) that the library's docstring examples use."""

import pytest
import torch
from torch import nn

import regtorch


def pytest_configure(config):
    # The tests train tiny models, where intra-op threads only add synchronization (on a busy
    # 2-core machine, 2 threads made a 0.3 s fit take 19 s); one thread keeps the suite fast.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    names = {name: getattr(regtorch, name) for name in regtorch.__all__}
    doctest_namespace.update(torch=torch, nn=nn, **names)
