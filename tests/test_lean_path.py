"""The pure-PyTorch ("lean") path of add_grad_ / prox_: what users without the fused kernel get,
and what [K] strengths, half types and other devices always use.

* its gradients equal the textbook ops bit for bit, its values the float64 formulas;
* its multi-tensor form (other devices) equals its per-tensor form (CPU);
* the multi-tensor form launches a number of ops that does not grow with the number of tensors
  (counted with torch.profiler);
* its caches (pieces, [K] strengths, group-lasso coefficients) follow every change of a strength
  (assigned or in place) and of the parameters (new storage, new dtype, new shapes);
* the proximal step attached to an optimizer (its lean element-wise form) equals the optimizer's
  own step followed by NumPy's prox at the effective step, zeros included, and allocates nothing
  after its first step.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from regtorch import L1, L2, ElasticNet, GroupLasso, Proximal, Regularizer, penalties
from regtorch.optim.proximal import ProxHandle
from regtorch.penalties import Scratch

RTOL = 1e-12
ATOL = 1e-14
# A float32 value is summed in float32 pieces of 2^18 elements, then in float64 (_reduce.py):
# "under 1e-6 relative per piece" (8.9e-7 measured for Σw² on randn(4096, 4096), seed 0).
FLOAT32_VALUE_RTOL = 1e-6
# The multi-tensor form's per-piece _foreach_norm, run on CPU, where torch's norm kernel sums in
# float32 lanes (1.1e-6 measured for ord=1 on 15600 elements, 2.5e-6 for ord=2 on 2^18).
FOREACH_NORM_RTOL = 1e-5


@pytest.fixture(autouse=True)
def lean(monkeypatch):
    """Every test here runs the pure-PyTorch path, built kernel or not."""
    monkeypatch.setattr(penalties._fused, "load_kernel", lambda: None)


@pytest.fixture
def multi_tensor(monkeypatch):
    """Take the multi-tensor form (what non-CPU devices take) on CPU."""
    monkeypatch.setattr(penalties, "_multi_tensor", lambda params: True)


def tensors(dtype=torch.float64, seed=0, shapes=((33, 17), (4, 3, 5, 2), (200, 78), (7,))):
    generator = torch.Generator().manual_seed(seed)
    out = [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes]
    out[0][1] = 0.0  # sign(0) = 0, an all-zero row
    return out


def textbook(name, params, grads):
    """g + ∇R with the ops torch's own SGD/Adam would use, one tensor at a time."""
    out = []
    for p, g in zip(params, grads):
        if name in ("L1", "ElasticNet"):
            g = g.add(torch.sign(p), alpha=0.2)
        if name in ("L2", "ElasticNet"):
            g = g.add(p, alpha=0.5)
        out.append(g)
    return out


def exact_value(name, params):
    w = [p.to(torch.float64) for p in params]
    l1 = sum(x.abs().sum() for x in w).item()
    l2 = sum((x * x).sum() for x in w).item()
    return {"L1": 0.2 * l1, "L2": 0.5 / 2 * l2, "ElasticNet": 0.2 * l1 + 0.5 / 2 * l2}[name]


