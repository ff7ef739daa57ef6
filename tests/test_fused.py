"""The fused C++ kernel (regtorch._fused) against independent NumPy formulas and against its
pure-PyTorch reference (the fallback), in float64 (tight) and float32 (named tolerances).

The kernel is built once per test session (the `ops` fixture, cached under the user's cache
dir); these tests skip only when no C++ compiler exists (CI has one, so there they run)."""

from __future__ import annotations

import fnmatch
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from regtorch import _fused as fused
from regtorch._fused import _build, reference

RTOL = 1e-12
ATOL = 1e-14
# float32 against a float64 evaluation of the same formula: each element goes through at most
# two float32 roundings (the L1 step, then the L2 step), so 2 ulp relative plus an absolute ulp
# of the gradient's scale.
FLOAT32_RTOL = 2.5e-7
FLOAT32_ATOL = 1e-7
# A float32 group norm (the kernel's float64 sum rounded to float32) and the float64 reference's
# may differ by an ulp: the gradient then differs by ~2 ulp.
GROUP_FLOAT32_RTOL = 5e-7
# Adam's threshold: the kernel's √v is exactly rounded, torch.sqrt (vector math library) may be
# 1 ulp off; τ differs by ~2 ulp, and so do the soft-thresholded weights' distance to ±τ.
ADAM_FLOAT32_RTOL = 1e-6
ADAM_FLOAT32_ATOL = 1e-8

DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]
# sizes with and without a vector tail, an empty tensor, a 0-d one
SHAPES = [pytest.param(s, id="x".join(map(str, s)) or "scalar")
          for s in [(), (0,), (7,), (33,), (200, 78), (4, 3, 5, 2)]]
STRENGTHS = [pytest.param(l1, l2, id=f"l1={l1}-l2={l2}")
             for l1, l2 in [(0.0, 0.37), (0.21, 0.0), (0.21, 0.37), (0.0, 0.0)]]


@pytest.fixture(scope="session")
def ops():
    kernel = _build.load_kernel()
    if kernel is None:
        if _build.disabled():
            pytest.skip(f"the fused kernel is disabled ({_build.ENV_DISABLE}=0)")
        if shutil.which("c++") is None:
            pytest.skip("no C++ compiler: the fused kernel cannot be built here")
        pytest.fail("a C++ compiler exists but the fused kernel did not build (see the log)")
    return kernel


def tensors(shape, dtype, seed=0, count=3):
    generator = torch.Generator().manual_seed(seed)
    out = [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
           for _ in range(count)]
    if out[0].numel() > 2:
        out[0].view(-1)[:2] = 0.0  # sign(0) = 0
    return out


def float64(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.float64).numpy()


def close(actual: torch.Tensor, expected: np.ndarray, dtype, rtol=None, atol=None) -> None:
    float32 = dtype == torch.float32
    np.testing.assert_allclose(float64(actual), expected,
                               rtol=rtol or (FLOAT32_RTOL if float32 else RTOL),
                               atol=atol or (FLOAT32_ATOL if float32 else ATOL))


# -- L1, L2, elastic net gradient and value ----------------------------------------------------

