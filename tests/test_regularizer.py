"""The Regularizer object: its three modes on a model, inspection, strengths, edge cases."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import stack_module_state

from regtorch import L1, L2, WEIGHTS, ElasticNet, GroupLasso, Orthogonal, Regularizer

RTOL = 1e-12


def mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 3)).to(dtype)


def numpy_l2(model, lam):
    """½λ Σ w² over the two Linear weights, in NumPy float64."""
    return 0.5 * lam * sum(np.sum(m.weight.detach().double().numpy() ** 2)
                           for m in (model[0], model[3]))


def test_value_modes_agree_and_match_reference():
    model = mlp()
    reg = Regularizer(model, L2(0.3))
    expected = numpy_l2(model, 0.3)
    out = reg()
    assert out.requires_grad and out.dtype == torch.float64
    np.testing.assert_allclose(out.item(), expected, rtol=RTOL)
    np.testing.assert_allclose(reg.value().item(), expected, rtol=RTOL)
    assert not reg.value().requires_grad
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    np.testing.assert_allclose(reg.add_grad_(value=True).item(), expected, rtol=RTOL)
    assert reg.add_grad_() is None


def test_loss_term_keeps_the_model_dtype_and_reported_values_are_float64():
    model = mlp(torch.float32)
    reg = Regularizer(model, L1(0.1))
    assert reg().dtype == torch.float32  # loss + reg() stays float32
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for reported in (reg.value(), reg.add_grad_(value=True), *reg.breakdown().values()):
        assert reported.dtype == torch.float64 and not reported.requires_grad


def test_half_model_value_does_not_overflow():
    model = nn.Linear(300, 300).half()
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert reg_value(model) == pytest.approx(90_000.0, rel=1e-6)


def reg_value(model):
    return Regularizer(model, L2(2.0)).value().item()


def test_add_grad_creates_missing_grads_like_autograd():
    """All grads None: add_grad_ creates them, equal to the gradient of reg() alone."""
    a, b = mlp(), mlp()
    penalty = ElasticNet(0.1, 0.2) + GroupLasso(0.05)
    Regularizer(a, penalty)().backward()
    Regularizer(b, penalty).add_grad_()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.grad is None:  # not penalized: neither path creates a gradient
            assert pb.grad is None, name
        else:
            torch.testing.assert_close(pb.grad, pa.grad, rtol=RTOL, atol=0)


def test_add_grad_leaves_unselected_and_frozen_alone():
    model = mlp()
    reg = Regularizer(model, L2(1.0))
    model[0].weight.requires_grad_(False)  # frozen half way
    reg.add_grad_()
    assert model[0].weight.grad is None
    assert model[0].bias.grad is None and model[1].weight.grad is None
    torch.testing.assert_close(model[3].weight.grad, model[3].weight.detach())
    np.testing.assert_allclose(reg.value().item(),
                               0.5 * np.sum(model[3].weight.detach().numpy() ** 2), rtol=RTOL)
    before = model[0].weight.detach().clone()
    reg.prox_(1.0)
    assert torch.equal(model[0].weight, before)
    torch.testing.assert_close(model[3].weight.grad * 0.5, model[3].weight.detach())


def test_add_grad_is_not_recorded_by_autograd():
    model = mlp()
    model(torch.randn(2, 6, dtype=torch.float64)).sum().backward()
    Regularizer(model, L1(0.1)).add_grad_()
    assert all(p.grad.grad_fn is None and not p.grad.requires_grad for p in model.parameters())


def test_prox_steps_per_parameter():
    model = mlp()
    reg = Regularizer(model, {"0.weight": L1(1.0), "3.weight": GroupLasso(0.5)})
    w0, w3 = model[0].weight.detach().clone(), model[3].weight.detach().clone()
    step0 = torch.rand_like(w0)
    reg.prox_([step0, 0.2])
    expected0 = torch.sign(w0) * torch.clamp(w0.abs() - step0, min=0)
    torch.testing.assert_close(model[0].weight.detach(), expected0, rtol=RTOL, atol=0)
    norms = w3.norm(dim=1, keepdim=True)
    expected3 = w3 * torch.clamp(1 - 0.2 * 0.5 * 5**0.5 / norms, min=0)
    torch.testing.assert_close(model[3].weight.detach(), expected3, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("step, error, match", [
    (-0.1, ValueError, "-0.1"),
    (float("nan"), ValueError, "nan"),
    ([0.1], ValueError, "1 entries for 2"),
    ("big", TypeError, "'big'"),
], ids=["negative", "nan", "wrong-length", "string"])
def test_prox_bad_step_raises(step, error, match):
    reg = Regularizer(mlp(), L1(0.1))
    with pytest.raises(error, match=match):
        reg.prox_(step)


def test_prox_without_prox_raises():
    with pytest.raises(TypeError, match="no proximal step"):
        Regularizer(mlp(), Orthogonal(0.1)).prox_(0.1)


def test_breakdown_per_rule_sums_to_value():
    model = mlp()
    reg = Regularizer(model, [("3.*", L1(0.1)), (WEIGHTS, L2(0.3))])
    parts = reg.breakdown()
    assert list(parts) == ["named('3.*')", "WEIGHTS"]
    l1 = 0.1 * sum(np.abs(p.detach().numpy()).sum() for p in model[3].parameters())
    l2 = 0.5 * 0.3 * np.sum(model[0].weight.detach().numpy() ** 2)
    np.testing.assert_allclose(parts["named('3.*')"].item(), l1, rtol=RTOL)
    np.testing.assert_allclose(parts["WEIGHTS"].item(), l2, rtol=RTOL)
    np.testing.assert_allclose(reg.value().item(), l1 + l2, rtol=RTOL)


def test_strengths_change_during_training_and_round_trip():
    model = mlp()
    penalty = L2(0.3)
    reg = Regularizer(model, {WEIGHTS: penalty, "0.bias": L1(0.2) + L2(0.1)})
    saved = reg.state_dict()
    penalty.lam = 0.6  # takes effect at once
    np.testing.assert_allclose(reg.breakdown()["WEIGHTS"].item(), numpy_l2(model, 0.6),
                               rtol=RTOL)
    reg.load_state_dict(saved)
    assert penalty.lam == 0.3
    assert reg.rules[1][1].l1 == 0.2
    with pytest.raises(ValueError, match="1 rules saved"):
        reg.load_state_dict({"strengths": saved["strengths"][:1]})


def test_bad_rule_for_a_tensor_names_the_parameter():
    with pytest.raises(ValueError, match=r"'0\.bias' of shape \(5,\)"):
        Regularizer(mlp(), {"0.*": GroupLasso(0.1, groups="columns")})


def test_stacked_models_with_member_strengths_equal_separate_models():
    """K copies stacked by torch.func with a [K] strength = K separate regularizers."""
    lams = [0.0, 0.2, 1.5]
    models = [mlp(seed=k) for k in range(len(lams))]
    params, _ = stack_module_state(models)
    for make in (L2, L1, GroupLasso, lambda lam: L1(lam) + L2(lam)):
        stacked = Regularizer(models[0], make(torch.tensor(lams, dtype=torch.float64)),
                              parameters=params)
        separate = [Regularizer(m, make(lam)) for m, lam in zip(models, lams)]
        expected = sum(r.value().item() for r in separate)
        np.testing.assert_allclose(stacked.value().item(), expected, rtol=RTOL)
        for p in params.values():
            p.grad = None
        stacked.add_grad_()
        for k, reg in enumerate(separate):
            for name, tensor in reg.named_parameters():
                grad = torch.zeros_like(tensor)
                reg.rules[0][1].add_grad_([tensor.detach()], [grad])
                torch.testing.assert_close(params[name].grad[k], grad, rtol=RTOL, atol=0)


def test_parameters_mapping_must_cover_penalized_names():
    with pytest.raises(ValueError, match=r"no tensor for the parameter '0\.weight'"):
        Regularizer(mlp(), L2(0.1), parameters={"3.weight": torch.zeros(3, 5)})


def test_construction_logs_a_summary(caplog):
    with caplog.at_level(logging.INFO, logger="regtorch"):
        Regularizer(mlp(), L2(0.1))
    assert "2 tensors (45 elements) penalized, 4 tensors (18 elements) not" in caplog.text


# The bar: a float32 `_foreach_norm` was 1e-4–1.4e-3 off on such a model.
LARGE_RTOL = 1e-5


@pytest.mark.parametrize("penalty", [L2(1e-4), L1(1e-4), ElasticNet(1e-4, 1e-4),
                                     GroupLasso(1e-4), GroupLasso(1e-4, "tensor")], ids=repr)
def test_value_of_large_float32_model_matches_float64(penalty):
    """A 4096×4096 weight, 16M parameters in all: every reported value within 1e-5 relative."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 4096, bias=False), nn.Linear(4096, 4, bias=False))
    with torch.no_grad():
        model[0].weight.add_(0.01)  # a non-zero mean makes naive float32 sums drift
    reg = Regularizer(model, penalty)
    weights = [m.weight.detach().double().numpy() for m in model]
    name = type(penalty).__name__
    if name == "L2":
        expected = 0.5e-4 * sum(np.sum(w * w) for w in weights)
    elif name == "L1":
        expected = 1e-4 * sum(np.sum(np.abs(w)) for w in weights)
    elif name == "ElasticNet":
        expected = sum(1e-4 * np.sum(np.abs(w)) + 0.5e-4 * np.sum(w * w) for w in weights)
    elif penalty.groups == "rows":
        expected = 1e-4 * sum(np.sqrt(w.shape[1]) * np.linalg.norm(w, axis=1).sum()
                              for w in weights)
    else:
        expected = 1e-4 * sum(np.sqrt(w.size) * np.linalg.norm(w) for w in weights)
    for got in (reg.value(), reg(), reg.add_grad_(value=True)):
        assert got.item() == pytest.approx(expected, rel=LARGE_RTOL)


