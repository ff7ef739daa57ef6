"""ChannelLasso: value, gradient and proximal step over groups that span several tensors, through
Regularizer and Proximal; ChannelSparsity reaches a target fraction of zero channels.

References, never the code under test: each group's slices concatenated into one vector by hand,
its norm by ``torch.linalg.vector_norm``, the closed-form group shrink on that vector, autograd of
that naive value; for element-wise steps, the mean of the steps over the group's elements written
out here. The slices ``roles="auto"`` penalizes are written out per model (``HAND_NORMALIZED``:
the producers a BatchNorm follows directly, read off the architecture).
"""

from __future__ import annotations

import copy
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
ALL = ("out", "bias", "norm")
ROLES = [ALL, "auto"]
ROLE_IDS = ["all-roles", "auto"]


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


def hand_penalized(groups, group, roles):
    """The slices ``roles`` penalizes; for ``"auto"`` every norm slice and the rows and bias of
    the producers no BatchNorm follows: in the test ResNet every convolution feeds one (``stem`` →
    ``bn``, ``conv1`` → ``bn1``, ``conv2`` → ``bn2``, ``down.0`` → ``down.1``); the MLP has none."""
    if roles != "auto":
        return group.of(*roles)
    normalized = {s.tensor for g in groups for s in g.of("out")
                  if s.tensor == "stem.weight" or ".conv" in s.tensor or ".down." in s.tensor}
    return tuple(s for s in group.of(*ALL) if s.role == "norm" or s.tensor not in normalized)


def group_vector(groups, group, roles=ALL):
    """The group's penalized elements as one flat vector (a differentiable view of the params)."""
    parts = []
    for s in hand_penalized(groups, group, roles):
        tensor = groups.tensor(s.tensor)
        parts.append(tensor.index_select(s.dim, torch.tensor(s.indices)).reshape(-1))
    return torch.cat(parts)


def naive_value(groups, lam, scale="sqrt", roles=ALL):
    total = torch.zeros((), dtype=F64)
    for group in groups:
        v = group_vector(groups, group, roles)
        c = math.sqrt(v.numel()) if scale == "sqrt" else 1.0
        total = total + lam * c * torch.linalg.vector_norm(v)
    return total


def params_of(groups):
    return [groups.tensor(n) for n in groups.parameter_names()]


@pytest.mark.parametrize("roles", ROLES, ids=ROLE_IDS)
@pytest.mark.parametrize("kind", ["resnet", "mlp"])
@pytest.mark.parametrize("scale", ["sqrt", "none"])
def test_value_and_gradient_match_the_naive_formula(kind, scale, roles):
    _, _, groups = setup(kind)
    penalty = ChannelLasso(0.3, groups, scale=scale, roles=roles)
    params = params_of(groups)
    expected = naive_value(groups, 0.3, scale, roles)
    torch.testing.assert_close(penalty.value(params), expected, rtol=RTOL, atol=0)
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True,
                                         materialize_grads=True)
    grads = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        value = penalty.add_grad_(params, grads, value=True)
    torch.testing.assert_close(value, expected.detach(), rtol=RTOL, atol=0)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("roles", ROLES, ids=ROLE_IDS)
def test_regularizer_binds_it_through_the_groups_selector(roles):
    model, _, groups = setup()
    reg = Regularizer(model, {groups.selector: ChannelLasso(0.2, groups, roles=roles)})
    # every tensor with a penalizable slice is bound; "auto" leaves the conv rows at 0 penalty
    assert sorted(n for n, _ in reg.named_parameters()) == sorted(groups.parameter_names())
    torch.testing.assert_close(reg(), naive_value(groups, 0.2, roles=roles), rtol=RTOL, atol=0)
    with pytest.raises(ValueError, match="holds no penalizable slice"):
        Regularizer(model, {WEIGHTS: ChannelLasso(0.2, groups)})  # head.weight has none


def test_auto_is_the_default_and_leaves_normalized_rows_unpenalized():
    # Intended change (was roles=("out", "bias", "norm")): a conv followed by BatchNorm is not
    # penalized by default, its BatchNorm entries are.
    model, _, groups = setup()
    penalty = ChannelLasso(0.2, groups)
    assert penalty.roles == "auto"
    conv = model.layer1[0].conv1.weight
    grad = torch.zeros_like(conv)
    with torch.no_grad():
        penalty.add_grad_([conv], [grad])
        penalty.prox_([conv], [10.0])
    assert not grad.any() and conv.any()


