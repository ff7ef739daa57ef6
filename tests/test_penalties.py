"""Every row of the conventions table: value, gradient and proximal step against independent
references (NumPy formulas written out here, autograd, closed forms), in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regtorch import L1, L2, ElasticNet, GroupLasso, Orthogonal, Sum

RTOL = 1e-12
ATOL = 1e-14

rng = np.random.default_rng(0)
MATRIX = rng.normal(size=(5, 7))
MATRIX[1] = 0.0  # a zero row: group lasso's gradient and prox at exactly 0
CONV = rng.normal(size=(4, 3, 2, 2))
VECTOR = rng.normal(size=(6,))


def t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


# -- NumPy references: the conventions table written out ---------------------------------------

def groups_of(w: np.ndarray, groups: str) -> np.ndarray:
    """(n_groups, group_size) matrix of a tensor's groups, as DESIGN.md defines them."""
    if groups == "rows":
        return w.reshape(w.shape[0], -1)
    if groups == "columns":
        return np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    return w.reshape(1, -1)


def np_value(name: str, w: np.ndarray) -> float:
    if name == "L2":
        return 0.3 / 2 * np.sum(w**2)
    if name == "L1":
        return 0.3 * np.sum(np.abs(w))
    if name == "ElasticNet":
        return 0.2 * np.sum(np.abs(w)) + 0.5 / 2 * np.sum(w**2)
    kind, groups, scale = name.split("-")
    g = groups_of(w, groups)
    c = math.sqrt(g.shape[1]) if scale == "sqrt" else 1.0
    if kind == "GroupLasso":
        return 0.3 * c * np.sum(np.linalg.norm(g, axis=1))
    # Keras OrthogonalRegularizer: factor * 0.5 * sum|offdiag(N N^T)| / (n(n-1)/2)
    n = g.shape[0]
    if n < 2:
        return 0.0
    unit = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-7)
    product = unit @ unit.T
    off = np.abs(product * (1.0 - np.eye(n))).sum()
    return 0.3 * 0.5 * off / (n * (n - 1) / 2)


def np_grad(name: str, w: np.ndarray) -> np.ndarray:
    if name == "L2":
        return 0.3 * w
    if name == "L1":
        return 0.3 * np.sign(w)
    if name == "ElasticNet":
        return 0.2 * np.sign(w) + 0.5 * w
    _, groups, scale = name.split("-")
    assert groups == "rows"
    g = w.reshape(w.shape[0], -1)
    c = math.sqrt(g.shape[1]) if scale == "sqrt" else 1.0
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    safe = np.where(norms > 0, norms, 1.0)
    return (0.3 * c * np.where(norms > 0, g / safe, 0.0)).reshape(w.shape)


def np_prox(name: str, w: np.ndarray, step: float) -> np.ndarray:
    if name == "L2":
        return w / (1 + step * 0.3)
    if name == "L1":
        return np.sign(w) * np.maximum(np.abs(w) - step * 0.3, 0)
    if name == "ElasticNet":
        return np.sign(w) * np.maximum(np.abs(w) - step * 0.2, 0) / (1 + step * 0.5)
    _, groups, scale = name.split("-")
    g = groups_of(w, groups)
    c = math.sqrt(g.shape[1]) if scale == "sqrt" else 1.0
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    factor = np.maximum(1 - step * 0.3 * c / np.where(norms > 0, norms, np.inf), 0)
    out = g * factor
    if groups == "rows":
        return out.reshape(w.shape)
    if groups == "columns":
        moved = np.moveaxis(w, 1, 0).shape
        return np.moveaxis(out.reshape(moved), 0, 1)
    return out.reshape(w.shape)


def make(name: str):
    if name == "L2":
        return L2(0.3)
    if name == "L1":
        return L1(0.3)
    if name == "ElasticNet":
        return ElasticNet(0.2, 0.5)
    kind, groups, scale = name.split("-")
    if kind == "GroupLasso":
        return GroupLasso(0.3, groups=groups, scale=scale)
    return Orthogonal(0.3, mode=groups)