ELEMENTWISE = {"L1": lambda: L1(0.2), "L2": lambda: L2(0.5),
               "ElasticNet": lambda: ElasticNet(0.2, 0.5)}
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]
FORMS = [pytest.param(False, id="per-tensor"), pytest.param(True, id="multi-tensor")]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_gradients_are_the_textbook_ops_and_values_the_formula(name, dtype, form, monkeypatch):
    monkeypatch.setattr(penalties, "_multi_tensor", lambda params: form)
    params, grads = tensors(dtype), tensors(dtype, seed=1)
    expected = textbook(name, params, grads)
    scratch = Scratch()
    for _ in range(2):  # the second call runs on the cached pieces and buffers
        got = [g.clone() for g in grads]
        value = ELEMENTWISE[name]().add_grad_(params, got, value=True, scratch=scratch)
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
        rtol = (RTOL if dtype == torch.float64 else
                FOREACH_NORM_RTOL if form else FLOAT32_VALUE_RTOL)
        assert value.dtype == torch.float64
        assert value.item() == pytest.approx(exact_value(name, params), rel=rtol, abs=ATOL)


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_value_of_add_grad_equals_value(name):
    """float64: add_grad_(value=True) and value() agree to float64 rounding."""
    params = tensors()
    penalty = ELEMENTWISE[name]()
    got = penalty.add_grad_(params, tensors(seed=1), value=True, scratch=Scratch())
    torch.testing.assert_close(got, penalty.value(params), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_multi_tensor_form_equals_per_tensor_form(name, monkeypatch):
    results = []
    for form in (False, True):
        monkeypatch.setattr(penalties, "_multi_tensor", lambda params, form=form: form)
        for dtype in (torch.float64, torch.float32):
            grads = tensors(dtype, seed=1)
            value = ELEMENTWISE[name]().add_grad_(tensors(dtype), grads, value=True,
                                                  scratch=Scratch())
            results.append((grads, value))
    for (grads_a, value_a), (grads_b, value_b) in zip(results[:2], results[2:]):
        for a, b in zip(grads_a, grads_b):
            assert torch.equal(a, b)
        rtol = RTOL if grads_a[0].dtype == torch.float64 else FOREACH_NORM_RTOL
        torch.testing.assert_close(value_a, value_b, rtol=rtol, atol=ATOL)


def test_float32_values_on_16m_elements_stay_within_the_reduce_guarantee():
    """One 4096×4096 float32 tensor (64 pieces): Σw² and Σ|w| within 1e-6 of float64."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(4096, 4096, generator=generator)
    w64 = w.to(torch.float64)
    grad = torch.zeros_like(w)
    for penalty, exact in ((L2(2.0), (w64 * w64).sum()), (L1(1.0), w64.abs().sum())):
        value = penalty.add_grad_([w], [grad], value=True, scratch=Scratch())
        assert value.item() == pytest.approx(exact.item(), rel=FLOAT32_VALUE_RTOL)


# -- launches: O(1) in the number of tensors ---------------------------------------------------

def top_level_ops(fn) -> Counter:
    """aten ops called by ``fn`` that no other aten op called (on CPU a foreach op's per-tensor
    kernels are its children; on an accelerator it is one multi-tensor launch)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    return Counter(e.name for e in events
                   if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))


def ops_per_call(penalty, count: int, value: bool) -> Counter:
    shapes = [(16, 8)] * (count - 1) + [(3, (1 << 18) + 5)]  # one tensor of two pieces
    params, grads = tensors(torch.float32, shapes=shapes), tensors(torch.float32, 1, shapes)
    scratch = Scratch()
    penalty.add_grad_(params, grads, value=value, scratch=scratch)  # buffers and pieces made
    return top_level_ops(lambda: penalty.add_grad_(params, grads, value=value, scratch=scratch))


# Ops per call of the multi-tensor form, whatever the number of tensors: the foreach updates of
# the gradient, and for the value one _foreach_norm, a stack, a cast and a float64 reduction.
LAUNCHES = {"L2": (1, 6), "L1": (3, 8), "ElasticNet": (4, 15)}


@pytest.mark.parametrize("value", [False, True], ids=["gradient", "gradient+value"])
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_multi_tensor_launches_do_not_grow_with_the_number_of_tensors(name, value,
                                                                      multi_tensor):
    few, many = (ops_per_call(ELEMENTWISE[name](), n, value) for n in (4, 40))
    assert few == many
    assert sum(few.values()) == LAUNCHES[name][value], few


