"""The presets: the experiments of the seed posts, written in the study-file vocabulary.

Each is a plain dict that :func:`regtorch.lab.study.parse_study` reads exactly like a user's TOML
file, so ``regtorch run d2l-highdim`` and ``regtorch run my_copy.toml`` mean the same thing.
"""

from __future__ import annotations

from typing import Any

from regtorch.lab.study.parse import parse_study
from regtorch.lab.study.spec import Study, StudyError, shown

__all__ = ["NOT_IN_DEMO", "PRESETS", "demo_names", "preset", "preset_names"]

# y = 0.1 + Σ 0.01·xᵢ + N(0, 0.01²), d = 200 > n = 50: d2l's high-dimensional linear regression.
_D2L_HIGHDIM: dict[str, Any] = {
    "name": "d2l-highdim",
    "description": "d2l's n=50 < d=200 linear regression: L2, weight decay, L1 and its prox",
    "data": {"kind": "linear", "features": 200, "train": 50, "val": 100, "test": 100,
             "weights": 0.01, "bias": 0.1, "noise_std": 0.01},
    "model": {"kind": "linear", "init": "normal"},
    "train": {"loss": "half-mse", "optimizer": "sgd", "lr": 0.003, "batch_size": 5,
              "epochs": 100},
    "variants": [
        {"name": "none"},
        {"name": "l2-3", "penalty": "l2", "strength": 3.0},
        {"name": "l2-5", "penalty": "l2", "strength": 5.0},
        {"name": "wd-3", "weight_decay": 3.0},
        {"name": "l1-1", "penalty": "l1", "strength": 1.0},
        {"name": "prox-l1-1", "penalty": "l1", "strength": 1.0, "apply": "prox"},
        {"name": "prox-l1-0.1", "penalty": "l1", "strength": 0.1, "apply": "prox"},
    ],
}

# 12 features, X ~ N(-1, 1), the seed's true_w, b = 0.6, noise N(-0.01, 0.01²).
_MLP_SYNTHETIC: dict[str, Any] = {
    "name": "mlp-synthetic",
    "description": "12-feature MLP 12-64-32-1 with Adam: weight decay vs dropout vs L2",
    "data": {"kind": "linear", "features": 12, "train": 500, "val": 100, "test": 100,
             "weights": [-0.1, -0.2, -0.3, -0.4, -0.5, -1.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1],
             "bias": 0.6, "x_mean": -1.0, "x_std": 1.0, "noise_mean": -0.01, "noise_std": 0.01},
    "model": {"kind": "mlp", "hidden": [64, 32], "dropout_after": [1]},
    "train": {"loss": "mse", "optimizer": "adam", "lr": 0.005, "batch_size": 32, "epochs": 20},
    "variants": [
        {"name": "none"},
        {"name": "wd-0.01", "weight_decay": 0.01, "params": "all"},
        {"name": "dropout-0.3", "dropout": 0.3},
        # λ is chosen on the validation set from a grid around Adam's wd-0.01 (see the README).
        {"name": "l2", "penalty": "l2",
         "strength": [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]},
    ],
}

# scikit-learn's 8×8 digits as the offline MNIST and the posts' FC net 64-200-100-10 (batch 32,
# 60 epochs), shared by `digits` and `lr-decay`.
def _digits_fc(optimizer: str, lr: float) -> dict[str, Any]:
    return {"data": {"kind": "digits", "train": 300, "val": 300},
            "model": {"kind": "mlp", "hidden": [200, 100]},
            "train": {"loss": "cross-entropy", "optimizer": optimizer, "lr": lr,
                      "batch_size": 32, "epochs": 60}}


_DIGITS: dict[str, Any] = {
    "name": "digits",
    "description": "FC digit classifier 64-200-100-10: L2, dropout, Adam weight decay, blog class",
    **_digits_fc("adam", 0.001),
    "variants": [
        {"name": "none"},
        {"name": "l2-0.002", "penalty": "l2", "strength": 0.002},
        {"name": "dropout-0.4", "dropout": 0.4},
        {"name": "wd-10", "weight_decay": 10.0, "params": "all"},
        {"name": "wd-10000", "weight_decay": 10000.0, "params": "all"},
        {"name": "blog-0.01", "penalty": "blog", "strength": 0.01},
    ],
}