@pytest.mark.parametrize("stacked", [False, True], ids=["single", "stacked"])
@pytest.mark.parametrize("make", [L2, L1, GroupLasso, Orthogonal, lambda lam: L1(lam) + L2(lam)],
                         ids=["L2", "L1", "GroupLasso", "Orthogonal", "ElasticNet"])
def test_everything_frozen_later_gives_zero(make, stacked):
    models = [mlp(seed=k) for k in range(2)]
    if stacked:
        params, _ = stack_module_state(models)
        reg = Regularizer(models[0], make(torch.tensor([0.1, 0.2], dtype=torch.float64)),
                          parameters=params)
        tensors = list(params.values())
    else:
        reg = Regularizer(models[0], make(0.1))
        tensors = list(models[0].parameters())
    for t in tensors:
        t.requires_grad_(False)
    assert reg().item() == 0.0 and reg.value().item() == 0.0
    assert reg.add_grad_(value=True).item() == 0.0
    assert all(t.grad is None for t in tensors)


# -- state_dict kinds, construction checks, printing -------------------------------------------


def test_state_dict_records_kinds_and_refuses_swapped_rules():
    model = mlp()
    saved = Regularizer(model, {"0.*": L1(0.1), "3.*": L2(0.2)}).state_dict()
    assert saved["kinds"] == ["L1", "L2"]
    swapped = Regularizer(model, {"0.*": L2(1.0), "3.*": L1(1.0)})
    with pytest.raises(ValueError, match=r"rule 0 \(named\('0\.\*'\)\) was saved as L1, this "
                                         r"regularizer has L2"):
        swapped.load_state_dict(saved)
    assert [p.lam for _, p in swapped.rules] == [1.0, 1.0]  # nothing half-loaded
    same = Regularizer(model, {"0.*": L1(1.0), "3.*": L2(1.0)})
    same.load_state_dict(saved)
    assert [p.lam for _, p in same.rules] == [0.1, 0.2]