def test_stacked_gradient_launches_do_not_grow_and_do_not_convert_strengths(multi_tensor):
    """[K] strengths: after the first call, no .to(dtype) and no check per parameter."""
    def ops(count):
        params = [torch.randn(4, 6, 5) for _ in range(count)]
        grads = [torch.zeros_like(p) for p in params]
        penalty, scratch = L2(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)), Scratch()
        penalty.add_grad_(params, grads, scratch=scratch)
        return top_level_ops(lambda: penalty.add_grad_(params, grads, scratch=scratch))

    few, many = ops(4), ops(40)
    assert few == many == Counter({"aten::_foreach_addcmul_": 1})


# -- caches follow every change ----------------------------------------------------------------

def fresh_grads(params):
    return [torch.zeros_like(p) for p in params]


@pytest.mark.parametrize("make", [L2, L1, GroupLasso], ids=["L2", "L1", "GroupLasso"])
def test_stacked_strength_changed_in_place_or_replaced_is_used_next_step(make):
    params = [torch.randn(3, 5, 4, dtype=torch.float32, generator=torch.Generator()
                          .manual_seed(i)) for i in range(2)]
    penalty, scratch = make(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)), Scratch()

    def step():
        grads = fresh_grads(params)
        value = penalty.add_grad_(params, grads, value=True, scratch=scratch)
        return grads, value

    def reference():
        grads = fresh_grads(params)
        value = make(penalty.lam.clone()).add_grad_(params, grads, value=True)  # no cache
        return grads, value

    step()
    for change in (lambda: penalty.lam.mul_(3.0),  # in place: same tensor, new version
                   lambda: setattr(penalty, "lam", torch.tensor([0.5, 0.0, 0.25],
                                                                dtype=torch.float64)),
                   lambda: penalty.lam[1:].fill_(0.7)):  # in place through a view
        change()
        (grads, value), (expected, expected_value) = step(), reference()
        for a, b in zip(grads, expected):
            assert torch.equal(a, b)
        assert torch.equal(value, expected_value)


def test_group_lasso_strength_set_by_a_schedule_is_used_next_step():
    """ChannelSparsity and the λ schedules assign a new float to ``penalty.lam``."""
    params = tensors(shapes=((6, 4), (5, 3, 2)))
    penalty, scratch = GroupLasso(0.1), Scratch()
    for lam in (0.1, 0.3, 0.0, 2.5):
        penalty.lam = lam
        grads = fresh_grads(params)
        value = penalty.add_grad_(params, grads, value=True, scratch=scratch)
        expected = fresh_grads(params)
        expected_value = GroupLasso(lam).add_grad_(params, expected, value=True)
        for a, b in zip(grads, expected):
            assert torch.equal(a, b)
        assert torch.equal(value, expected_value)


def test_pieces_follow_new_storage_dtype_and_shapes():
    """``p.data = ...`` (new storage, the same Parameter object) and ``model.double()`` are seen."""
    weight = torch.nn.Parameter(torch.randn(5, 4))
    penalty, scratch = L2(1.0), Scratch()

    def value():
        return penalty.add_grad_([weight], [torch.zeros_like(weight)], value=True,
                                 scratch=scratch).item()

    assert value() == pytest.approx(0.5 * weight.double().square().sum().item(), rel=1e-6)
    weight.data = torch.ones(5, 4)  # new storage, same shape
    assert value() == 10.0
    weight.data = torch.ones(5, 4).t()  # the same storage again, transposed: other strides
    assert value() == 10.0
    weight.data = torch.full((3, 2), 2.0, dtype=torch.float64)  # new dtype and shape
    assert value() == 12.0


