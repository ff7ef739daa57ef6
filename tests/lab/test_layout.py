"""The lab's layout: every module imports, declares its public names, and the layers follow the
data flow (study → train → analysis → present → cli; matplotlib only in present)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import regtorch.lab

MODULES = sorted(info.name for info in pkgutil.walk_packages(regtorch.lab.__path__,
                                                              "regtorch.lab.")
                 if info.name != "regtorch.lab.__main__")
LAYERS = ["study", "train", "analysis", "present", "cli"]


@pytest.mark.parametrize("name", MODULES)
def test_public_names_import(name):
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__)
    for public in module.__all__:
        assert getattr(module, public) is not None


def _lab_imports(name: str) -> set[str]:
    """The ``regtorch.lab`` modules that module ``name`` imports (anywhere in its source)."""
    source = importlib.util.find_spec(name).origin
    tree = ast.parse(Path(source).read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("regtorch.lab.")}


@pytest.mark.parametrize("name", [m for m in MODULES if m.split(".")[2] in LAYERS])
def test_a_layer_imports_no_later_layer(name):
    layer = name.split(".")[2]
    later = set(LAYERS[LAYERS.index(layer) + 1:])
    wrong = sorted(m for m in _lab_imports(name) if m.split(".")[2] in later)
    assert not wrong, f"{name} imports {wrong}"


@pytest.mark.parametrize(("imported", "loaded"), [
    ("regtorch.lab.present.report", True),  # the check sees matplotlib where it is loaded
    # workflow imports the reports at its first one: demo forks its workers before that
    ("regtorch.lab.cli.workflow, regtorch.lab.analysis", False),
    ("regtorch.lab.analysis, regtorch.lab.train", False),
], ids=["present.report", "cli.workflow", "analysis-train"])
def test_matplotlib_only_in_present(imported, loaded):
    code = f"import sys, {imported}; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == str(loaded)


def test_the_linear_model_s_names_are_the_ones_the_summary_reads():
    from regtorch.lab.study.models import LINEAR_BIAS, LINEAR_WEIGHT, build_model
    from regtorch.lab.study.spec import ModelSpec

    model = build_model(ModelSpec("linear"), inputs=3, outputs=1, seed=0)
    assert [name for name, _ in model.named_parameters()] == [LINEAR_WEIGHT, LINEAR_BIAS]


def test_no_lab_module_imports_another_modules_private_names():
    """Each module uses the others' public surface: a name with a leading underscore stays in
    its module (the Python API once borrowed ``sources._from_arrays``; it is ``load_arrays``)."""
    lab = Path(regtorch.lab.__file__).parent
    borrowed = []
    for path in sorted(lab.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("regtorch"):
                borrowed += [f"{path.relative_to(lab)}: {node.module}.{alias.name}"
                             for alias in node.names if alias.name.startswith("_")]
    assert borrowed == []


# Modules not yet on the schema's names (present/report.py, plots.py and pruning.py, drawn by
# their owners): the list may only shrink.
_METRIC_LITERALS_LEFT = {"present/plots.py", "present/report.py", "present/pruning.py"}


def test_metric_names_are_the_schemas_constants():
    """No lab module spells a record or summary key ("test_loss", "val_loss_std",
    "sparsity"...) as a string of its own: each uses the name lab/schema.py defines."""
    from regtorch.lab import schema

    keys = {*schema.LOSS_KEYS, *schema.ACC_KEYS, schema.WEIGHT_NORM, schema.SPARSITY,
            schema.TEST_TRAIN_RATIO, schema.VAL_LOSS_SE, schema.STOPPED_EPOCH,
            schema.WARNINGS_KEY}
    keys |= {schema.std_key(k) for k in keys}
    lab = Path(regtorch.lab.__file__).parent
    spelled = []
    for path in sorted(lab.rglob("*.py")):
        name = str(path.relative_to(lab))
        if name == "schema.py" or name in _METRIC_LITERALS_LEFT:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
                      and node.body and isinstance(node.body[0], ast.Expr)}
        spelled += [f"{name}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                    if isinstance(node, ast.Constant) and node.value in keys
                    and id(node) not in docstrings]
    assert spelled == []