def test_state_dict_kind_of_a_sum_names_its_terms():
    from regtorch import Sum
    reg = Regularizer(mlp(), Sum(L1(0.1), GroupLasso(0.2)))
    assert reg.state_dict()["kinds"] == ["Sum(L1, GroupLasso)"]
    assert Regularizer(mlp(), L1(0.1) + L2(0.1)).state_dict()["kinds"] == ["ElasticNet"]


def test_state_dict_saved_without_kinds_loads_by_position():
    reg = Regularizer(mlp(), L1(1.0))
    reg.load_state_dict({"strengths": [{"lam": 0.5}]})
    assert reg.rules[0][1].lam == 0.5


def test_empty_rules_raise():
    with pytest.raises(ValueError, match=r"Invalid rules: \{\} \(no rule"):
        Regularizer(mlp(), {})
    with pytest.raises(ValueError, match=r"Invalid rules: \[\] \(no rule"):
        Regularizer(mlp(), [])


def test_no_match_names_the_parameters_excluded_as_norm_layer_parameters():
    model = nn.Sequential(nn.LayerNorm(3), nn.BatchNorm1d(3), nn.Linear(3, 3))
    with pytest.raises(ValueError) as error:
        Regularizer(model, {"2.*": None, WEIGHTS: L2(0.1)})
    message = str(error.value)
    assert message.startswith("Rule WEIGHTS -> L2(0.1) matches no trainable parameter")
    assert message.endswith("; WEIGHTS leaves out normalization-layer parameters (4: 0.weight, "
                            "0.bias, 1.weight, 1.bias)")
    # A name glob that matches nothing gets no such note: WEIGHTS is not involved.
    with pytest.raises(ValueError) as error:
        Regularizer(model, {"3.*": L2(0.1)})
    assert "leaves out" not in str(error.value)