def test_buffers_follow_a_new_shape_or_dtype_of_any_parameter():
    """``Scratch.like`` remakes its buffers when ``p.data = ...`` changes a parameter's shape, or
    the dtype of one that is not the first (a buffer of the old shape or dtype would be resized
    with a warning, or round a float64 step through float32)."""
    first, second = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(2))
    scratch = Scratch()

    def described():
        return [(tuple(b.shape), b.dtype) for b in scratch.like([first, second])]

    assert described() == [((3, 4), torch.float32), ((2,), torch.float32)]
    same = scratch.like([first, second])
    assert all(a is b for a, b in zip(same, scratch.like([first, second])))  # kept while valid
    first.data = torch.randn(3, 5)
    assert described() == [((3, 5), torch.float32), ((2,), torch.float32)]
    second.data = second.data.double()
    assert described() == [((3, 5), torch.float32), ((2,), torch.float64)]


def test_lean_proximal_step_after_a_parameter_changes_shape():
    """The lean step's buffers (per rule and param group) follow ``p.data = ...``: the result is
    the soft threshold written out, and no output is resized (the kernel is off: ``lean``)."""
    model = torch.nn.Linear(4, 3)
    optimizer = Proximal(torch.optim.SGD(model.parameters(), lr=0.1), Regularizer(model, L1(0.5)))
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    model.weight.data = torch.linspace(-1.0, 1.0, 15).reshape(3, 5)
    model.weight.grad, model.bias.grad = torch.zeros(3, 5), torch.zeros(3)
    before = model.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step()
    expected = torch.sign(before) * (before.abs() - 0.1 * 0.5).clamp_min(0.0)
    assert torch.equal(model.weight.detach(), expected)


def test_group_lasso_prox_with_a_scratch_equals_without_and_follows_shapes():
    scratch = Scratch()
    for shapes in (((6, 4), (5, 3, 2)), ((6, 4), (5, 3, 2)), ((2, 9),)):
        for groups in ("rows", "columns"):
            penalty = GroupLasso(0.4, groups)
            a, b = tensors(shapes=shapes), tensors(shapes=shapes)
            steps = [0.5] * len(a)
            penalty.prox_(a, steps, scratch=scratch)
            penalty.prox_(b, steps)
            for x, y in zip(a, b):
                assert torch.equal(x, y)


def test_group_lasso_stacked_prox_follows_an_in_place_strength_change():
    penalty, scratch = GroupLasso(torch.tensor([0.1, 0.2])), Scratch()
    w = torch.randn(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    penalty.prox_([w.clone()], [0.5], scratch=scratch)
    penalty.lam.mul_(10.0)
    got, expected = w.clone(), w.clone()
    penalty.prox_([got], [0.5], scratch=scratch)
    GroupLasso(penalty.lam.clone()).prox_([expected], [0.5])
    assert torch.equal(got, expected)


# -- the lean element-wise value follows strength changes --------------------------------------

def test_elastic_net_value_follows_strengths_assigned_between_steps():
    """The cached per-piece weights [l1, …, l2/2, …] are rebuilt when a strength changes."""
    params, scratch = tensors(), Scratch()
    penalty = ElasticNet(0.2, 0.5)
    for l1, l2 in ((0.2, 0.5), (0.7, 0.5), (0.7, 0.0), (0.0, 0.3)):
        penalty.l1, penalty.l2 = l1, l2
        grads = fresh_grads(params)
        value = penalty.add_grad_(params, grads, value=True, scratch=scratch)
        w = [p.to(torch.float64) for p in params]
        expected = sum(l1 * x.abs().sum() + l2 / 2 * (x * x).sum() for x in w).item()
        assert value.item() == pytest.approx(expected, rel=RTOL, abs=ATOL)
        for g, p in zip(grads, params):
            assert torch.equal(g, torch.zeros_like(p).add(torch.sign(p), alpha=l1)
                               .add(p, alpha=l2))


# -- the lean proximal step ----------------------------------------------------------------------

def test_soft_threshold_by_an_elementwise_step_equals_the_textbook_form_bit_for_bit():
    """clamp(0, w − τ, w + τ) (the lean form) against w − clamp(w, −τ, τ), ties |w| = τ, ±0
    and tiny values included."""
    for dtype in (torch.float64, torch.float32):
        generator = torch.Generator().manual_seed(5)
        w = torch.randn(40, 30, generator=generator, dtype=torch.float64).to(dtype)
        t = torch.rand(40, 30, generator=generator, dtype=torch.float64).to(dtype)
        w[0, :5] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 0.5], dtype=dtype)
        t[0, 4] = 0.5 / 0.3  # |w| = τ = t·λ up to rounding
        w[1] = (t[1] * 0.3).neg()  # |w| = τ exactly (τ computed as below)
        for scratch in (None, Scratch()):
            got = w.clone()
            L1(0.3).prox_([got], [t], scratch=scratch)
            tau = t * 0.3
            assert torch.equal(got, w - torch.clamp(w, -tau, tau))


