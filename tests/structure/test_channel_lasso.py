"""ChannelLasso: value, gradient and proximal step over groups that span several tensors, through
Regularizer and Proximal; ChannelSparsity reaches a target fraction of zero channels.

References, never the code under test: each group's slices concatenated into one vector by hand,
its norm by ``torch.linalg.vector_norm``, the closed-form group shrink on that vector, autograd of
that naive value; for element-wise steps, the mean of the steps over the group's elements written
out here.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from structure_models import ResNet, mlp

from regtorch import (
    WEIGHTS,
    ChannelLasso,
    ChannelSparsity,
    Proximal,
    Regularizer,
    channel_groups,
)

F64 = torch.float64
RTOL = 1e-12


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def setup(kind="resnet"):
    torch.manual_seed(0)
    if kind == "resnet":
        model = ResNet(width=4, classes=3).double()
        x = torch.randn(2, 3, 8, 8, dtype=F64)
        with torch.no_grad():  # BatchNorm entries that are not 1 and 0
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    else:
        model, x = mlp((5, 7, 6, 2)).double(), torch.randn(3, 5, dtype=F64)
    groups = channel_groups(model, x)
    return model, x, groups


def group_vector(groups, group, roles=("out", "bias", "norm")):
    """The group's penalized elements as one flat vector (a differentiable view of the params)."""
    parts = []
    for s in group.of(*roles):
        tensor = groups.tensor(s.tensor)
        parts.append(tensor.index_select(s.dim, torch.tensor(s.indices)).reshape(-1))
    return torch.cat(parts)


def naive_value(groups, lam, scale="sqrt"):
    total = torch.zeros((), dtype=F64)
    for group in groups:
        v = group_vector(groups, group)
        c = math.sqrt(v.numel()) if scale == "sqrt" else 1.0
        total = total + lam * c * torch.linalg.vector_norm(v)
    return total


def params_of(groups):
    return [groups.tensor(n) for n in groups.parameter_names()]


@pytest.mark.parametrize("kind", ["resnet", "mlp"])
@pytest.mark.parametrize("scale", ["sqrt", "none"])
def test_value_and_gradient_match_the_naive_formula(kind, scale):
    _, _, groups = setup(kind)
    penalty = ChannelLasso(0.3, groups, scale=scale)
    params = params_of(groups)
    expected = naive_value(groups, 0.3, scale)
    torch.testing.assert_close(penalty.value(params), expected, rtol=RTOL, atol=0)
    expected_grads = torch.autograd.grad(expected, params)
    grads = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        value = penalty.add_grad_(params, grads, value=True)
    torch.testing.assert_close(value, expected.detach(), rtol=RTOL, atol=0)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=RTOL, atol=1e-15)


def test_regularizer_binds_it_through_the_groups_selector():
    model, _, groups = setup()
    reg = Regularizer(model, {groups.selector: ChannelLasso(0.2, groups)})
    assert sorted(n for n, _ in reg.named_parameters()) == sorted(groups.parameter_names())
    torch.testing.assert_close(reg(), naive_value(groups, 0.2), rtol=RTOL, atol=0)
    with pytest.raises(ValueError, match="holds no penalized slice"):
        Regularizer(model, {WEIGHTS: ChannelLasso(0.2, groups)})  # head.weight has none


def naive_prox(groups, lam, group_steps):
    """The expected parameters after the prox: each group's vector shrunk as one."""
    expected = {n: groups.tensor(n).detach().clone() for n in groups.parameter_names()}
    for group in groups:
        v = group_vector(groups, group).detach()
        norm = torch.linalg.vector_norm(v)
        factor = max(1.0 - float(group_steps[group.index]) * lam * math.sqrt(v.numel())
                     / float(norm), 0.0) if norm > 0 else 0.0
        for s in group.of("out", "bias", "norm"):
            index = torch.tensor(s.indices)
            expected[s.tensor].index_copy_(
                s.dim, index, expected[s.tensor].index_select(s.dim, index) * factor)
    return expected


def test_prox_with_one_step_shrinks_each_group_as_one_across_tensors():
    _, _, groups = setup()
    params = params_of(groups)
    lam, step = 0.3, 0.4
    expected = naive_prox(groups, lam, [step] * len(groups))
    with torch.no_grad():
        ChannelLasso(lam, groups).prox_(params, [step] * len(params))
    zeroed = 0
    for name, p in zip(groups.parameter_names(), params):
        torch.testing.assert_close(p.detach(), expected[name], rtol=RTOL, atol=1e-15)
    for group in groups:
        if not group_vector(groups, group).any():
            zeroed += 1
    assert 0 < zeroed < len(groups)  # some groups exactly zero, all their tensors together


