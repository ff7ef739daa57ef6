"""The lab from Python: which L2 strength does a small MLP need on this data?

Runs in about a minute on one CPU: ``python examples/lab_api.py [OUT_DIR]``. The sweep trains
8 strengths × 3 seeds (plus λ = 0) of your own model factory in one vectorized pass, chooses λ on
the validation split and writes the report to OUT_DIR (default: a temporary directory).
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import torch
from torch import nn

import regtorch.lab


def make_model() -> nn.Module:
    """Your model: called once per init seed, under torch.manual_seed(seed)."""
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1))


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20))                  # 200 rows, 20 features, 3 that matter
    y = x[:, :3] @ np.array([1.5, -2.0, 1.0]) + 0.5 * rng.normal(size=200)

    path = regtorch.lab.sweep(model=make_model, data=(x, y), penalty="l2",
                              lambdas=np.geomspace(1e-4, 1.0, 8), optimizer="adam", lr=1e-2,
                              batch_size=32, epochs=30, seeds=3)
    print(path.table[["train_loss", "val_loss", "test_loss", "weight_norm"]].round(4))
    print(f"best λ = {path.best_lambda:.3g}, λ_1se = {path.lambda_1se:.3g} (on validation)")
    out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="regtorch-lab-")
    print(f"report: {path.report(out)}")


if __name__ == "__main__":
    main()
