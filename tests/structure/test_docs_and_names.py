"""docs/structure.md's example runs; the structure names are public."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import regtorch
import regtorch.structure

DOC = Path(__file__).resolve().parents[2] / "docs" / "structure.md"


def test_the_documented_example_runs_and_compacts():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    code = "import torch\ntorch.set_num_threads(1)\n" + blocks[0] + (
        "\nassert len(regtorch.compaction_of(small).removed) > 0"
        "\nassert float((small(x) - model(x)).abs().max()) < 1e-5\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Compaction: removed" in result.stdout


def test_public_names():
    for name in regtorch.structure.__all__:
        assert hasattr(regtorch.structure, name)
    for name in ("channel_groups", "ChannelGroups", "ChannelLasso", "ChannelSparsity", "compact",
                 "compaction_of", "carry_optimizer", "Compaction"):
        assert name in regtorch.__all__ and getattr(regtorch, name) is getattr(
            regtorch.structure, name)
