"""scikit-learn's lasso as the lab's reference: its coefficients satisfy the lasso's optimality
(KKT) conditions in the lab's convention, and LassoCV chooses the λ of the lowest validation MSE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regtorch.lab.analysis.reference import lasso_reference
from regtorch.lab.study.sources import load_source
from regtorch.lab.study.spec import SklearnSource

KKT_TOL = 1e-8  # coordinate descent stops on a duality gap of 1e-12: gradients agree to ~1e-9


@pytest.mark.parametrize("loss", ["mse", "half-mse"])
def test_lasso_reference_satisfies_kkt_in_the_labs_convention(loss):
    data = load_source(SklearnSource(name="diabetes", standardize_target=True), seed=0,
                       dtype=torch.float64)
    x, y = data.x_train.numpy(), data.y_train.numpy()[:, 0]
    scale = 2.0 if loss == "mse" else 1.0  # d/dŷ of the lab's loss is scale·(ŷ − y)/n
    lambda_max = scale * np.abs(x.T @ (y - y.mean())).max() / len(x)
    lambdas = np.r_[1.01 * lambda_max, np.geomspace(lambda_max / 2, lambda_max / 1000, 7)]
    ref = lasso_reference(data.x_train.numpy(), data.y_train.numpy(), data.x_val.numpy(),
                          data.y_val.numpy(), lambdas, loss)
    zeros_seen = 0
    for lam, w, b in zip(lambdas, np.array(ref["coef"]), ref["intercept"]):
        residual = x @ w + b - y
        assert abs(residual.mean()) < KKT_TOL  # the unpenalized intercept is optimal
        grad = scale * x.T @ residual / len(x)
        active = w != 0
        np.testing.assert_allclose(grad[active], -lam * np.sign(w[active]), rtol=0,
                                   atol=KKT_TOL)
        assert np.all(np.abs(grad[~active]) <= lam + KKT_TOL)
        zeros_seen += int((~active).sum())
    assert zeros_seen > 0  # the grid reaches into the sparse part of the path
    assert np.all(np.array(ref["coef"])[0] == 0)  # above λ_max: every weight is 0
    best = lambdas[int(np.argmin(ref["val_mse"]))]
    assert ref["best_lambda"] == pytest.approx(best, rel=1e-12)