def naive_prox(groups, lam, group_steps, roles=ALL):
    """The expected parameters after the prox: each group's vector shrunk as one."""
    expected = {n: groups.tensor(n).detach().clone() for n in groups.parameter_names()}
    for group in groups:
        v = group_vector(groups, group, roles).detach()
        norm = torch.linalg.vector_norm(v)
        factor = max(1.0 - float(group_steps[group.index]) * lam * math.sqrt(v.numel())
                     / float(norm), 0.0) if norm > 0 else 0.0
        for s in hand_penalized(groups, group, roles):
            index = torch.tensor(s.indices)
            expected[s.tensor].index_copy_(
                s.dim, index, expected[s.tensor].index_select(s.dim, index) * factor)
    return expected


@pytest.mark.parametrize("roles", ROLES, ids=ROLE_IDS)
def test_prox_with_one_step_shrinks_each_group_as_one_across_tensors(roles):
    _, _, groups = setup()
    params = params_of(groups)
    # the BatchNorm-only groups of "auto" are small (c_g = √2 per norm): a larger λ zeroes some
    lam, step = (0.3 if roles == ALL else 2.0), 0.4
    expected = naive_prox(groups, lam, [step] * len(groups), roles)
    with torch.no_grad():
        ChannelLasso(lam, groups, roles=roles).prox_(params, [step] * len(params))
    zeroed = 0
    for name, p in zip(groups.parameter_names(), params):
        torch.testing.assert_close(p.detach(), expected[name], rtol=RTOL, atol=1e-15)
    for group in groups:
        if not group_vector(groups, group, roles).any():
            zeroed += 1
    assert 0 < zeroed < len(groups)  # some groups exactly zero, all their tensors together


@pytest.mark.parametrize("roles", ROLES, ids=ROLE_IDS)
def test_prox_with_elementwise_steps_uses_the_mean_step_of_each_group(roles):
    _, _, groups = setup()
    params = params_of(groups)
    torch.manual_seed(3)
    steps = [torch.rand_like(p) for p in params]  # as Adam's lr/(√v̂+ε), per element
    by_name = dict(zip(groups.parameter_names(), steps))
    means = []
    for group in groups:
        parts = [by_name[s.tensor].index_select(s.dim, torch.tensor(s.indices)).reshape(-1)
                 for s in hand_penalized(groups, group, roles)]
        means.append(torch.cat(parts).mean())
    expected = naive_prox(groups, 0.05, means, roles)
    with torch.no_grad():
        ChannelLasso(0.05, groups, roles=roles).prox_(params, steps)
    for name, p in zip(groups.parameter_names(), params):
        torch.testing.assert_close(p.detach(), expected[name], rtol=RTOL, atol=1e-15)


@pytest.mark.filterwarnings("ignore:.*mean step:UserWarning")  # warned: test_proximal.py
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


def zero_first(groups, n):
    """Reset the MLP's hidden layers to ones, then zero the rows and bias of the first n groups."""
    with torch.no_grad():
        for name in groups.parameter_names():
            groups.tensor(name).fill_(1.0)
        for group in groups.groups[:n]:
            for s in group.of("out", "bias"):
                groups.tensor(s.tensor)[list(s.indices)] = 0


def mlp_controller(target=0.5, **options):
    torch.manual_seed(0)
    model = mlp((6, 16, 12, 3)).double()  # 16 + 12 = 28 groups
    groups = channel_groups(model, torch.randn(4, 6, dtype=F64))
    penalty = ChannelLasso(0.1, groups)
    return groups, penalty, ChannelSparsity(penalty, target=target, factor=2.0, **options)


def test_sparsity_controller_raises_geometrically_then_bisects_after_an_overshoot():
    # Intended change (was: raise until reached, never lower): λ is steered onto the band
    # [k, k + 1] groups, k = ⌈0.5 · 28⌉ = 14, in both directions.
    groups, penalty, controller = mlp_controller()
    expected = 0.1
    zero_first(groups, 0)
    assert controller.step() == 0.0
    expected *= 2  # below, no overshoot yet: multiply
    assert penalty.lam == pytest.approx(expected, rel=RTOL)
    zero_first(groups, 20)  # overshoot at λ = 0.2: bisect between 0.1 and 0.2
    assert controller.step() == pytest.approx(20 / 28, rel=RTOL)
    expected = math.sqrt(0.1 * 0.2)
    assert penalty.lam == pytest.approx(expected, rel=RTOL) and not controller.reached_
    assert (controller.lam_low_, controller.lam_high_) == (pytest.approx(0.1), pytest.approx(0.2))
    zero_first(groups, 10)  # below again: midpoint of √0.02 and 0.2
    controller.step()
    expected = math.sqrt(expected * 0.2)
    assert penalty.lam == pytest.approx(expected, rel=RTOL)
    for n in (14, 15):  # the band: held
        zero_first(groups, n)
        controller.step()
        assert controller.reached_ and penalty.lam == pytest.approx(expected, rel=RTOL)
    zero_first(groups, 16)  # one group over the band: lowered
    controller.step()
    assert not controller.reached_ and penalty.lam < expected
    assert controller.why_ is None