class _Stack(nn.Module):
    """A GPT-2-like stack: 12 blocks of LayerNorm + two Linear layers, and a final norm."""

    def __init__(self) -> None:
        super().__init__()
        self.h = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 32), nn.Linear(32, 8))
                               for _ in range(12))
        self.ln_f = nn.LayerNorm(8)
        self.embed = nn.Embedding(1000, 8)


def test_print_on_a_large_model_collapses_layers_and_wraps():
    """GPT-2 printed 98 left-out names on one 3,007-character line and 124318464 unseparated."""
    assert str(Regularizer(_Stack(), L2(1e-4))) == (
        "Regularizer: 25 tensors (14,144 elements) penalized, 50 tensors (688 elements) not\n"
        "  parameter         shape      rule     penalty\n"
        "  h.*.1.weight ×12  (32, 8)    WEIGHTS  L2(0.0001)\n"
        "  h.*.2.weight ×12  (8, 32)    WEIGHTS  L2(0.0001)\n"
        "  embed.weight      (1000, 8)  WEIGHTS  L2(0.0001)\n"
        "  not penalized: h.*.0.weight\u00a0×12, h.*.0.bias\u00a0×12, h.*.1.bias\u00a0×12, "
        "h.*.2.bias\u00a0×12, ln_f.weight,\n"
        "    ln_f.bias")


def test_print_wraps_a_long_list_of_names():
    from collections import OrderedDict
    model = nn.Sequential(OrderedDict([(f"normalization_{i}", nn.LayerNorm(2)) for i in range(5)]
                                      + [("head", nn.Linear(2, 2))]))
    lines = str(Regularizer(model, L2(1.0))).splitlines()
    assert lines[-3:] == [
        "  not penalized: normalization_0.weight, normalization_0.bias, normalization_1.weight,",
        "    normalization_1.bias, normalization_2.weight, normalization_2.bias, "
        "normalization_3.weight,",
        "    normalization_3.bias, normalization_4.weight, normalization_4.bias, head.bias"]
