"""The README's main command: examples/quickstart.py runs and shows what the README says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_quickstart_prints_each_mode():
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    rows = {line[:11].strip(): line[11:].split() for line in out.splitlines()[1:]}
    assert list(rows) == ["none", "loss term", "fused grad", "proximal", "group prox"]
    # The loss term and the fused gradient are the same training run.
    assert rows["loss term"] == rows["fused grad"]
    # Only proximal steps make exact zeros; the group lasso switches whole inputs off.
    zeros = {mode: float(r[3].rstrip("%")) for mode, r in rows.items()}
    assert zeros["none"] == zeros["loss term"] == 0.0
    assert zeros["proximal"] > 50.0 and zeros["group prox"] > 0.0
    assert int(rows["group prox"][4]) > 0 and int(rows["proximal"][4]) == 0
    # Regularization acted: the test error of every regularized run is below the unregularized one.
    test_mse = {mode: float(r[1]) for mode, r in rows.items()}
    assert all(test_mse[m] < test_mse["none"] for m in rows if m != "none")
