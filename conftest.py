"""Doctest namespace: library docstring examples use torch, nn and regtorch's public names."""

import pytest
import torch
from torch import nn

import regtorch


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    names = {name: getattr(regtorch, name) for name in regtorch.__all__}
    doctest_namespace.update(torch=torch, nn=nn, **names)