def test_sparsity_controller_reports_a_jump_it_cannot_land():
    # Every λ below 0.3 zeroes 10 groups, every λ above zeroes 20: the band 14..15 is jumped over.
    groups, penalty, controller = mlp_controller()
    for _ in range(40):
        zero_first(groups, 10 if penalty.lam < 0.3 else 20)
        controller.step()
        if controller.why_ is not None:
            break
    assert controller.why_ is not None and "jumps from 10" in controller.why_
    assert "to 20" in controller.why_
    held = penalty.lam
    assert 0.3 <= held <= 0.3 * (1 + 2e-3)  # the smallest overshooting λ, within the resolution
    zero_first(groups, 20)
    controller.step()
    assert penalty.lam == held  # held from then on


def test_sparsity_controller_stops_at_max_lam_and_says_so():
    groups, penalty, controller = mlp_controller(max_lam=0.3)
    zero_first(groups, 0)
    lams = []
    for _ in range(4):
        controller.step()
        lams.append(penalty.lam)
    assert lams == [pytest.approx(0.2), 0.3, 0.3, 0.3]
    assert "max_lam=0.3 with 0 of 28 groups zero (target 14)" in controller.why_


def test_sparsity_controller_validates_its_arguments():
    _, penalty, _ = mlp_controller()
    for options, match in [({"target": 0.0}, "Invalid target"),
                           ({"target": 0.5, "factor": 1.0}, "Invalid factor"),
                           ({"target": 0.5, "patience": 0}, "Invalid patience"),
                           ({"target": 0.5, "tolerance": -1}, "Invalid tolerance"),
                           ({"target": 0.5, "resolution": 0.0}, "Invalid resolution"),
                           ({"target": 0.5, "max_lam": 0.01}, "Invalid max_lam")]:
        with pytest.raises(ValueError, match=match):
            ChannelSparsity(penalty, **options)
    with pytest.raises(TypeError, match="Invalid restore entry: 3"):
        ChannelSparsity(penalty, 0.5, restore=(3,))


def test_sparsity_controller_says_when_an_overshoot_cannot_be_undone():
    # 10 zero groups at λ = 0.1, then 20 that stay zero whatever λ (as behind a ReLU)
    groups, penalty, controller = mlp_controller()
    zero_first(groups, 10)
    controller.step()
    zero_first(groups, 20)
    for _ in range(40):
        controller.step()
        if controller.why_ is not None:
            break
    assert "jumps from 10 (λ=0.1) to 20" in controller.why_
    assert "pass restore=(model, optimizer)" in controller.why_
    assert 0.1 < penalty.lam <= 0.1 * (1 + 2e-3)


def train_to_target(target, restore):
    torch.manual_seed(0)
    model, x = mlp((6, 16, 12, 3)).double(), torch.randn(48, 6, dtype=F64)
    y = torch.randint(0, 3, (48,))
    groups = channel_groups(model, x)
    penalty = ChannelLasso(1e-3, groups)
    optimizer = Proximal(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                         Regularizer(model, {groups.selector: penalty}))
    controller = ChannelSparsity(penalty, target=target, factor=1.5, patience=3,
                                 restore=(model, optimizer.optimizer) if restore else None)
    landed = 0
    for _ in range(100):
        for _ in range(5):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        fraction = controller.step()
        landed = landed + 1 if controller.reached_ else 0
        if landed == 5 or controller.why_:  # in the band for five calls in a row, or given up
            break
    return groups, controller, fraction


@pytest.mark.parametrize("target", [0.25, 0.5, 0.75])
def test_sparsity_controller_lands_within_one_group_of_the_target_in_training(target):
    groups, controller, fraction = train_to_target(target, restore=True)
    k = math.ceil(target * len(groups))
    zeros = len(groups.zero_groups(("out", "bias")))  # the MLP's "auto" groups: rows and bias
    assert controller.why_ is None
    assert controller.reached_ and k <= zeros <= k + 1
    assert fraction == zeros / len(groups)


def test_sparsity_controller_without_restore_overshoots_and_says_why():
    # The same run without roll-back: at the critical λ the ReLU MLP zeroes more groups than the
    # band within a few steps, and zero channels before a ReLU never leave zero.
    groups, controller, _ = train_to_target(0.5, restore=False)
    assert not controller.reached_
    assert len(groups.zero_groups(("out", "bias"))) > 15
    assert "cannot leave zero" in controller.why_ or "restore=" in controller.why_


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
                ChannelLasso(2.0, groups, roles=ALL).prox_(params_of(groups),
                                                           [0.5] * len(params_of(groups)))
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
    # roles=ALL: the references below penalize every row, bias and norm entry
    penalty = ChannelLasso(lams, template, roles=ALL, parameters=stacked)
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


