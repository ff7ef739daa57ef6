"""docs/training.md's first example runs as written and shows what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def test_the_documented_loop_runs_and_makes_exact_zeros():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    code = "import torch\ntorch.set_num_threads(1)\n" + blocks[0]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    stopped, summary = result.stdout.strip().splitlines()
    assert stopped.startswith("EarlyStopping: stopped at epoch ")
    zeros = int(re.search(r"first layer: (\d+)% exact zeros", summary).group(1))
    assert zeros > 50