# x ~ N(0, 1), y = 3x + 2 + N(0, 1), 100 points, full batch, SGD lr 0.01.
_LINEAR_1D: dict[str, Any] = {
    "name": "linear-1d",
    "description": "y = 3x + 2 + noise, full-batch SGD lr 0.01 for 100 epochs: did it converge?",
    "data": {"kind": "linear", "features": 1, "train": 100, "val": 100, "test": 100,
             "weights": 3.0, "bias": 2.0, "noise_std": 1.0},
    "model": {"kind": "linear"},
    "train": {"loss": "mse", "optimizer": "sgd", "lr": 0.01, "batch_size": 0, "epochs": 100},
    "variants": [
        {"name": "none"},
        {"name": "wd-0.01", "weight_decay": 0.01, "params": "all"},
    ],
}

# The digits FC with SGD lr 0.2: constant lr, exponential decay with a floor, plateau.
_LR_DECAY: dict[str, Any] = {
    "name": "lr-decay",
    "description": "digits FC with SGD lr 0.2: constant vs exponential decay (floor) vs plateau",
    **_digits_fc("sgd", 0.2),
    "variants": [
        {"name": "constant"},
        {"name": "exp-0.995",
         "schedule": {"kind": "exponential", "rate": 0.995, "min_lr": 1e-6, "per": "step"}},
        {"name": "plateau", "schedule": {"kind": "plateau", "patience": 200, "per": "step"}},
    ],
}

# d = 200, 10 true non-zeros (±1), n = 100: which penalty finds the support?
_LAMBDAS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
_SPARSE_RECOVERY: dict[str, Any] = {
    "name": "sparse-recovery",
    "description": "d=200, 10 true non-zeros, n=100: support recovery by L2, L1 and prox-L1",
    "data": {"kind": "linear", "features": 200, "train": 100, "val": 100, "test": 1000,
             "weights": 1.0, "nonzeros": 10, "bias": 0.0, "noise_std": 0.5},
    "model": {"kind": "linear"},
    "train": {"loss": "mse", "optimizer": "sgd", "lr": 0.05, "batch_size": 0, "epochs": 300},
    "variants": [
        {"name": "l2", "penalty": "l2", "strength": _LAMBDAS},
        {"name": "l1", "penalty": "l1", "strength": _LAMBDAS},
        {"name": "prox-l1", "penalty": "l1", "strength": _LAMBDAS, "apply": "prox"},
    ],
}

# scikit-learn's diabetes: the L1 path by proximal SGD (float64, full batch, heavy ball) on a
# 0.2-decade grid, checked against scikit-learn's lasso_path / LassoCV on the same split.
_DIABETES_LAMBDAS = [1.0, 0.631, 0.398, 0.251, 0.158, 0.1, 0.0631, 0.0398, 0.0251, 0.0158,
                     0.01, 0.00631, 0.00398, 0.00251, 0.00158, 0.001]
_DIABETES_LASSO: dict[str, Any] = {
    "name": "diabetes-lasso",
    "description": "scikit-learn's diabetes, linear: the L1 path by proximal SGD next to "
                   "scikit-learn's lasso_path and LassoCV",
    "seeds": 3,
    "data": {"kind": "sklearn", "name": "diabetes", "standardize_target": True},
    "model": {"kind": "linear"},
    "train": {"loss": "mse", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 0,
              "epochs": 2000, "dtype": "float64"},
    "variants": [
        {"name": "none"},
        {"name": "lasso", "penalty": "l1", "strength": _DIABETES_LAMBDAS, "apply": "prox"},
    ],
}

# scikit-learn's breast cancer (569 tumours, 30 features), an MLP classifier.
_BREAST_CANCER: dict[str, Any] = {
    "name": "breast-cancer",
    "description": "MLP 30-32-16-2 on scikit-learn's breast cancer: L2, proximal L1, dropout, "
                   "early stopping",
    "data": {"kind": "sklearn", "name": "breast_cancer"},
    "model": {"kind": "mlp", "hidden": [32, 16]},
    "train": {"loss": "cross-entropy", "optimizer": "adam", "lr": 0.001, "batch_size": 32,
              "epochs": 60},
    "variants": [
        {"name": "none"},
        {"name": "l2", "penalty": "l2", "strength": [0.0001, 0.001, 0.01]},
        {"name": "prox-l1", "penalty": "l1", "strength": [0.00001, 0.0001, 0.001],
         "apply": "prox"},
        {"name": "dropout-0.3", "dropout": 0.3},
        {"name": "early-stop", "early_stopping": {"patience": 5}},
    ],
}

