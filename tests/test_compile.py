"""torch.compile: reg() and add_grad_ trace without a graph break, compiled equals eager, and
changing a strength recompiles at most once. Tiny models and the "eager" / "aot_eager" backends
(enough to count graph breaks and to check the traced forward and backward graphs); inductor
is left out: compiling on a loaded 2-core CI machine costs ~40 s per graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from regtorch import L1, L2, ElasticNet, GroupLasso, Orthogonal, Regularizer

# Compiled kernels may reassociate float32 sums (the bar: compiled == eager to 1e-6).
COMPILED_RTOL = 1e-6

PENALTIES = {
    "L1": lambda: L1(0.1),
    "L2": lambda: L2(0.2),
    "ElasticNet": lambda: ElasticNet(0.1, 0.2),
    "GroupLasso-rows": lambda: GroupLasso(0.1),
    "GroupLasso-columns": lambda: GroupLasso(0.1, groups="columns"),
    "GroupLasso-tensor": lambda: GroupLasso(0.1, groups="tensor", scale="none"),
    "Orthogonal": lambda: Orthogonal(0.3),
}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def graph_breaks(fn) -> int:
    return torch._dynamo.explain(fn)().graph_break_count


@pytest.mark.parametrize("name", PENALTIES)
def test_no_graph_break_in_the_loss_term_or_the_fused_gradient(name):
    model = mlp()
    reg = Regularizer(model, PENALTIES[name]())
    assert graph_breaks(lambda: reg()) == 0
    torch._dynamo.reset()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    assert graph_breaks(lambda: reg.add_grad_(value=True)) == 0


def step_eager_and_compiled(penalty_factory, mode: str):
    """Three SGD steps, eager and compiled (aot_eager: traced forward and backward graphs)."""
    x, y = torch.randn(16, 8, generator=torch.Generator().manual_seed(1)), torch.randn(16, 3)
    results = []
    for compiled in (False, True):
        model = mlp()
        reg = Regularizer(model, penalty_factory())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

        def step(model=model, reg=reg):
            out = nn.functional.mse_loss(model(x), y)
            if mode == "loss":
                out = out + reg()
                out.backward()
                return out.detach()
            out.backward()
            return reg.add_grad_(value=True)

        run = torch.compile(step, backend="aot_eager") if compiled else step
        values = []
        for _ in range(3):
            optimizer.zero_grad()
            values.append(run())
            optimizer.step()
        results.append((values, [p.detach().clone() for p in model.parameters()]))
    return results


@pytest.mark.parametrize(("name", "mode"), [("L1", "add_grad_"), ("ElasticNet", "loss"),
                                           ("GroupLasso-columns", "loss"),
                                           ("GroupLasso-columns", "add_grad_"),
                                           ("Orthogonal", "loss")])
def test_compiled_training_steps_equal_eager(name, mode):
    (eager_values, eager_params), (values, params) = step_eager_and_compiled(PENALTIES[name], mode)
    for a, b in zip(values, eager_values):
        torch.testing.assert_close(a.double(), b.double(), rtol=COMPILED_RTOL, atol=1e-9)
    for a, b in zip(params, eager_params):
        torch.testing.assert_close(a, b, rtol=COMPILED_RTOL, atol=1e-7)


@pytest.mark.parametrize("name", ["ElasticNet", "GroupLasso-rows"])
def test_changing_a_strength_recompiles_at_most_once(name):
    model = mlp()
    penalty = PENALTIES[name]()
    reg = Regularizer(model, penalty)
    loss_term = torch.compile(lambda: reg(), backend="eager")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    fused = torch.compile(lambda: reg.add_grad_(value=True), backend="eager")
    for lam in (0.1, 0.2, 0.3, 0.45, 0.7):
        for term in penalty.terms:
            term.lam = lam
        assert loss_term().item() == pytest.approx(reg.value().item(), rel=COMPILED_RTOL)
        assert fused().item() == pytest.approx(reg.value().item(), rel=COMPILED_RTOL)
    # Two functions, each compiled once and recompiled once (the strength then is dynamic).
    assert counters["stats"]["unique_graphs"] <= 4


def test_stacked_strengths_do_not_recompile():
    torch.manual_seed(0)
    stacked = {"weight": torch.randn(4, 6, 8), "bias": torch.randn(4, 6)}
    reg = Regularizer(nn.Linear(8, 6), L1(torch.full((4,), 0.1)), parameters=stacked)
    compiled = torch.compile(lambda: reg(), backend="eager")
    for scale in (1.0, 2.0, 3.0):
        reg.rules[0][1].lam = torch.tensor([0.1, 0.2, 0.3, 0.4]) * scale
        assert compiled().item() == pytest.approx(reg.value().item(), rel=COMPILED_RTOL)
    assert counters["stats"]["unique_graphs"] == 1