GROUP_NAMES = [f"GroupLasso-{g}-{s}" for g in ("rows", "columns", "tensor")
               for s in ("sqrt", "none")]
ORTHO_NAMES = ["Orthogonal-rows-none", "Orthogonal-columns-none"]
TENSORS = {"matrix": MATRIX, "conv": CONV}


@pytest.mark.parametrize("shape", list(TENSORS))
@pytest.mark.parametrize("name", ["L2", "L1", "ElasticNet", *GROUP_NAMES, *ORTHO_NAMES])
def test_value_matches_formula(name, shape):
    w = TENSORS[shape]
    got = make(name).value([t(w)])
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.item(), np_value(name, w), rtol=RTOL)


@pytest.mark.parametrize("name", ["L2", "L1", "ElasticNet", "GroupLasso-rows-sqrt",
                                  "GroupLasso-rows-none"])
def test_gradient_matches_formula(name):
    w = t(MATRIX)
    grad = torch.zeros_like(w)
    make(name).add_grad_([w], [grad])
    np.testing.assert_allclose(grad.numpy(), np_grad(name, MATRIX), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", list(TENSORS))
@pytest.mark.parametrize("name", ["L2", "L1", "ElasticNet", *GROUP_NAMES, *ORTHO_NAMES])
def test_gradient_matches_autograd(name, shape):
    """add_grad_ (closed form) against autograd of the NumPy-checked value."""
    w = t(TENSORS[shape]).requires_grad_()
    penalty = make(name)
    (auto,) = torch.autograd.grad(penalty.value([w]), [w])
    grad = torch.zeros_like(w)
    returned = penalty.add_grad_([w.detach()], [grad], value=True)
    torch.testing.assert_close(grad, auto, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(returned.item(), np_value(name, TENSORS[shape]), rtol=RTOL)


@pytest.mark.parametrize("shape", list(TENSORS))
@pytest.mark.parametrize("name", ["L2", "L1", "ElasticNet", *GROUP_NAMES])
@pytest.mark.parametrize("step", [0.05, 0.7])
def test_prox_matches_closed_form(name, shape, step):
    w = t(TENSORS[shape])
    make(name).prox_([w], [step])
    np.testing.assert_allclose(w.numpy(), np_prox(name, TENSORS[shape], step), rtol=RTOL,
                               atol=ATOL)


def test_prox_gives_exact_zeros():
    w = t(MATRIX)
    L1(0.3).prox_([w], [1.0])
    expected_zero = np.abs(MATRIX) <= 0.3
    assert expected_zero.any() and (~expected_zero).any()
    assert torch.equal(w == 0, torch.from_numpy(expected_zero))
    g = t(MATRIX)
    GroupLasso(1.0, scale="none").prox_([g], [1.0])
    norms = np.linalg.norm(MATRIX, axis=1)
    assert torch.equal((g == 0).all(dim=1), torch.from_numpy(norms <= 1.0))


def test_prox_elementwise_step_matches_closed_form():
    w, step = t(MATRIX), rng.uniform(0.01, 1.0, size=MATRIX.shape)
    L1(0.3).prox_([w], [t(step)])
    np.testing.assert_allclose(w.numpy(), np.sign(MATRIX) * np.maximum(
        np.abs(MATRIX) - step * 0.3, 0), rtol=RTOL, atol=ATOL)


def test_group_prox_elementwise_step_uses_group_mean():
    """Documented: under an element-wise step, a group uses the mean step of its elements."""
    step = rng.uniform(0.01, 1.0, size=MATRIX.shape)
    w = t(MATRIX)
    GroupLasso(0.3).prox_([w], [t(step)])
    expected = np.stack([np_prox("GroupLasso-rows-sqrt", MATRIX[i:i + 1], step[i].mean())[0]
                         for i in range(MATRIX.shape[0])])
    np.testing.assert_allclose(w.numpy(), expected, rtol=RTOL, atol=ATOL)


def test_vector_rows_groups_are_elements_and_columns_raise():
    w = t(VECTOR)
    np.testing.assert_allclose(GroupLasso(0.3).value([w]).item(),
                               0.3 * np.abs(VECTOR).sum(), rtol=RTOL)
    for method in ("check", "value"):  # the functional API checks too, not only Regularizer
        arg = w if method == "check" else [w]
        with pytest.raises(ValueError, match="columns"):
            getattr(GroupLasso(0.3, groups="columns"), method)(arg)
        with pytest.raises(ValueError, match="matrix"):
            getattr(Orthogonal(0.3), method)(arg)


@pytest.mark.parametrize("shape", [(1, 5), (5, 1)], ids=["one-row", "one-column"])
def test_orthogonal_with_fewer_than_two_vectors_is_zero(shape):
    mode = "rows" if shape[0] == 1 else "columns"
    w = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    value = Orthogonal(1.0, mode=mode).value([w])
    assert value.item() == 0.0
    grad = torch.zeros_like(w)
    Orthogonal(1.0, mode=mode).add_grad_([w.detach()], [grad])
    assert torch.count_nonzero(grad) == 0


def test_orthogonal_of_orthonormal_rows_is_zero():
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert Orthogonal(1.0).value([q[:4]]).item() == pytest.approx(0.0, abs=1e-12)


# -- composition ------------------------------------------------------------------------------

def test_l1_plus_l2_is_elastic_net_and_tracks_its_terms():
    l1, l2 = L1(0.2), L2(0.5)
    net = l1 + l2
    assert isinstance(net, ElasticNet)
    assert (net.l1, net.l2) == (0.2, 0.5)
    assert isinstance(l2 + l1, ElasticNet)
    l1.lam = 0.4  # a sum holds the very objects that were added
    assert net.l1 == 0.4
    net.l2 = 0.25
    assert l2.lam == 0.25
    w = t(MATRIX)
    np.testing.assert_allclose(net.value([w]).item(), 0.4 * np.abs(MATRIX).sum()
                               + 0.25 / 2 * (MATRIX**2).sum(), rtol=RTOL)


def test_sum_of_python_sum_and_nesting():
    total = sum([L1(0.1), L2(0.2), GroupLasso(0.3)])
    assert isinstance(total, Sum) and len(total.terms) == 3
    nested = (L1(0.1) + L2(0.2)) + (GroupLasso(0.3) + L1(0.05))
    assert [type(x).__name__ for x in nested.terms] == ["L1", "L2", "GroupLasso", "L1"]
    w = t(MATRIX)
    expected = (0.15 * np.abs(MATRIX).sum() + 0.1 * (MATRIX**2).sum()
                + 0.3 * math.sqrt(7) * np.linalg.norm(MATRIX, axis=1).sum())
    np.testing.assert_allclose(nested.value([w]).item(), expected, rtol=RTOL)


def test_sparse_group_lasso_prox_is_threshold_then_group_shrink_then_scale():
    penalty = L1(0.1) + GroupLasso(0.2, scale="none") + L2(0.5)
    assert penalty.has_prox
    w, step = t(MATRIX), 0.6
    penalty.prox_([w], [step])
    soft = np.sign(MATRIX) * np.maximum(np.abs(MATRIX) - step * 0.1, 0)
    norms = np.linalg.norm(soft, axis=1, keepdims=True)
    grouped = soft * np.maximum(1 - step * 0.2 / np.where(norms > 0, norms, np.inf), 0)
    np.testing.assert_allclose(w.numpy(), grouped / (1 + step * 0.5), rtol=RTOL, atol=ATOL)


def test_sparse_group_lasso_prox_minimizes_the_prox_objective():
    """Independent check: the composed prox is the minimizer of ½‖x−v‖² + t·R(x)."""
    penalty = L1(0.1) + GroupLasso(0.2) + L2(0.5)
    v, step = t(MATRIX), 0.3
    x = v.clone()
    penalty.prox_([x], [step])

    def objective(z):
        return 0.5 * ((z - v) ** 2).sum() + step * penalty.value([z])

    best = objective(x).item()
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        assert objective(x + 1e-4 * torch.randn(x.shape, generator=gen,
                                                dtype=torch.float64)).item() >= best - 1e-15


@pytest.mark.parametrize("penalty", [
    Orthogonal(0.1) + L2(0.1),
    GroupLasso(0.1, "rows") + GroupLasso(0.1, "columns"),
], ids=["with-orthogonal", "two-groupings"])
def test_sum_without_prox_raises(penalty):
    assert not penalty.has_prox
    with pytest.raises(TypeError, match="no proximal step"):
        penalty.prox_([t(MATRIX)], [0.1])


def test_orthogonal_has_no_prox():
    with pytest.raises(TypeError, match="no proximal step"):
        Orthogonal(0.1).prox_([t(MATRIX)], [0.1])


# -- strengths --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), -1e-12],
                         ids=["negative", "nan", "inf", "tiny-negative"])
@pytest.mark.parametrize("make_penalty", [L1, L2, GroupLasso, Orthogonal,
                                          lambda v: ElasticNet(v, 0.1),
                                          lambda v: ElasticNet(0.1, v)],
                         ids=["L1", "L2", "GroupLasso", "Orthogonal", "EN-l1", "EN-l2"])
def test_invalid_strength_raises_naming_value(make_penalty, bad):
    with pytest.raises(ValueError, match=rf"Invalid .*{bad}"):
        make_penalty(bad)


def test_invalid_strength_on_assignment_and_types():
    penalty = L2(0.1)
    with pytest.raises(ValueError, match=r"-2\.0"):
        penalty.lam = -2.0
    assert penalty.lam == 0.1
    with pytest.raises(TypeError, match=r"'big'"):
        L1("big")
    with pytest.raises(TypeError):
        L1(True)
    with pytest.raises(ValueError, match=r"-0\.5"):
        L1(torch.tensor([0.1, -0.5]))
    with pytest.raises(ValueError, match="shape"):
        L1(torch.ones(2, 2))
    assert L1(torch.tensor(0.25)).lam == 0.25  # a 0-d tensor is a number


def test_invalid_options_raise():
    with pytest.raises(ValueError, match="'diagonal'"):
        GroupLasso(0.1, groups="diagonal")
    with pytest.raises(ValueError, match="'log'"):
        GroupLasso(0.1, scale="log")
    with pytest.raises(ValueError, match="'both'"):
        Orthogonal(0.1, mode="both")


def test_strengths_round_trip():
    penalty = L1(0.1) + GroupLasso(0.2) + L2(torch.tensor([0.1, 0.2]))
    saved = penalty.strengths()
    other = L1(0.0) + GroupLasso(0.0) + L2(torch.zeros(2))
    other.load_strengths(saved)
    assert other.terms[0].lam == 0.1 and other.terms[1].lam == 0.2
    assert torch.equal(other.terms[2].lam, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="lambda"):
        L1(0.1).load_strengths({"lambda": 1.0})


# -- zero strength, stacked members -----------------------------------------------------------

@pytest.mark.parametrize("penalty", [L2(0.0), L1(0.0), ElasticNet(0.0, 0.0), GroupLasso(0.0),
                                     Orthogonal(0.0)], ids=repr)
def test_zero_strength_changes_nothing(penalty):
    w = t(MATRIX)
    grad = t(CONV[:1, :1, :1, :1].reshape(1, 1) * np.ones_like(MATRIX))
    before_w, before_g = w.clone(), grad.clone()
    assert penalty.add_grad_([w], [grad], value=True).item() == 0.0
    assert torch.equal(grad, before_g)
    if penalty.has_prox:
        penalty.prox_([w], [1.0])
    assert torch.equal(w, before_w)


STACK_MAKERS = {
    "L2": L2, "L1": L1, "ElasticNet": lambda lam: ElasticNet(lam, 2 * lam),
    "GroupLasso-rows": GroupLasso, "GroupLasso-columns": lambda lam: GroupLasso(lam, "columns"),
    "GroupLasso-tensor": lambda lam: GroupLasso(lam, "tensor", "none"),
    "Orthogonal": Orthogonal, "Orthogonal-columns": lambda lam: Orthogonal(lam, "columns"),
}


@pytest.mark.parametrize("name", list(STACK_MAKERS))
def test_stacked_members_equal_separate_models(name):
    """[K, ...] parameters with a [K] strength = K separate penalties (value, grad, prox)."""
    make_penalty = STACK_MAKERS[name]
    lams = [0.0, 0.3, 1.7]
    members = [t(rng.normal(size=(4, 3, 2))) for _ in lams]
    stacked = torch.stack(members).requires_grad_()
    penalty = make_penalty(torch.tensor(lams, dtype=torch.float64))
    value = penalty.value([stacked])
    (auto,) = torch.autograd.grad(value, [stacked])
    expected = sum(make_penalty(lam).value([m]).item() for lam, m in zip(lams, members))
    np.testing.assert_allclose(value.item(), expected, rtol=RTOL)
    grad = torch.zeros_like(stacked)
    penalty.add_grad_([stacked.detach()], [grad])
    torch.testing.assert_close(grad, auto, rtol=RTOL, atol=ATOL)
    for k, (lam, m) in enumerate(zip(lams, members)):
        g = torch.zeros_like(m)
        make_penalty(lam).add_grad_([m], [g])
        torch.testing.assert_close(grad[k], g, rtol=RTOL, atol=ATOL)
    if penalty.has_prox:
        w = stacked.detach().clone()
        penalty.prox_([w], [0.4])
        for k, (lam, m) in enumerate(zip(lams, members)):
            single = m.clone()
            make_penalty(lam).prox_([single], [0.4])
            torch.testing.assert_close(w[k], single, rtol=RTOL, atol=ATOL)


def test_stacked_strength_needs_matching_member_dim():
    with pytest.raises(ValueError, match=r"\[3\]"):
        L2(torch.ones(3)).check(torch.zeros(4, 2))


# -- edge cases -------------------------------------------------------------------------------

@pytest.mark.parametrize("penalty", [L2(0.3), L1(0.3), ElasticNet(0.1, 0.2), GroupLasso(0.3),
                                     GroupLasso(0.3, "columns"), Orthogonal(0.3)], ids=repr)
def test_zero_size_parameter(penalty):
    w = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    assert penalty.value([w]).item() == 0.0
    grad = torch.zeros_like(w)
    penalty.add_grad_([w.detach()], [grad], value=True)
    if penalty.has_prox:
        penalty.prox_([w.detach()], [1.0])


@pytest.mark.parametrize("penalty", [L1(0.3), GroupLasso(0.3), GroupLasso(0.3, "tensor"),
                                     Orthogonal(0.3)], ids=repr)
def test_gradient_at_exact_zero_is_finite(penalty):
    w = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(penalty.value([w]), [w])
    grad = torch.zeros_like(w)
    penalty.add_grad_([w.detach()], [grad])
    assert torch.isfinite(auto).all() and torch.isfinite(grad).all()
    assert torch.count_nonzero(grad) == 0


def test_group_gradient_near_zero_stays_finite_in_float32():
    w = torch.full((2, 3), 1e-30)
    grad = torch.zeros_like(w)
    GroupLasso(1e6).add_grad_([w], [grad])
    assert torch.isfinite(grad).all()


# Partial norms are float32 (√4464 is not exact in float32): ~1e-7 relative after squaring.
HALF_RTOL = 1e-6


def test_half_precision_value_accumulates_in_float32():
    # 70000 ones: the sum of squares exceeds float16's range (65504) but not float32's.
    w = torch.ones(70_000, dtype=torch.float16)
    assert L2(2.0).value([w]).item() == pytest.approx(70_000.0, rel=HALF_RTOL)
    assert L1(1.0).value([w.to(torch.bfloat16)]).item() == pytest.approx(70_000.0, rel=HALF_RTOL)


def test_elastic_net_strengths_load_by_name():
    net = ElasticNet(0.0, 0.0)
    net.load_strengths(ElasticNet(0.2, 0.5).strengths())
    assert (net.l1, net.l2) == (0.2, 0.5) and net.terms[0].lam == 0.2
    with pytest.raises(ValueError, match="expected \\['l1', 'l2'\\]"):
        net.load_strengths({"lam": 1.0})
    with pytest.raises(ValueError, match="-1"):
        net.load_strengths({"l2": -1.0})