@pytest.mark.parametrize("l1, l2", STRENGTHS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_grad_matches_formula_and_reference(ops, shape, dtype, l1, l2):
    params = tensors(shape, dtype)
    grads = tensors(shape, dtype, seed=1)
    expected_grads = [float64(g) + l1 * np.sign(float64(w)) + l2 * float64(w)
                      for w, g in zip(params, grads)]
    expected_value = math.fsum(l1 * abs(x) + 0.5 * l2 * x * x
                               for w in params for x in float64(w).ravel())
    mine = [g.clone() for g in grads]
    theirs = [g.clone() for g in grads]
    value = ops.elementwise_grad(params, mine, l1, l2, True)
    reference_value = reference.elementwise_grad_(params, theirs, l1, l2, value=True)
    for got, want, ref in zip(mine, expected_grads, theirs):
        close(got, want, dtype)
        assert torch.equal(got, ref)  # same roundings as torch's own kernels
    assert value.dtype == torch.float64 and value.ndim == 0
    # both sums are float64 accumulations of exactly converted elements
    assert math.isclose(float(value), expected_value, rel_tol=RTOL, abs_tol=ATOL)
    assert math.isclose(float(reference_value), expected_value, rel_tol=RTOL, abs_tol=ATOL)


def test_elementwise_value_is_float64_accurate_on_a_large_float32_tensor(ops):
    w = torch.randn(1 << 21, generator=torch.Generator().manual_seed(3)) + 0.5
    expected = math.fsum(abs(x) for x in w.tolist())
    value = ops.elementwise_grad([w], [torch.zeros_like(w)], 1.0, 0.0, True)
    assert math.isclose(float(value), expected, rel_tol=1e-13)


def test_no_value_returns_zero_and_still_updates(ops):
    w, g = torch.tensor([1.0, -2.0]), torch.zeros(2)
    assert float(ops.elementwise_grad([w], [g], 0.5, 0.0, False)) == 0.0
    assert g.tolist() == [0.5, -0.5]


def test_empty_list_goes_through_the_reference(ops):
    # an op over no tensors has no dispatch key: the dispatch point never sends one there
    assert fused.kernel_for([]) is None
    assert float(fused.elementwise_grad_([], [], 0.1, 0.2, value=True)) == 0.0
    assert float(fused.group_grad_([], [], 0.1, "rows", [], value=True)) == 0.0
    fused.elementwise_prox_([], [], 0.1, 0.2)
    fused.adam_prox_([], [], [], [], [], 0.1, 0.2)


@pytest.mark.parametrize("l1, l2", STRENGTHS)
def test_staged_tensors_non_contiguous_mixed_and_half(ops, l1, l2):
    base = tensors((6, 9), torch.float32)
    params = [base[0].t(), base[1].to(torch.float64), base[2].to(torch.float16)]
    grads = [torch.ones(6, 9).t(), torch.ones(6, 9, dtype=torch.float64),
             torch.ones(6, 9, dtype=torch.float16)]
    mine, theirs = [g.clone() for g in grads], [g.clone() for g in grads]
    value = ops.elementwise_grad(params, mine, l1, l2, True)
    reference_value = reference.elementwise_grad_(params, theirs, l1, l2, value=True)
    assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], theirs[1])
    assert not mine[0].is_contiguous()  # written back into the caller's tensor
    # half: the kernel computes in float32 and rounds once; torch's half ops likewise per op
    torch.testing.assert_close(mine[2], theirs[2], rtol=1e-3, atol=1e-3)
    assert math.isclose(float(value), float(reference_value), rel_tol=RTOL, abs_tol=ATOL)


# -- group lasso -------------------------------------------------------------------------------

def np_groups(w: np.ndarray, groups: str) -> np.ndarray:
    if w.ndim == 0:
        return w.reshape(1, 1)
    if groups == "rows":
        return w.reshape(w.shape[0], -1)
    if groups == "columns":
        return np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    return w.reshape(1, -1)


def np_group_grad(w: np.ndarray, lam: float, c: float, groups: str) -> np.ndarray:
    """lam·c·w_g/‖w_g‖ (0 for a zero group), laid back out in w's shape."""
    g = np_groups(w, groups)
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    out = np.where(norms > 0, lam * c * g / np.where(norms > 0, norms, 1.0), 0.0)
    if w.ndim == 0:
        return out.reshape(())
    if groups == "columns":
        moved = np.moveaxis(w, 1, 0).shape
        return np.moveaxis(out.reshape(moved), 0, 1)
    return out.reshape(w.shape)


GROUP_CASES = [pytest.param(groups, shape, id=f"{groups}-{'x'.join(map(str, shape))}")
               for groups, shape in [("rows", (7,)), ("rows", (33, 17)), ("rows", (4, 3, 5, 2)),
                                     ("columns", (33, 17)), ("columns", (4, 3, 5, 2)),
                                     ("tensor", (33, 17)), ("tensor", (4, 3, 5, 2)),
                                     ("rows", ())]]


