"""Training with regtorch converges to scikit-learn's solutions, exact zeros included.

DESIGN "Mappings to scikit-learn": with ``MSELoss`` (the mean of r², twice scikit-learn's
``1/(2n)·‖r‖²``), ``Lasso(alpha)`` ≡ ``L1(2·alpha)``, ``ElasticNet(alpha, l1_ratio=ρ)`` ≡
``ElasticNet(l1=2·alpha·ρ, l2=2·alpha·(1−ρ))`` and ``Ridge(alpha)`` (``‖r‖² + alpha·‖w‖²``) ≡
``L2(2·alpha/n)``. scikit-learn's coordinate descent (run to ``tol=1e-12``) is the independent
reference; regtorch trains a ``nn.Linear`` whose bias, like scikit-learn's intercept, is not
penalized (the default selection penalizes the weight only).

Everything is float64 (explicit ``dtype=``), full batch, on a tiny problem: each fit takes a
fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from sklearn.linear_model import ElasticNet as SklearnElasticNet
from sklearn.linear_model import Lasso, Ridge
from torch import nn

from regtorch import L1, L2, ElasticNet, Penalty, Regularizer

F64 = torch.float64
N_SAMPLES, N_FEATURES = 60, 20
# scikit-learn stops at a duality gap of 1e-12 (relative to ‖y‖²/n) and our iterations converge
# linearly to machine precision: both land within ~1e-12 of the optimum (measured ≤ 5e-12).
SOLUTION_ATOL = 1e-8
ITERATIONS = 1000  # ~0.3 s a fit; every fit is within 5e-12 of the optimum after ~500
MOMENTUM = 0.9
L1_RATIO = 0.5


def sklearn_options() -> dict:
    return {"tol": 1e-12, "max_iter": 100_000}


@dataclass(frozen=True)
class Problem:
    """A sparse linear regression: 5 of 20 true coefficients are non-zero, an intercept, noise."""

    x: torch.Tensor
    y: torch.Tensor  # [n, 1], the shape of the model's output
    lipschitz: float  # of the gradient of MSELoss(w, b) with respect to (w, b)

    @property
    def x_numpy(self) -> np.ndarray:
        return self.x.numpy()

    @property
    def y_numpy(self) -> np.ndarray:
        return self.y[:, 0].numpy()


@pytest.fixture(scope="module")
def problem() -> Problem:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, N_FEATURES, generator=gen, dtype=F64)
    w = torch.zeros(N_FEATURES, dtype=F64)
    w[:5] = torch.tensor([2.0, -1.5, 1.0, -0.7, 0.5], dtype=F64)
    y = x @ w + 0.3 + 0.5 * torch.randn(N_SAMPLES, generator=gen, dtype=F64)
    # MSELoss = 1/n ‖[x, 1]·θ − y‖² has Hessian 2/n·[x, 1]ᵀ[x, 1]: L = 2/n·σ_max([x, 1])².
    design = np.hstack([x.numpy(), np.ones((N_SAMPLES, 1))])
    lipschitz = 2.0 / N_SAMPLES * np.linalg.norm(design, ord=2) ** 2
    return Problem(x, y[:, None], float(lipschitz))


def fit(problem: Problem, penalty: Penalty, *, momentum: float, prox_step: Callable[[float], float]
        | None, lipschitz: float | None = None, gradient: str = "none") -> nn.Linear:
    """Full-batch SGD on ``MSELoss`` from w = 0, b = 0 with ``lr = 0.9 / L``.

    Args:
        prox_step: maps lr to the step of ``reg.prox_`` after each ``optimizer.step()``, or None.
        lipschitz: L (default: the data term's; pass it larger when the penalty is smooth and
            applied as a gradient).
        gradient: apply the penalty as "add_grad" (``reg.add_grad_()``), "loss-term" (``reg()``)
            or "none" (only through the proximal step).
    """
    model = nn.Linear(N_FEATURES, 1, dtype=F64)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    reg = Regularizer(model, penalty)
    assert [name for name, _ in reg.named_parameters()] == ["weight"]  # the bias is free
    lr = 0.9 / (lipschitz or problem.lipschitz)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    criterion = nn.MSELoss()
    for _ in range(ITERATIONS):
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(problem.x), problem.y)
        if gradient == "loss-term":
            loss = loss + reg()
        loss.backward()
        if gradient == "add_grad":
            reg.add_grad_()
        optimizer.step()
        if prox_step is not None:
            reg.prox_(prox_step(lr))
    return model


def assert_same_solution(model: nn.Linear, estimator, *, zeros: bool) -> None:
    """Coefficients and intercept within SOLUTION_ATOL; with ``zeros``, the same zero pattern:
    exact zeros exactly where scikit-learn has them."""
    coef = model.weight.detach()[0].numpy()
    np.testing.assert_allclose(coef, estimator.coef_, rtol=0, atol=SOLUTION_ATOL)
    np.testing.assert_allclose(model.bias.item(), estimator.intercept_, rtol=0, atol=SOLUTION_ATOL)
    if zeros:
        np.testing.assert_array_equal(coef == 0.0, estimator.coef_ == 0.0)


def assert_sparse_but_not_empty(estimator) -> None:
    """The problem must exercise both sides of the zero pattern, and the non-zeros must be far
    from 0 compared with SOLUTION_ATOL. (The zeros are robust too: with the chosen alphas every
    zero coefficient has a KKT slack of more than 10% of the L1 strength.)"""
    nonzeros = estimator.coef_[estimator.coef_ != 0.0]
    assert 3 <= nonzeros.size <= N_FEATURES - 3, f"alpha gives {nonzeros.size} non-zeros"
    assert np.abs(nonzeros).min() > 1e3 * SOLUTION_ATOL


# --------------------------------------------------------------------------------------------
# Lasso and elastic net by proximal SGD.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SklearnEquivalent:
    """A scikit-learn estimator and the regtorch penalty DESIGN says is the same problem."""

    alpha: float
    estimator: Callable[[float], object]
    penalty: Callable[[float], Penalty]


MAPPINGS = [
    pytest.param(SklearnEquivalent(0.1, lambda a: Lasso(alpha=a, **sklearn_options()),
                         lambda a: L1(2 * a)), id="Lasso"),
    pytest.param(SklearnEquivalent(0.2, lambda a: SklearnElasticNet(alpha=a, l1_ratio=L1_RATIO,
                                                          **sklearn_options()),
                         lambda a: ElasticNet(l1=2 * a * L1_RATIO, l2=2 * a * (1 - L1_RATIO))),
                 id="ElasticNet"),
]

# The proximal step must use the optimizer's *effective* step size. Heavy-ball SGD (dampening 0)
# is buf ← μ·buf + g, w ← w − lr·buf; at a fixed point buf = g/(1−μ), so the iteration with a
# prox of step t is w = prox_{t·R}(w − lr/(1−μ)·g). With t = lr/(1−μ) this is the optimality
# condition of loss + R; with t = lr it is that of loss + (1−μ)·R (see the pitfall test below).
OPTIMIZERS = [
    pytest.param(0.0, lambda lr: lr, id="SGD-prox(lr)"),
    pytest.param(MOMENTUM, lambda lr: lr / (1 - MOMENTUM), id="momentum0.9-prox(lr/(1-mu))"),
]


@pytest.mark.parametrize(("momentum", "prox_step"), OPTIMIZERS)
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_proximal_sgd_converges_to_sklearn_with_the_same_zeros(
        problem: Problem, mapping: SklearnEquivalent, momentum: float,
        prox_step: Callable[[float], float]) -> None:
    estimator = mapping.estimator(mapping.alpha).fit(problem.x_numpy, problem.y_numpy)
    assert_sparse_but_not_empty(estimator)

    model = fit(problem, mapping.penalty(mapping.alpha), momentum=momentum, prox_step=prox_step)

    assert_same_solution(model, estimator, zeros=True)


# The pitfall converges somewhere clearly different (0.16 away in max-norm for the Lasso).
PITFALL_GAP = 0.05


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_momentum_with_prox_at_lr_solves_the_problem_for_a_weaker_penalty(
        problem: Problem, mapping: SklearnEquivalent) -> None:
    """prox_(lr) under momentum μ converges to the solution for strength (1−μ)·alpha: documented
    as the reason regtorch asks for the effective step lr/(1−μ)."""
    intended = mapping.estimator(mapping.alpha).fit(problem.x_numpy, problem.y_numpy)
    weakened = mapping.estimator((1 - MOMENTUM) * mapping.alpha).fit(problem.x_numpy,
                                                                      problem.y_numpy)

    model = fit(problem, mapping.penalty(mapping.alpha), momentum=MOMENTUM,
                prox_step=lambda lr: lr)

    assert_same_solution(model, weakened, zeros=True)
    gap = np.abs(model.weight.detach()[0].numpy() - intended.coef_).max()
    assert gap > PITFALL_GAP


# --------------------------------------------------------------------------------------------
# Ridge by gradient descent with L2 as a gradient or a loss term.
# --------------------------------------------------------------------------------------------

RIDGE_ALPHA = 5.0


@pytest.mark.parametrize("gradient", ["add_grad", "loss-term"])
def test_gradient_descent_with_l2_converges_to_ridge(problem: Problem, gradient: str) -> None:
    estimator = Ridge(alpha=RIDGE_ALPHA, tol=1e-12).fit(problem.x_numpy, problem.y_numpy)
    lam = 2 * RIDGE_ALPHA / N_SAMPLES
    # The penalty is smooth and goes through the gradient: its curvature lam adds to L.
    model = fit(problem, L2(lam), momentum=0.0, prox_step=None,
                lipschitz=problem.lipschitz + lam, gradient=gradient)

    assert_same_solution(model, estimator, zeros=False)
    # Not vacuous: alpha shrinks the coefficients visibly away from least squares.
    unpenalized = Ridge(alpha=0.0).fit(problem.x_numpy, problem.y_numpy)
    assert np.abs(estimator.coef_ - unpenalized.coef_).max() > 1e-2