def test_prox_with_elementwise_steps_uses_the_mean_step_of_each_group():
    _, _, groups = setup()
    params = params_of(groups)
    torch.manual_seed(3)
    steps = [torch.rand_like(p) for p in params]  # as Adam's lr/(√v̂+ε), per element
    by_name = dict(zip(groups.parameter_names(), steps))
    means = []
    for group in groups:
        parts = [by_name[s.tensor].index_select(s.dim, torch.tensor(s.indices)).reshape(-1)
                 for s in group.of("out", "bias", "norm")]
        means.append(torch.cat(parts).mean())
    expected = naive_prox(groups, 0.05, means)
    with torch.no_grad():
        ChannelLasso(0.05, groups).prox_(params, steps)
    for name, p in zip(groups.parameter_names(), params):
        torch.testing.assert_close(p.detach(), expected[name], rtol=RTOL, atol=1e-15)


def test_proximal_adam_applies_the_mean_step_rule():
    model, x, groups = setup("mlp")
    penalty = ChannelLasso(0.05, groups)
    reg = Regularizer(model, {groups.selector: penalty})
    optimizer = Proximal(torch.optim.Adam(model.parameters(), lr=0.01), reg)
    y = torch.tensor([0, 1, 0])
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.optimizer.step()
        steps = optimizer.effective_steps()
        by_name = dict(zip(groups.parameter_names(), steps))
        means = [torch.cat([by_name[s.tensor].index_select(s.dim, torch.tensor(s.indices))
                            .reshape(-1) for s in g.of("out", "bias", "norm")]).mean()
                 for g in groups]
        expected = naive_prox(groups, 0.05, means)
        reg.prox_(steps)
        for name in groups.parameter_names():
            torch.testing.assert_close(groups.tensor(name).detach(), expected[name], rtol=RTOL,
                                       atol=1e-15)


def test_zero_strength_changes_nothing_and_zero_groups_have_finite_gradients():
    _, _, groups = setup("mlp")
    params = params_of(groups)
    with torch.no_grad():
        for s in groups.groups[0].of("out", "bias"):
            groups.tensor(s.tensor)[s.indices[0]] = 0
    before = [p.detach().clone() for p in params]
    with torch.no_grad():
        ChannelLasso(0.0, groups).prox_(params, [1.0] * len(params))
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    grads = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        ChannelLasso(1.0, groups).add_grad_(params, grads)
    assert all(torch.isfinite(g).all() for g in grads)
    value = ChannelLasso(1.0, groups).value(params)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in params)


def test_invalid_arguments_are_refused():
    _, _, groups = setup("mlp")
    with pytest.raises(ValueError, match="Invalid scale"):
        ChannelLasso(0.1, groups, scale="l2")
    with pytest.raises(ValueError, match="Invalid roles"):
        ChannelLasso(0.1, groups, roles=("in",))
    with pytest.raises(ValueError, match="Invalid lam"):
        ChannelLasso(-1.0, groups)
    with pytest.raises(TypeError, match="not stacked"):
        ChannelSparsity(ChannelLasso(torch.tensor([0.1, 0.2]), groups), target=0.5)
    model, _, _ = setup("mlp")
    with pytest.raises(ValueError, match="parameters= has no tensor"):
        ChannelLasso(0.1, groups, parameters={"0.weight": model[0].weight})
    stacked = {n: torch.stack([groups.tensor(n).detach()] * 2) for n in groups.parameter_names()}
    with pytest.raises(ValueError, match=r"stacked as \[3, ...\], got shape \(2, 7, 5\)"):
        Regularizer(model, {groups.selector: ChannelLasso(torch.tensor([0.1, 0.2, 0.3]), groups,
                                                          parameters=stacked)},
                    parameters=stacked)
    with pytest.raises(ValueError, match="Invalid target"):
        ChannelSparsity(ChannelLasso(0.1, groups), target=1.5)


def test_sparsity_controller_raises_lambda_until_the_target_is_reached():
    torch.manual_seed(0)
    model, x = mlp((6, 16, 12, 3)).double(), torch.randn(48, 6, dtype=F64)
    y = torch.randint(0, 3, (48,))
    groups = channel_groups(model, x)
    penalty = ChannelLasso(1e-4, groups)
    controller = ChannelSparsity(penalty, target=0.5, factor=2.0)
    optimizer = Proximal(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                         Regularizer(model, {groups.selector: penalty}))
    lams = []
    for _ in range(40):
        for _ in range(5):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        lams.append(penalty.lam)
        fraction = controller.step()
        if controller.reached_:
            break
    assert controller.reached_
    assert fraction >= 0.5
    assert fraction == len(groups.zero_groups(("out", "bias", "norm"))) / len(groups)
    assert all(b == 2 * a for a, b in itertools.pairwise(lams))  # doubled until reached
    held = penalty.lam
    controller.step()
    assert penalty.lam == held  # held once reached


