"""docs/performance.md's examples run as written and print what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", "import torch\ntorch.set_num_threads(1)\n"
                             + code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_examples_run(fused_kernel):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 4
    # the session has built (or failed to build) the kernel already: the child loads the same
    expected = "True" if fused_kernel is not None else "False"
    assert run(blocks[0]).strip() == f"fused kernel available: {expected}"
    assert run(blocks[1]).strip() == "True"  # the proximal step's exact zeros
    assert run(blocks[2]).strip() == "True"  # loss mode
    assert run(blocks[3]).strip() == "True"  # the pure-PyTorch path (REGTORCH_FUSED=0)