# The 8×8 digits as images [N, 1, 8, 8], a CNN 8-16 with BatchNorm.
_DIGITS_CNN: dict[str, Any] = {
    "name": "digits-cnn",
    "description": "CNN 8-16 with BatchNorm on the 8×8 digits as images: L2, dropout, group "
                   "lasso on conv filters vs L1 on BatchNorm scales (prox: exact zeros)",
    "data": {"kind": "sklearn", "name": "digits", "images": True},
    "model": {"kind": "cnn", "channels": [8, 16], "norm": "batch"},
    "train": {"loss": "cross-entropy", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
              "batch_size": 64, "epochs": 20},
    "variants": [
        {"name": "none"},
        {"name": "l2", "penalty": "l2", "strength": 0.001},
        {"name": "dropout-0.3", "dropout": 0.3},
        # With BatchNorm after each conv, a filter's scale does not matter to the loss: the
        # group lasso shrinks it, BatchNorm undoes the shrinking, and only a strong λ zeroes
        # filters, at a large cost in accuracy. An L1 on BatchNorm's scales (network slimming)
        # zeroes whole channels at a small cost.
        {"name": "group-filters", "penalty": "group", "groups": "rows", "strength": 0.1,
         "apply": "prox", "params": "conv*.weight"},
        {"name": "l1-bn-scale", "penalty": "l1", "strength": 0.03, "apply": "prox",
         "params": "norm*.weight"},
    ],
}

# The digits CNN with residual blocks: a group lasso over the coupled channel groups (a residual
# stream channel spans the block's first conv, its residual conv and both BatchNorms; with
# ChannelLasso's roles="auto" the penalty acts on the BatchNorm entries), applied by proximal
# steps; every member is compacted and timed (regtorch.lab.analysis.pruning).
_DIGITS_PRUNE: dict[str, Any] = {
    "name": "digits-prune",
    "description": "residual CNN with BatchNorm on the digits: a channel group-lasso path, "
                   "compacted: accuracy, channels, latency",
    "data": {"kind": "sklearn", "name": "digits", "images": True},
    "model": {"kind": "cnn", "channels": [8, 16], "norm": "batch", "residual": True},
    # SGD with momentum: one scalar step lr/(1−μ) = 0.2, the exact group prox. (Adam's
    # element-wise steps lr/(√v̂+ε) are huge where gradients are small: every channel goes.)
    "train": {"loss": "cross-entropy", "optimizer": "sgd", "lr": 0.02, "momentum": 0.9,
              "batch_size": 64, "epochs": 12},
    "seeds": 2,
    "variants": [
        {"name": "none"},
        {"name": "channels", "penalty": "channels", "apply": "prox",
         "strength": [0.02, 0.04, 0.07, 0.1]},
    ],
}

PRESETS: dict[str, dict[str, Any]] = {spec["name"]: spec for spec in (
    _D2L_HIGHDIM, _MLP_SYNTHETIC, _DIGITS, _LINEAR_1D, _LR_DECAY, _SPARSE_RECOVERY,
    _DIABETES_LASSO, _BREAST_CANCER, _DIGITS_CNN, _DIGITS_PRUNE)}
NOT_IN_DEMO = frozenset({"diabetes-lasso", "breast-cancer", "digits-cnn", "digits-prune"})
"""The real-data presets take longer than ``regtorch demo``'s budget: run them one by one."""


def demo_names() -> list[str]:
    """The presets ``regtorch demo`` runs, in order: all but :data:`NOT_IN_DEMO`."""
    return [name for name in PRESETS if name not in NOT_IN_DEMO]


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str) -> Study:
    """The preset ``name`` as a :class:`Study`.

    Raises:
        StudyError: no preset has that name (the message lists them).
    """
    if name not in PRESETS:
        raise StudyError(f"unknown preset {shown(name)} (presets: {', '.join(PRESETS)})")
    return parse_study(PRESETS[name], f"preset {name}")