def test_loss_term_and_fused_gradient_give_the_same_gradients():
    model, x, groups = setup()
    reg = Regularizer(model, {groups.selector: ChannelLasso(0.07, groups)})
    y = torch.tensor([0, 2])
    model.zero_grad()
    (F.cross_entropy(model(x), y) + reg()).backward()
    by_loss = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    reg.add_grad_()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, by_loss[name], rtol=RTOL, atol=1e-15)


# -- stacked members: K models as [K, ...] tensors, a [K] strength -----------------------------
def stacked_setup(kind, members=3):
    """K copies of the model with different weights (member 1 has some exactly-zero groups),
    their groups each, and the stacked tensors."""
    models, groups_of = [], []
    for k in range(members):
        model, _, groups = setup(kind)
        torch.manual_seed(10 + k)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
            if k == 1:
                ChannelLasso(2.0, groups).prox_(params_of(groups), [0.5] * len(params_of(groups)))
        models.append(model)
        groups_of.append(groups)
    template = groups_of[0]
    stacked = {n: torch.stack([g.tensor(n).detach() for g in groups_of]).requires_grad_()
               for n in template.parameter_names()}
    return models, groups_of, template, stacked


@pytest.mark.parametrize("kind", ["resnet", "mlp"])
def test_stacked_members_equal_separate_penalties(kind):
    _, groups_of, template, stacked = stacked_setup(kind)
    lams = torch.tensor([0.3, 0.0, 1.1], dtype=F64)
    penalty = ChannelLasso(lams, template, parameters=stacked)
    params = list(stacked.values())
    expected = sum(naive_value(g, float(lam)) for g, lam in zip(groups_of, lams))
    torch.testing.assert_close(penalty.value(params), expected, rtol=RTOL, atol=0)
    grads = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        value = penalty.add_grad_(params, grads, value=True)
    torch.testing.assert_close(value, expected.detach(), rtol=RTOL, atol=0)
    for k, (groups, lam) in enumerate(zip(groups_of, lams)):
        member_grads = torch.autograd.grad(naive_value(groups, float(lam)), params_of(groups),
                                           allow_unused=True)
        for g, e in zip(grads, member_grads):
            torch.testing.assert_close(g[k], torch.zeros_like(g[k]) if e is None else e,
                                       rtol=RTOL, atol=1e-15)
    # Proximal steps: one scalar step, then element-wise steps (their mean per member, group).
    torch.manual_seed(5)
    for steps in ([0.4] * len(params), [torch.rand_like(p) for p in params]):
        expected_params = []
        for k, (groups, lam) in enumerate(zip(groups_of, lams)):
            if isinstance(steps[0], float):
                group_steps = [steps[0]] * len(groups)
            else:
                by_name = {n: s[k] for n, s in zip(template.parameter_names(), steps)}
                group_steps = [torch.cat([by_name[s.tensor].index_select(
                    s.dim, torch.tensor(s.indices)).reshape(-1)
                    for s in g.of("out", "bias", "norm")]).mean() for g in groups]
            expected_params.append(naive_prox(groups, float(lam), group_steps))
            with torch.no_grad():  # the reference models follow, for the next round of steps
                for name, value in expected_params[-1].items():
                    groups.tensor(name).copy_(value)
        with torch.no_grad():
            penalty.prox_(params, steps)
        for name, p in stacked.items():
            for k in range(len(groups_of)):
                torch.testing.assert_close(p[k].detach(), expected_params[k][name], rtol=RTOL,
                                           atol=1e-15)


def test_stacked_proximal_sgd_equals_separate_runs():
    models, groups_of, template, _ = stacked_setup("mlp")
    lams = [0.2, 0.05, 0.0]
    x, y = torch.randn(6, 5, dtype=F64), torch.tensor([0, 1, 0, 1, 1, 0])
    everything = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]
                                 ).requires_grad_() for n, _ in models[0].named_parameters()}
    # K plain runs: each model, its own groups, Proximal SGD with momentum.
    for model, groups, lam in zip(models, groups_of, lams):
        reg = Regularizer(model, {groups.selector: ChannelLasso(lam, groups)})
        optimizer = Proximal(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5), reg)
        for _ in range(4):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    # One stacked run: every parameter stacked, the gradients of the members' losses.
    penalty = ChannelLasso(torch.tensor(lams, dtype=F64), template, parameters=everything)
    reg = Regularizer(models[0], {template.selector: penalty}, parameters=everything)
    optimizer = Proximal(torch.optim.SGD(list(everything.values()), lr=0.1, momentum=0.5), reg)
    for _ in range(4):
        optimizer.zero_grad()
        loss = sum(F.cross_entropy(torch.func.functional_call(
            models[0], {n: t[k] for n, t in everything.items()}, (x,)), y)
            for k in range(len(models)))
        loss.backward()
        optimizer.step()
    for k, model in enumerate(models):
        for name, p in model.named_parameters():
            torch.testing.assert_close(everything[name][k].detach(), p.detach(), rtol=1e-10,
                                       atol=1e-12)