@pytest.mark.parametrize("groups, shape", GROUP_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_group_grad_matches_formula_and_reference(ops, groups, shape, dtype):
    params = tensors(shape, dtype)
    if len(shape) >= 2:
        params[0][1] = 0.0 if groups != "columns" else params[0][1]
        params[1][:, 2] = 0.0  # a zero group (columns) / zero entries (rows)
    grads = tensors(shape, dtype, seed=1)
    lam = 0.3
    coefficients = [1.5, 2.0, 0.5]
    expected = [float64(g) + np_group_grad(float64(w), lam, c, groups)
                for w, g, c in zip(params, grads, coefficients)]
    expected_value = lam * sum(c * np.linalg.norm(np_groups(float64(w), groups), axis=1).sum()
                               for w, c in zip(params, coefficients))
    mine, theirs = [g.clone() for g in grads], [g.clone() for g in grads]
    code = {"rows": 0, "columns": 1, "tensor": 2}[groups]
    value = ops.group_grad(params, mine, lam, code, coefficients, True)
    reference_value = reference.group_grad_(params, theirs, lam, groups, coefficients,
                                            value=True)
    float32 = dtype == torch.float32
    for got, want, ref in zip(mine, expected, theirs):
        close(got, want, dtype, rtol=GROUP_FLOAT32_RTOL if float32 else None)
        torch.testing.assert_close(got, ref, rtol=GROUP_FLOAT32_RTOL if float32 else RTOL,
                                   atol=FLOAT32_ATOL if float32 else ATOL)
        assert torch.isfinite(got).all()
    assert math.isclose(float(value), expected_value, rel_tol=RTOL)
    assert math.isclose(float(reference_value), expected_value, rel_tol=RTOL)


def test_group_grad_of_a_zero_group_is_zero_and_finite(ops):
    w = torch.zeros(3, 4)
    w[0] = 1e-30  # a tiny group: divided by the √tiny floor, finite
    g = torch.zeros(3, 4)
    value = ops.group_grad([w], [g], 1.0, 0, [2.0], True)
    assert torch.isfinite(g).all() and (g[1:] == 0).all()
    assert math.isclose(float(value), 2.0 * 2e-30, rel_tol=1e-6)


def test_group_strength_zero_gives_value_and_no_update(ops):
    w, g = torch.ones(2, 2), torch.zeros(2, 2)
    value = ops.group_grad([w], [g], 0.0, 0, [1.0], True)
    assert float(value) == 0.0 and (g == 0).all()


# -- proximal steps ----------------------------------------------------------------------------

def np_prox(w, t, l1, l2):
    out = np.sign(w) * np.maximum(np.abs(w) - t * l1, 0.0) if l1 else w
    return out / (1.0 + t * l2)


@pytest.mark.parametrize("l1, l2", STRENGTHS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_prox_matches_formula_and_reference(ops, shape, dtype, l1, l2):
    params = tensors(shape, dtype)
    steps = [0.5, 1.0, 2.5]
    expected = [np_prox(float64(w), t, l1, l2) for w, t in zip(params, steps)]
    mine, theirs = [w.clone() for w in params], [w.clone() for w in params]
    versions = [w._version for w in mine]
    ops.elementwise_prox(mine, steps, l1, l2)
    reference.elementwise_prox_(theirs, steps, l1, l2)
    for got, want, ref, version in zip(mine, expected, theirs, versions):
        close(got, want, dtype)
        assert torch.equal(got, ref)
        np.testing.assert_array_equal(float64(got) == 0, want == 0)  # the same exact zeros
        assert got._version > version or got.numel() == 0 or (l1 == 0 and l2 == 0)


def adam_state(shape, dtype, steps=3):
    """A parameter after `steps` Adam steps, its exp_avg_sq and bias-correction scale."""
    torch.manual_seed(0)
    w = torch.randn(shape, dtype=dtype).requires_grad_()
    optimizer = torch.optim.Adam([w], lr=0.05, betas=(0.9, 0.99), eps=1e-6)
    for _ in range(steps):
        optimizer.zero_grad()
        (w.sin() * torch.arange(w.numel(), dtype=dtype).reshape(shape)).sum().backward()
        optimizer.step()
    state = optimizer.state[w]
    scale = math.sqrt(1.0 - 0.99 ** float(state["step"]))
    return w.detach(), state["exp_avg_sq"], scale


@pytest.mark.parametrize("l1, l2", STRENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_prox_matches_formula_and_reference(ops, dtype, l1, l2):
    w, v, scale = adam_state((40, 37), dtype)
    lr, eps = 0.05, 1e-6
    t = lr / (np.sqrt(float64(v)) / scale + eps)
    expected = np_prox(float64(w), t, l1, l2)
    mine, theirs = w.clone(), w.clone()
    ops.adam_prox([mine], [v], [lr], [scale], [eps], l1, l2)
    reference.adam_prox_([theirs], [v], [lr], [scale], [eps], l1, l2)
    float32 = dtype == torch.float32
    rtol = ADAM_FLOAT32_RTOL if float32 else RTOL
    atol = ADAM_FLOAT32_ATOL if float32 else ATOL
    np.testing.assert_allclose(float64(mine), expected, rtol=rtol, atol=atol)
    torch.testing.assert_close(mine, theirs, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(float64(mine) == 0, float64(theirs) == 0)
    if l1:
        assert (mine == 0).any()  # the threshold acted


# -- the build ---------------------------------------------------------------------------------

def test_build_flags_are_per_isa_never_native():
    for cap in ("AVX512", "AVX2", "DEFAULT"):
        flags = _build.build_flags(cap)
        assert not any("native" in flag for flag in flags)
    assert "-mavx2" not in _build.build_flags("DEFAULT")
    assert "-mavx512f" in _build.build_flags("AVX512")


def test_every_kernel_source_ships_with_the_package():
    # A wheel holds only the package data pyproject.toml names: a source the build compiles and
    # the list leaves out makes every installed (non-editable) copy fall back to pure PyTorch.
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from "
                                  "Python 3.11 on")

    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"][
        "regtorch"]
    package = Path(_build.__file__).parents[1]
    for source in _build._SOURCES:
        shipped = source.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(shipped, pattern) for pattern in patterns), shipped


def test_disabled_by_environment(monkeypatch, caplog):
    monkeypatch.setenv(_build.ENV_DISABLE, "0")
    with caplog.at_level(logging.INFO, logger="regtorch"):
        assert _build._load() is None
    assert caplog.messages == [
        "regtorch: fused kernel disabled (REGTORCH_FUSED=0); using the pure-PyTorch path"]


def test_without_a_compiler_one_line_and_the_fallback(monkeypatch, caplog, tmp_path):
    monkeypatch.delenv(_build.ENV_DISABLE, raising=False)
    monkeypatch.setenv(_build.ENV_CACHE, str(tmp_path))  # nothing cached there
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with caplog.at_level(logging.INFO, logger="regtorch"):
        assert _build._load() is None
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith("regtorch: no C++ compiler found")


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(_build.ENV_CACHE, str(tmp_path))
    assert _build.cache_dir() == tmp_path


def test_a_cached_build_loads_without_a_compiler(ops, monkeypatch, caplog):
    monkeypatch.delenv(_build.ENV_DISABLE, raising=False)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with caplog.at_level(logging.INFO, logger="regtorch"):
        assert _build._load() is not None
    assert caplog.messages == []


def test_a_failed_build_falls_back_with_one_line(monkeypatch, caplog, tmp_path):
    monkeypatch.delenv(_build.ENV_DISABLE, raising=False)
    monkeypatch.setenv(_build.ENV_CACHE, str(tmp_path))
    monkeypatch.setenv("CXX", shutil.which("false") or "false")  # a "compiler" that fails
    monkeypatch.setattr(_build, "_build_name", lambda cap: "regtorch_fused_test_failure")
    with caplog.at_level(logging.WARNING, logger="regtorch"):
        assert _build._load() is None
    assert caplog.messages[0].startswith("regtorch: building the fused penalty kernel")
    assert caplog.messages[-1].startswith("regtorch: the fused kernel failed to build")


# -- the attached proximal step (prox_step) ----------------------------------------------------

def np_prox_step(w, v, k, lr, eps, beta2, lr_decay, l1, l2, lam, groups, c):
    """The contract of ``prox_step`` in NumPy: the effective step t from the optimizer's state,
    soft-threshold by t·l1, shrink each group by max(1 − τ_g·c/‖w_g‖, 0) with τ_g the group's
    mean of t·λ, divide by 1 + t·l2."""
    lr_k = lr / (1.0 + (k - 1.0) * lr_decay) if lr_decay else lr
    if v is None:
        t = np.full(w.shape, lr_k)
    else:
        scale = math.sqrt(1.0 - beta2 ** k) if beta2 else 1.0
        t = lr_k / (np.sqrt(v) / scale + eps)
    x = np.sign(w) * np.maximum(np.abs(w) - t * l1, 0.0)
    if lam:
        g, taus = np_groups(x, groups), np_groups(t * lam, groups)
        # a group the L1 step zeroed: divided by the √tiny floor, it stays 0
        floor = math.sqrt(np.finfo(float).tiny)
        norms = np.maximum(np.linalg.norm(g, axis=1, keepdims=True), floor)
        factor = np.maximum(1.0 - taus.mean(axis=1, keepdims=True) * c / norms, 0.0)
        shrunk = g * factor
        if groups == "columns":
            moved = np.moveaxis(x, 1, 0).shape
            x = np.moveaxis(shrunk.reshape(moved), 0, 1)
        else:
            x = shrunk.reshape(x.shape)
    return x / (1.0 + t * l2)


PROX_STEP_CASES = [pytest.param(*case, id=name) for name, case in [
    # (moments?, beta2, lr_decay, l1, l2, lam, groups)
    ("sgd-elastic-net", (False, 0.0, 0.0, 0.21, 0.37, 0.0, None)),
    ("sgd-group-rows", (False, 0.0, 0.0, 0.0, 0.0, 0.3, "rows")),
    ("adam-l1", (True, 0.99, 0.0, 0.21, 0.0, 0.0, None)),
    ("adam-sparse-group-rows", (True, 0.99, 0.0, 0.05, 0.37, 0.3, "rows")),
    ("adam-group-columns", (True, 0.99, 0.0, 0.0, 0.0, 0.3, "columns")),
    ("adam-group-tensor", (True, 0.99, 0.0, 0.0, 0.0, 0.3, "tensor")),
    ("adagrad-lr-decay-group-columns", (True, 0.0, 0.1, 0.05, 0.0, 0.3, "columns")),
    ("adagrad-plain-lr-decay", (False, 0.0, 0.1, 0.21, 0.0, 0.0, None)),
]]


@pytest.mark.parametrize("shape", [pytest.param(s, id="x".join(map(str, s)))
                                   for s in [(40, 37), (4, 3, 5, 2), (7,)]])
@pytest.mark.parametrize("moments, beta2, lr_decay, l1, l2, lam, groups", PROX_STEP_CASES)
def test_prox_step_matches_formula(ops, shape, moments, beta2, lr_decay, l1, l2, lam, groups):
    if groups == "columns" and len(shape) < 2:
        shape = (*shape, 3)  # column groups need >= 2 dims (GroupLasso refuses a vector)
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=generator, dtype=torch.float64)
    # rows and columns of very different sizes, so that some groups go to 0
    w = w * torch.logspace(-3, 0, shape[0], dtype=torch.float64).reshape(-1, *[1] * (w.ndim - 1))
    if w.ndim >= 2:
        w = w * torch.logspace(-2, 0, shape[1], dtype=torch.float64).reshape(1, -1,
                                                                             *[1] * (w.ndim - 2))
    v = torch.rand(shape, generator=generator, dtype=torch.float64) * 0.01
    counts = [torch.tensor(5.0)]  # torch's optimizers keep the step count as a float32 tensor
    lr, eps, c = 0.05, 1e-6, 1.7
    expected = np_prox_step(w.numpy(), v.numpy() if moments else None, 5.0, lr, eps, beta2,
                            lr_decay, l1, l2, lam, groups, c)
    mine = w.clone()
    code = {None: -1, "rows": 0, "columns": 1, "tensor": 2}[groups]
    ops.prox_step([mine], [v] if moments else [], counts, lr, eps, beta2, lr_decay, l1, l2, lam,
                  code, [c] if lam else [])
    np.testing.assert_allclose(mine.numpy(), expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(mine.numpy() == 0, expected == 0)
    if l1 or (lam and groups != "tensor"):
        assert (mine == 0).any()  # the thresholds acted
