r"""scikit-learn's lasso on the lab's own split: the reference a linear L1 study is checked against.

The lab's ``l1`` penalty with the ``mse`` loss minimizes
:math:`\frac1n\lVert y - Xw - b\rVert^2 + \lambda\lVert w\rVert_1`, which is twice scikit-learn's
``Lasso`` objective :math:`\frac1{2n}\lVert y - Xw - b\rVert^2 + \alpha\lVert w\rVert_1` at
:math:`\alpha = \lambda/2`; with ``half-mse`` (:math:`\frac1{2n}\lVert r\rVert^2`) the two are the
same at :math:`\alpha = \lambda`. :func:`lasso_reference` fits, on the train split only,

* ``lasso_path`` at every α of the grid (the intercept by centering, as ``fit_intercept`` does:
  :math:`b = \bar y - \bar x^\top w`), and
* ``LassoCV`` with a ``PredefinedSplit`` whose one fold is the lab's validation split, which
  chooses the α of the lowest validation mean squared error — the lab's rule on the same data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from regtorch.lab.schema import VAL_LOSS

__all__ = ["ALPHA_PER_LAMBDA", "SOLVER_TOL", "lasso_comparison", "lasso_reference"]

ALPHA_PER_LAMBDA = {"mse": 0.5, "half-mse": 1.0}  # scikit-learn's α for the lab's λ, per loss
SOLVER_TOL = 1e-12     # coordinate descent run to (nearly) machine precision: it is the reference
SOLVER_MAX_ITER = 1_000_000


def lasso_reference(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                    y_val: np.ndarray, lambdas: Sequence[float], loss: str) -> dict[str, Any]:
    """scikit-learn's lasso at the lab's strengths ``lambdas`` on the given split.

    Args:
        x_train, y_train, x_val, y_val: the lab's train and validation splits, ``y`` of shape
            ``[n]`` or ``[n, 1]``.
        lambdas: the lab's L1 strengths λ (any order; the result keeps it).
        loss: the lab's loss, ``"mse"`` or ``"half-mse"`` (it fixes α = λ/2 or α = λ).

    Returns:
        ``{"lambdas", "alphas", "coef": [len(lambdas)][features], "intercept", "val_mse",
        "best_lambda"}``: the coefficients and intercept at each λ, the validation mean squared
        error of each, and the λ ``LassoCV`` chooses on the validation split.
    """
    from sklearn.linear_model import LassoCV, lasso_path
    from sklearn.model_selection import PredefinedSplit

    scale = ALPHA_PER_LAMBDA[loss]
    x = np.asarray(x_train, dtype=np.float64)
    y = np.asarray(y_train, dtype=np.float64).reshape(len(x))
    xv = np.asarray(x_val, dtype=np.float64)
    yv = np.asarray(y_val, dtype=np.float64).reshape(len(xv))
    lams = np.asarray(lambdas, dtype=np.float64)
    alphas = lams * scale
    x_mean, y_mean = x.mean(axis=0), y.mean()
    # lasso_path fits no intercept: centre on the train split, as fit_intercept does
    _, coefs, _ = lasso_path(x - x_mean, y - y_mean, alphas=alphas, tol=SOLVER_TOL,
                             max_iter=SOLVER_MAX_ITER)
    coef = coefs.T                                        # [len(lambdas), features]
    intercept = y_mean - coef @ x_mean
    val_mse = ((xv @ coef.T + intercept - yv[:, None]) ** 2).mean(axis=0)
    folds = PredefinedSplit(np.r_[np.full(len(x), -1), np.zeros(len(xv), dtype=int)])
    cv = LassoCV(alphas=np.sort(alphas)[::-1], cv=folds, tol=SOLVER_TOL,
                 max_iter=SOLVER_MAX_ITER).fit(np.vstack([x, xv]), np.r_[y, yv])
    return {"lambdas": lams.tolist(), "alphas": alphas.tolist(), "coef": coef.tolist(),
            "intercept": intercept.tolist(), "val_mse": val_mse.tolist(),
            "best_lambda": float(cv.alpha_ / scale)}


def lasso_comparison(reference: dict[str, Any], weights: np.ndarray, val_loss: Sequence[float],
                     best_lambda: float, feature_names: Sequence[str] | None = None
                     ) -> dict[str, Any]:
    """The lab's L1 path next to scikit-learn's (:func:`lasso_reference` at the same λ).

    Args:
        reference: :func:`lasso_reference` at the lab's strengths.
        weights: the lab's final weights ``[len(lambdas), features]`` (mean over seeds).
        val_loss: the lab's mean final validation loss at each λ.
        best_lambda: the λ the lab chose.
        feature_names: one per weight (default ``x0``, ``x1``, …).

    Returns:
        ``{"rows": [{"lambda", "alpha", "val_loss", "sklearn_val_mse", "max_coef_diff",
        "zeros", "sklearn_zeros"}], "best_lambda", "sklearn_best_lambda", "grid_steps_apart",
        "coefficients": {"lambda", "features", "lab", "sklearn"}}`` — the coefficients at the
        lab's choice.
    """
    lams = list(reference["lambdas"])
    ref_coef = np.asarray(reference["coef"], dtype=np.float64)
    lab = np.asarray(weights, dtype=np.float64)
    rows = [{"lambda": lam, "alpha": alpha, VAL_LOSS: float(loss),
             "sklearn_val_mse": float(mse), "max_coef_diff": float(np.abs(w - r).max()),
             "zeros": int((w == 0).sum()), "sklearn_zeros": int((r == 0).sum())}
            for lam, alpha, loss, mse, w, r in zip(lams, reference["alphas"], val_loss,
                                                    reference["val_mse"], lab, ref_coef)]
    order = sorted(lams, reverse=True)
    at = lams.index(best_lambda)
    names = list(feature_names) if feature_names is not None else [
        f"x{i}" for i in range(lab.shape[1])]
    sklearn_best = reference["best_lambda"]
    nearest = min(order, key=lambda lam: abs(math.log(lam / sklearn_best)))
    return {"rows": rows, "best_lambda": best_lambda, "sklearn_best_lambda": sklearn_best,
            "grid_steps_apart": abs(order.index(best_lambda) - order.index(nearest)),
            "coefficients": {"lambda": best_lambda, "features": names,
                             "lab": lab[at].tolist(), "sklearn": ref_coef[at].tolist()}}
