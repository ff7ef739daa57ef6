"""Property tests (hypothesis) for every penalty: R ≥ 0, the prox shrinks, is non-expansive,
satisfies its optimality condition v − prox(v) ∈ t·∂R(prox(v)), and fixes exactly the minimizer
0."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from regtorch import L1, L2, ElasticNet, GroupLasso, Orthogonal

SETTINGS = settings(max_examples=60, deadline=None)
TOL = 1e-10  # float64 round-off on values of order 1e2

finite = st.floats(-10, 10, allow_nan=False, allow_subnormal=False)
matrices = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=5),
                      elements=finite)
strengths = st.floats(0.0, 5.0, allow_subnormal=False)
steps = st.floats(0.0, 2.0, allow_subnormal=False)
positive = st.floats(0.01, 5.0)

PROX_MAKERS = {
    "L2": lambda lam: L2(lam),
    "L1": lambda lam: L1(lam),
    "ElasticNet": lambda lam: ElasticNet(lam, 0.5 * lam),
    "GroupLasso-rows": lambda lam: GroupLasso(lam),
    "GroupLasso-columns": lambda lam: GroupLasso(lam, "columns", "none"),
    "GroupLasso-tensor": lambda lam: GroupLasso(lam, "tensor"),
}
ALL_MAKERS = {**PROX_MAKERS, "Orthogonal": lambda lam: Orthogonal(lam),
              "Orthogonal-columns": lambda lam: Orthogonal(lam, "columns")}


def prox(name, lam, v, step):
    w = torch.tensor(v)
    PROX_MAKERS[name](lam).prox_([w], [step])
    return w.numpy()


@SETTINGS
@given(w=matrices, lam=strengths)
def test_value_is_nonnegative_and_zero_at_zero(w, lam):
    for make in ALL_MAKERS.values():
        assert make(lam).value([torch.tensor(w)]).item() >= 0.0
        assert make(lam).value([torch.zeros(w.shape, dtype=torch.float64)]).item() == 0.0


@SETTINGS
@given(w=matrices, lam=strengths, step=steps)
def test_prox_shrinks(w, lam, step):
    for name in PROX_MAKERS:
        out = prox(name, lam, w, step)
        if name.startswith("GroupLasso"):
            assert np.linalg.norm(out) <= np.linalg.norm(w) + TOL
        else:  # coordinate-wise: never grows, never changes sign
            assert np.all(np.abs(out) <= np.abs(w) + TOL)
            assert np.all(out * w >= 0)


@SETTINGS
@given(data=st.data(), lam=strengths, step=steps)
def test_prox_is_nonexpansive(data, lam, step):
    a = data.draw(matrices)
    b = data.draw(hnp.arrays(np.float64, a.shape, elements=finite))
    for name in PROX_MAKERS:
        gap = np.linalg.norm(prox(name, lam, a, step) - prox(name, lam, b, step))
        assert gap <= np.linalg.norm(a - b) + TOL


def _row_groups(name, w):
    if name == "GroupLasso-rows":
        return w.reshape(w.shape[0], -1), math.sqrt(w.shape[1])
    if name == "GroupLasso-columns":
        return w.T, 1.0
    return w.reshape(1, -1), math.sqrt(w.size)


@SETTINGS
@given(v=matrices, lam=positive, step=st.floats(0.01, 2.0))
def test_prox_satisfies_optimality_condition(v, lam, step):
    """x = prox_{tR}(v)  ⇔  (v − x)/t ∈ ∂R(x), checked against the subdifferential by hand."""
    for name in PROX_MAKERS:
        x = prox(name, lam, v, step)
        g = (v - x) / step
        if name == "L2":
            np.testing.assert_allclose(g, lam * x, atol=1e-9)
        elif name in ("L1", "ElasticNet"):
            smooth = 0.5 * lam * x if name == "ElasticNet" else 0.0
            sub = g - smooth
            nz = x != 0
            np.testing.assert_allclose(sub[nz], lam * np.sign(x[nz]), atol=1e-9)
            assert np.all(np.abs(sub[~nz]) <= lam + 1e-9)
        else:
            xg, c = _row_groups(name, x)
            gg, _ = _row_groups(name, g)
            for xi, gi in zip(xg, gg):
                norm = np.linalg.norm(xi)
                if norm > 0:
                    np.testing.assert_allclose(gi, lam * c * xi / norm, atol=1e-9)
                else:
                    assert np.linalg.norm(gi) <= lam * c + 1e-9


@SETTINGS
@given(w=matrices, lam=positive, step=st.floats(0.01, 2.0))
def test_prox_fixed_points_are_the_minimizer(w, lam, step):
    """The fixed points of prox_{tR} are the minimizers of R: 0 stays 0, any other point moves."""
    for name in PROX_MAKERS:
        zero = np.zeros_like(w)
        assert np.array_equal(prox(name, lam, zero, step), zero)
        if np.any(w != 0):
            assert not np.array_equal(prox(name, lam, w, step), w)
