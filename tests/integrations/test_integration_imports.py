"""The integrations are optional: ``import regtorch`` imports no framework, and each
integration module exports exactly its public names."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


def test_import_regtorch_imports_no_framework():
    code = ("import sys, regtorch, regtorch.integrations; "
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', "
            "'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("module", "names"), [
    ("regtorch.integrations.lightning", ["Regularization"]),
    ("regtorch.integrations.transformers", ["Regularization", "decay_parameter_names"]),
])
def test_public_names(module, names):
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == names
    for name in names:
        assert getattr(mod, name).__module__ == module