def _proximal_reference(make, penalty, steps=4):
    """Proximal(optimizer) on the lean path, and at each step the plain optimizer from the same
    state followed by NumPy's prox with t = lr/(√(v/(1−β₂ᵏ)) + ε) (Adam/AdamW) or
    lr/(1−μ) (SGD with momentum), both in float64."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 3)).to(torch.float64)
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    optimizer = Proximal(make(model.parameters()), Regularizer(model, penalty))
    l1 = sum(t.lam for t in penalty.terms if isinstance(t, L1))
    l2 = sum(t.lam for t in penalty.terms if isinstance(t, L2))
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        twin = copy.deepcopy(model)
        plain = make(twin.parameters())
        plain.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        for a, b in zip(twin.parameters(), model.parameters()):
            a.grad = b.grad.clone()
        plain.step()
        optimizer.step()
        for layer in (0, 2):
            w = twin[layer].weight.detach().numpy()
            group = plain.param_groups[0]
            if "betas" in group:
                state = plain.state[twin[layer].weight]
                v_hat = state["exp_avg_sq"].numpy() / (1 - group["betas"][1]
                                                       ** float(state["step"]))
                t = group["lr"] / (np.sqrt(v_hat) + group["eps"])
            else:
                t = group["lr"] / (1 - group["momentum"])
            expected = np.sign(w) * np.maximum(np.abs(w) - t * l1, 0.0) / (1 + t * l2)
            got = model[layer].weight.detach().numpy()
            np.testing.assert_allclose(got, expected, rtol=RTOL, atol=0)
            assert np.array_equal(got == 0, expected == 0)
    return model


LEAN_PROX_OPTIMIZERS = [pytest.param(make, id=name) for name, make in [
    ("adam", lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.95))),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.01)),
    ("sgd-momentum", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5))]]


@pytest.mark.parametrize("penalty", [pytest.param(L1(0.05), id="L1"),
                                     pytest.param(ElasticNet(0.05, 0.3), id="ElasticNet")])
@pytest.mark.parametrize("make", LEAN_PROX_OPTIMIZERS)
def test_lean_proximal_step_equals_the_optimizer_then_the_prox(make, penalty, monkeypatch):
    def refuse(self):
        raise AssertionError("the lean step must not materialize effective_steps()")

    monkeypatch.setattr(ProxHandle, "effective_steps", refuse)
    model = _proximal_reference(make, penalty)
    assert bool((model[0].weight == 0).any())  # the threshold acted


def test_lean_proximal_step_allocates_nothing_after_the_first():
    model = torch.nn.Linear(30, 20)
    optimizer = Proximal(torch.optim.Adam(model.parameters(), lr=0.01),
                         Regularizer(model, ElasticNet(1e-3, 1e-2)))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        optimizer.handle._after_step(optimizer, (), {})
    events = prof.events()
    assert sum(e.name == "aten::addcdiv" for e in events) == 2  # the lean form ran
    # a 0-d scalar wrapped by torch is all (a parameter-sized buffer would be 2400 bytes)
    allocated = [(e.name, e.cpu_memory_usage) for e in events if e.cpu_memory_usage > 0]
    assert sum(size for _, size in allocated) <= 64, allocated