def outputs_in_train_mode(model, x):
    """Outputs with batch statistics and ε ≈ 0 (it must be > 0 in training mode): a BatchNorm
    then undoes any scale of its input, to float64 rounding."""
    model = model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-300
    with torch.no_grad():
        return model(x)


def scaled(model, groups, indices, factor):
    """A copy of ``model`` with the ``auto`` slices of the groups ``indices`` times ``factor``."""
    copy_ = copy.deepcopy(model)
    tensors = dict(copy_.named_parameters())
    with torch.no_grad():
        for i in indices:
            for s in groups.penalized(groups.groups[i], "auto"):
                index = torch.tensor(s.indices)
                t = tensors[s.tensor]
                t.index_copy_(s.dim, index, t.index_select(s.dim, index) * factor)
    return copy_


def test_scale_free_families_are_the_ones_the_normalizations_undo():
    model, _, groups = setup()
    x = torch.randn(6, 3, 8, 8, dtype=F64)
    families = groups.scale_free()
    # by hand: the first stage's stream (stem bn, layer1 bn2s: 4 channels) and each block's
    # inner channels (bn1: 4, 4, 8, 8); the second stage's stream feeds the head
    assert sorted(len(f) for f in families) == [4, 4, 4, 8, 8]
    reference = outputs_in_train_mode(copy.deepcopy(model), x)
    for family in families:
        torch.testing.assert_close(
            outputs_in_train_mode(scaled(model, groups, family, 3.0), x), reference,
            rtol=1e-10, atol=1e-12)
        # half a family is not free: its channels are mixed with the others' at another scale
        changed = outputs_in_train_mode(scaled(model, groups, family[:1], 3.0), x)
        assert (changed - reference).abs().max() > 1e-3
    rest = sorted(set(range(len(groups))) - {i for f in families for i in f})
    changed = outputs_in_train_mode(scaled(model, groups, rest, 3.0), x)
    assert (changed - reference).abs().max() > 1e-3
    assert setup("mlp")[2].scale_free() == []  # no normalization
    # exact=False adds the second stage's stream (8 channels before the head): not free
    relaxed = groups.scale_free(exact=False)
    assert set(families) <= set(relaxed)
    extra = set(relaxed) - set(families)
    assert [len(f) for f in extra] == [8]
    changed = outputs_in_train_mode(scaled(model, groups, next(iter(extra)), 3.0), x)
    assert (changed - reference).abs().max() > 1e-3


def test_keep_scale_rescales_each_family_to_its_norm_before_the_step():
    _, _, groups = setup()
    params = params_of(groups)
    families = groups.scale_free()
    lam, step = 2.0, 0.4  # zeroes some groups (see the prox test above)
    before = {g.index: torch.linalg.vector_norm(group_vector(groups, g, "auto")).item()
              for g in groups}
    expected = naive_prox(groups, lam, [step] * len(groups), "auto")
    for family in families:  # rescale the expected tensors by hand, family by family
        after = {}
        for i in family:
            parts = [expected[s.tensor].index_select(s.dim, torch.tensor(s.indices)).reshape(-1)
                     for s in groups.penalized(groups.groups[i], "auto")]
            after[i] = torch.linalg.vector_norm(torch.cat(parts)).item()
        total_after = math.sqrt(sum(a * a for a in after.values()))
        if total_after == 0:
            continue  # a family all zero after the step stays zero
        ratio = math.sqrt(sum(before[i] ** 2 for i in family)) / total_after
        for i in family:
            for s in groups.penalized(groups.groups[i], "auto"):
                index = torch.tensor(s.indices)
                expected[s.tensor].index_copy_(
                    s.dim, index, expected[s.tensor].index_select(s.dim, index) * ratio)
    penalty = ChannelLasso(lam, groups, keep_scale=True)
    with torch.no_grad():
        penalty.prox_(params, [step] * len(params))
    for name, p in zip(groups.parameter_names(), params):
        torch.testing.assert_close(p.detach(), expected[name], rtol=RTOL, atol=1e-15)
    zero = set(penalty.zero_groups())
    assert zero and any(set(f) & zero for f in families)  # zeros stay exactly zero
    with pytest.raises(ValueError, match="Invalid keep_scale value: True with roles=\\('norm',\\)"):
        ChannelLasso(lam, groups, roles=("norm",), keep_scale=True)
    with pytest.raises(ValueError, match="Invalid keep_scale value: 'some'"):
        ChannelLasso(lam, groups, keep_scale="some")
