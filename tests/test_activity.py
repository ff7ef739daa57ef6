"""Activity regularization (Keras 3 ``activity_regularizer`` semantics) and module selection.

Expected values are computed independently: the model's submodules are run by hand (or the model
before any hook exists) and the penalty is evaluated with NumPy from the formulas in DESIGN.md,
then divided by the output's first dimension as Keras' ``Layer.__call__`` does. Everything runs in
float64 with ``rtol=1e-12``.
"""

from __future__ import annotations

import gc
import re
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regtorch import (
    ALL,
    L1,
    L2,
    WEIGHTS,
    ActivityRegularizer,
    GroupLasso,
    Regularizer,
    inside,
    named,
    where,
)
from regtorch.selection import as_selector, collect_modules

RTOL = 1e-12

# -- NumPy references (DESIGN.md conventions) --------------------------------------------------


def l2_ref(lam):
    return lambda a: lam / 2 * np.sum(a**2)


def l1_ref(lam):
    return lambda a: lam * np.sum(np.abs(a))


def group_rows_ref(lam):  # c_g = √(group size) = √(columns)
    return lambda a: lam * np.sqrt(a.shape[1]) * np.linalg.norm(a, axis=1).sum()


def group_columns_ref(lam):  # c_g = √(rows)
    return lambda a: lam * np.sqrt(a.shape[0]) * np.linalg.norm(a, axis=0).sum()


def group_tensor_none_ref(lam):
    return lambda a: lam * np.linalg.norm(a)


def keras(reference, tensors):
    """Keras' activity loss: Σ over output tensors of R(a) / a.shape[0] (0-d: undivided)."""
    total = 0.0
    for t in tensors:
        a = t.detach().numpy()
        value = reference(a)
        total += value / a.shape[0] if a.ndim > 0 else value
    return total


def close(actual, expected):
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().item()
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=0)


# -- models ------------------------------------------------------------------------------------


def mlp() -> nn.Sequential:
    """Linear(3, 4) -> ReLU -> Linear(4, 2), float64, fixed weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()


def batch(size: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, generator=generator, dtype=torch.float64)


def mlp_outputs(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The submodules' outputs, computed by running them one by one (no hook involved)."""
    h = F.linear(x, model[0].weight, model[0].bias)
    r = torch.clamp(h, min=0)
    y = F.linear(r, model[2].weight, model[2].bias)
    return {"0": h, "1": r, "2": y}


class Net(nn.Module):
    """encoder: Sequential(Linear(3, 4), ReLU); head: Linear(4, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class Compiled(nn.Module):
    """Stands in for torch.compile's wrapper: the real model under ``_orig_mod``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._orig_mod = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._orig_mod(x)


# -- values ------------------------------------------------------------------------------------

PENALTIES = [
    pytest.param(L2(0.3), l2_ref(0.3), id="L2"),
    pytest.param(L1(0.2), l1_ref(0.2), id="L1"),
    pytest.param(GroupLasso(0.5), group_rows_ref(0.5), id="GroupLasso-rows"),
    pytest.param(GroupLasso(0.5, groups="columns"), group_columns_ref(0.5),
                 id="GroupLasso-columns"),
    pytest.param(GroupLasso(0.5, groups="tensor", scale="none"), group_tensor_none_ref(0.5),
                 id="GroupLasso-tensor-none"),
]


@pytest.mark.parametrize("target", ["0", "1", "2"], ids=["Linear", "ReLU", "head-Linear"])
@pytest.mark.parametrize(("penalty", "reference"), PENALTIES)
def test_penalty_of_a_module_output_is_keras_value(penalty, reference, target):
    model, x = mlp(), batch(5)
    act = ActivityRegularizer(model, {target: penalty})
    model(x)
    close(act.loss(), keras(reference, [mlp_outputs(model, x)[target]]))


def test_two_rules_add_up():
    model, x = mlp(), batch(5)
    act = ActivityRegularizer(model, {nn.ReLU: L1(0.2), "0": L2(0.3)})
    model(x)
    outs = mlp_outputs(model, x)
    close(act.loss(), keras(l1_ref(0.2), [outs["1"]]) + keras(l2_ref(0.3), [outs["0"]]))


@pytest.mark.parametrize("size", [1, 7], ids=["B=1", "B=7"])
@pytest.mark.parametrize(("penalty", "reference"), PENALTIES[:3])
def test_divided_by_the_batch_size(penalty, reference, size):
    model, x = mlp(), batch(size)
    act = ActivityRegularizer(model, {"0": penalty})
    model(x)
    h = mlp_outputs(model, x)["0"].detach().numpy()
    close(act.loss(), reference(h) / size)


# Per-element and per-example (row) penalties are sums over examples: dividing by B makes them a
# per-example mean, unchanged when every example appears twice. (Column and whole-tensor norms
# grow by √2 instead: they are not sums over examples, so they are left out here.)
@pytest.mark.parametrize(("penalty", "reference"), PENALTIES[:3])
def test_duplicated_batch_gives_the_same_penalty(penalty, reference):
    model, x = mlp(), batch(4)
    act = ActivityRegularizer(model, {"0": penalty})
    model(x)
    single = act.loss()
    model(torch.cat([x, x]))
    double = act.loss()
    close(double, single.item())
    close(single, keras(reference, [mlp_outputs(model, x)["0"]]))


def test_empty_batch_gives_zero_not_nan():
    model = mlp()
    act = ActivityRegularizer(model, {"*": L2(0.3) + L1(0.1)})
    model(batch(0))
    loss = act.loss()
    assert loss.item() == 0.0


class Total(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum()


def test_zero_dimensional_output_is_not_divided():
    model = nn.Sequential(nn.Identity(), Total()).double()
    act = ActivityRegularizer(model, {Total: L2(0.4)})
    x = batch(6)
    model(x)
    close(act.loss(), 0.4 / 2 * float(x.sum()) ** 2)


# -- nested outputs ----------------------------------------------------------------------------


def flatten(output):
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in flatten(item)]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: nn.LSTM(3, 4, batch_first=True), id="LSTM-(out,(h,c))"),
        pytest.param(lambda: nn.GRU(3, 4, num_layers=2, batch_first=True), id="GRU-(out,h)"),
        pytest.param(lambda: nn.LSTM(3, 4), id="LSTM-seq-first"),
    ],
)
@pytest.mark.parametrize(("penalty", "reference"), PENALTIES[:2])
def test_every_tensor_of_a_tuple_output_is_penalized(make, penalty, reference):
    torch.manual_seed(0)
    rnn = make().double()
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    tensors = flatten(rnn(x))  # before any hook: the reference outputs
    assert len(tensors) in (2, 3)
    act = ActivityRegularizer(rnn, {"": penalty})
    rnn(x)
    close(act.loss(), keras(reference, tensors))


class Heads(nn.Module):
    """Returns a dict: floating tensors penalized; integer tensors and strings ignored."""

    def forward(self, x: torch.Tensor) -> dict:
        return {"logits": x, "index": x.argmax(dim=1), "parts": [2 * x, "label"], "note": "x"}


def test_dict_and_list_outputs_only_floating_tensors_count():
    model = nn.Sequential(Heads())
    act = ActivityRegularizer(model, {Heads: L1(0.5)})
    x = batch(3)
    model(x)
    close(act.loss(), keras(l1_ref(0.5), [x, 2 * x]))


# -- rules -------------------------------------------------------------------------------------


def penalized(act: ActivityRegularizer) -> list[str]:
    return [name for name, _ in act.named_modules()]


@pytest.mark.parametrize(
    ("make_spec", "expected"),
    [
        pytest.param(lambda m: nn.Linear, ["encoder.0", "head"], id="type"),
        pytest.param(lambda m: "encoder.*", ["encoder.0", "encoder.1"], id="glob"),
        pytest.param(lambda m: "encoder", ["encoder"], id="name-of-a-container"),
        pytest.param(lambda m: m.head, ["head"], id="instance"),
        pytest.param(lambda m: m.encoder, ["encoder"], id="instance-not-its-children"),
        pytest.param(lambda m: inside(nn.Sequential), ["encoder"], id="inside-type-itself-only"),
        pytest.param(lambda m: where(lambda name, module: isinstance(module, nn.ReLU)),
                     ["encoder.1"], id="where-gets-the-module"),
        pytest.param(lambda m: where(lambda name, module: name == ""), [""], id="where-root"),
        pytest.param(lambda m: "*", ["", "encoder", "encoder.0", "encoder.1", "head"],
                     id="star-includes-root"),
        pytest.param(lambda m: ALL, ["", "encoder", "encoder.0", "encoder.1", "head"], id="ALL"),
        pytest.param(lambda m: named("*") & ~inside(nn.Linear), ["", "encoder", "encoder.1"],
                     id="combined"),
    ],
)
def test_selector_picks_modules(make_spec, expected):
    model = Net()
    assert penalized(ActivityRegularizer(model, {make_spec(model): L2(0.1)})) == expected


def test_first_matching_rule_wins_and_none_exempts():
    model, x = mlp(), batch(5)
    act = ActivityRegularizer(model, [("2", None), (nn.Linear, L1(0.2)), (nn.ReLU, L2(0.3))])
    assert penalized(act) == ["0", "1"]
    model(x)
    outs = mlp_outputs(model, x)
    close(act.loss(), keras(l1_ref(0.2), [outs["0"]]) + keras(l2_ref(0.3), [outs["1"]]))

    act.remove()
    act = ActivityRegularizer(model, {"0": L1(0.2), nn.Linear: L2(0.3)})
    assert penalized(act) == ["0", "2"]
    model(x)
    outs = mlp_outputs(model, x)
    close(act.loss(), keras(l1_ref(0.2), [outs["0"]]) + keras(l2_ref(0.3), [outs["2"]]))


def test_weights_rule_raises_it_matches_no_module():
    with pytest.raises(ValueError, match=r"WEIGHTS -> L2\(0\.1\) matches no module"):
        ActivityRegularizer(mlp(), {WEIGHTS: L2(0.1)})


@pytest.mark.parametrize(
    ("make_rules", "rule"),
    [
        pytest.param(lambda m: {"decoder.*": L2(0.1)}, "named('decoder.*')", id="glob"),
        pytest.param(lambda m: {nn.Conv2d: L2(0.1)}, "inside(Conv2d)", id="type-not-in-model"),
        pytest.param(lambda m: {nn.Linear(4, 2): L2(0.1)}, "inside(Linear(...))",
                     id="instance-not-in-model"),
        pytest.param(lambda m: {nn.Linear: L1(0.1), "head": L2(0.1)}, "named('head')",
                     id="only-already-claimed"),
        pytest.param(lambda m: {"*": None, nn.ReLU: L2(0.1)}, "inside(ReLU)", id="after-None"),
    ],
)
def test_rule_matching_no_module_raises_listing_module_names(make_rules, rule):
    model = Net()
    with pytest.raises(ValueError, match=re.escape(rule)) as error:
        ActivityRegularizer(model, make_rules(model))
    message = str(error.value)
    assert "matches no module" in message
    assert "modules: '', encoder, encoder.0, encoder.1, head" in message


def test_bare_penalty_raises_type_error_saying_which_modules():
    with pytest.raises(TypeError, match=r"L2\(0\.1\).*which modules' outputs to penalize.*e\.g\."):
        ActivityRegularizer(mlp(), L2(0.1))


@pytest.mark.parametrize(
    ("rules", "bad"),
    [
        pytest.param({"0": 3}, "3", id="value-not-a-penalty"),
        pytest.param({"0": "L2"}, "'L2'", id="value-a-string"),
        pytest.param([(3, L2(0.1))], "3", id="selector-an-int"),
        pytest.param("0", "'0'", id="a-bare-selector"),
    ],
)
def test_bad_rules_raise_type_error_naming_the_value(rules, bad):
    with pytest.raises(TypeError, match=re.escape(bad)):
        ActivityRegularizer(mlp(), rules)


def test_stacked_strength_is_rejected():
    with pytest.raises(ValueError, match=r"stacked \[K\] strength 'lam'"):
        ActivityRegularizer(mlp(), {"0": L2(torch.tensor([0.1, 0.2]))})


def test_penalty_that_cannot_act_on_an_output_raises_naming_module_shape_penalty():
    model = nn.Sequential(nn.Linear(3, 4), Total()).double()
    act = ActivityRegularizer(model, {"*": GroupLasso(0.1, groups="columns")})
    assert penalized(act) == ["", "0", "1"]
    with pytest.raises(ValueError) as error:
        model(batch(2))
    message = str(error.value)
    for part in ["'1'", "Total", "shape ()", "GroupLasso(0.1, groups='columns', scale='sqrt')"]:
        assert part in message


# -- accumulation and reset --------------------------------------------------------------------


def test_two_forward_passes_accumulate_the_sum():
    model, x1, x2 = mlp(), batch(3, seed=1), batch(5, seed=2)
    act = ActivityRegularizer(model, {"0": L2(0.3)})
    model(x1)
    model(x2)
    h1, h2 = mlp_outputs(model, x1)["0"], mlp_outputs(model, x2)["0"]
    close(act.loss(), keras(l2_ref(0.3), [h1]) + keras(l2_ref(0.3), [h2]))


def test_module_called_twice_in_one_forward_is_penalized_twice():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x):
            return self.layer(self.layer(x))

    model = Twice().double()
    act = ActivityRegularizer(model, {"layer": L1(0.2)})
    x = batch(4)
    model(x)
    h1 = F.linear(x, model.layer.weight, model.layer.bias)
    h2 = F.linear(h1, model.layer.weight, model.layer.bias)
    close(act.loss(), keras(l1_ref(0.2), [h1, h2]))


def test_loss_resets_the_total():
    model = mlp()
    act = ActivityRegularizer(model, {"0": L2(0.3)})
    model(batch(3))
    assert act.loss().item() > 0
    again = act.loss()
    assert again.item() == 0.0
    assert not again.requires_grad


def test_strength_changed_between_steps_takes_effect():
    model, x = mlp(), batch(3)
    penalty = L2(0.3)
    act = ActivityRegularizer(model, {"0": penalty})
    penalty.lam = 0.6
    model(x)
    close(act.loss(), keras(l2_ref(0.6), [mlp_outputs(model, x)["0"]]))


def test_gradients_equal_a_hand_written_forward():
    model, x = mlp(), batch(6)
    y = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    act = ActivityRegularizer(model, {"0": L2(0.3), nn.ReLU: L1(0.2) + L2(0.1)})
    (F.mse_loss(model(x), y) + act.loss()).backward()

    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    w0, b0, w2, b2 = params
    h = x @ w0.T + b0
    r = torch.where(h > 0, h, torch.zeros_like(h))
    out = r @ w2.T + b2
    b = x.shape[0]
    manual = (((out - y) ** 2).mean() + 0.3 / 2 * (h**2).sum() / b + 0.2 * r.abs().sum() / b
              + 0.1 / 2 * (r**2).sum() / b)
    expected = torch.autograd.grad(manual, params)
    for p, g in zip(model.parameters(), expected):
        np.testing.assert_allclose(p.grad.numpy(), g.numpy(), rtol=RTOL, atol=1e-15)


# -- evaluation, graph lifetime ----------------------------------------------------------------


@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode],
                         ids=["no_grad", "inference_mode"])
def test_nothing_accumulates_without_gradients(no_grad):
    model = mlp()
    act = ActivityRegularizer(model, {"*": L2(0.3)})
    with no_grad():
        model(batch(4))
    loss = act.loss()
    assert loss.item() == 0.0
    assert not loss.requires_grad


def test_eval_mode_with_gradients_accumulates_like_keras():
    model, x = mlp(), batch(4)
    act = ActivityRegularizer(model, {"0": L2(0.3)})
    model.eval()
    model(x)
    close(act.loss(), keras(l2_ref(0.3), [mlp_outputs(model, x)["0"]]))


class Keep:
    """A forward hook of our own holding only a weak reference to the output it sees."""

    def __init__(self, module: nn.Module) -> None:
        self.ref: weakref.ref | None = None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.ref = weakref.ref(output)


def test_loss_releases_the_graph():
    model = mlp()
    act = ActivityRegularizer(model, {"0": L2(0.3)})
    keep = Keep(model[0])
    out = model(batch(4))
    del out
    gc.collect()
    # The collected term's graph holds the Linear's output (L2 saves it for backward).
    assert keep.ref() is not None
    loss = act.loss()
    del loss
    gc.collect()
    assert keep.ref() is None


def test_loss_backward_releases_the_graph():
    model = mlp()
    act = ActivityRegularizer(model, {"0": L2(0.3), nn.ReLU: L1(0.1)})
    keep = Keep(model[0])
    out = model(batch(4))
    (out.sum() + act.loss()).backward()
    del out
    gc.collect()
    assert keep.ref() is None


def test_no_grad_forward_keeps_nothing_alive():
    model = mlp()
    act = ActivityRegularizer(model, {"*": L2(0.3)})
    keep = Keep(model[0])
    with torch.no_grad():
        out = model(batch(4))
    del out
    gc.collect()
    assert keep.ref() is None
    assert act.loss().item() == 0.0


def test_dropping_the_regularizer_removes_its_hooks():
    model = mlp()
    act = ActivityRegularizer(model, {"*": L2(0.3)})
    assert all(len(m._forward_hooks) == 1 for m in model.modules())
    ref = weakref.ref(act)
    del act
    gc.collect()
    assert ref() is None
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


# -- remove, context manager, dtypes, wrappers -------------------------------------------------


def test_remove_stops_accumulation_drops_the_total_and_is_idempotent():
    model = mlp()
    act = ActivityRegularizer(model, {"*": L2(0.3)})
    model(batch(3))
    act.remove()
    assert act.loss().item() == 0.0
    model(batch(3))
    assert act.loss().item() == 0.0
    act.remove()
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_context_manager_removes_on_exit():
    model, x = mlp(), batch(3)
    with ActivityRegularizer(model, {"0": L2(0.3)}) as act:
        model(x)
        close(act.loss(), keras(l2_ref(0.3), [mlp_outputs(model, x)["0"]]))
    model(x)
    assert act.loss().item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_loss_has_the_model_dtype(dtype):
    model = mlp().to(dtype)
    act = ActivityRegularizer(model, {"*": L2(0.3) + L1(0.1)})
    assert act.loss().dtype == dtype  # nothing collected yet: the zero
    data_loss = model(batch(3).to(dtype)).sum()
    assert (data_loss + act.loss()).dtype == dtype


def test_model_without_parameters_gives_a_float32_zero():
    act = ActivityRegularizer(nn.Sequential(nn.ReLU()), {nn.ReLU: L1(0.1)})
    zero = act.loss()
    assert zero.dtype == torch.float32
    assert zero.device == torch.device("cpu")


@pytest.mark.parametrize(
    "wrap",
    [pytest.param(nn.DataParallel, id="DataParallel"), pytest.param(Compiled, id="compiled")],
)
def test_wrapped_model_uses_unwrapped_names_and_modules(wrap):
    model, x = mlp(), batch(4)
    act = ActivityRegularizer(wrap(model), {"0": L2(0.3)})
    assert penalized(act) == ["0"]
    wrap(model)(x)
    close(act.loss(), keras(l2_ref(0.3), [mlp_outputs(model, x)["0"]]))


def test_str_lists_modules_with_their_rule_and_penalty():
    act = ActivityRegularizer(Net(), [("", L1(0.5)), ("encoder.*", L2(0.1)), ("*", None)])
    assert str(act).splitlines() == [
        "ActivityRegularizer: outputs of 3 modules penalized",
        "  module     type    rule                penalty",
        "  ''         Net     named('')           L1(0.5)",
        "  encoder.0  Linear  named('encoder.*')  L2(0.1)",
        "  encoder.1  ReLU    named('encoder.*')  L2(0.1)",
    ]
    assert repr(act) == "ActivityRegularizer({named(''): L1(0.5), named('encoder.*'): L2(0.1)})"


def test_regularizer_and_activity_regularizer_together():
    model, x = mlp(), batch(4)
    reg = Regularizer(model, L2(0.01))
    act = ActivityRegularizer(model, {"0": L2(0.3)})
    total = model(x).sum() + reg() + act.loss()
    outs = mlp_outputs(model, x)
    weights = [w.detach().numpy() for w in (model[0].weight, model[2].weight)]
    expected = (outs["2"].detach().numpy().sum() + sum(l2_ref(0.01)(w) for w in weights)
                + keras(l2_ref(0.3), [outs["0"]]))
    close(total, expected)


# -- collect_modules ---------------------------------------------------------------------------


def test_collect_modules_names_root_first_and_records():
    model = Net()
    infos = collect_modules(model)
    assert [i.name for i in infos] == ["", "encoder", "encoder.0", "encoder.1", "head"]
    modules = [model, model.encoder, model.encoder[0], model.encoder[1], model.head]
    for info, module in zip(infos, modules):
        assert info.alias == info.name
        assert info.param is module
        assert info.module is module
        assert info.tensor_name == ""
        assert info.ancestors == (module,)
        assert info.whole is True
        assert info.declared_no_decay is False


def test_collect_modules_lists_a_shared_module_once_under_its_first_name():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.Sequential(nn.ReLU(), shared))
    assert [i.name for i in collect_modules(model)] == ["", "0", "1", "1.0"]


@pytest.mark.parametrize(
    "wrap",
    [pytest.param(nn.DataParallel, id="DataParallel"), pytest.param(Compiled, id="compiled"),
     pytest.param(lambda m: Compiled(nn.DataParallel(m)), id="compiled-DataParallel")],
)
def test_collect_modules_unwraps(wrap):
    model = Net()
    infos = collect_modules(wrap(model))
    assert [i.name for i in infos] == ["", "encoder", "encoder.0", "encoder.1", "head"]
    assert infos[0].module is model


def test_weights_matches_no_module_but_type_selector_does():
    infos = collect_modules(Net())
    assert [i.name for i in infos if WEIGHTS(i)] == []
    assert [i.name for i in infos if as_selector(nn.Linear)(i)] == ["encoder.0", "head"]


def test_collect_modules_rejects_a_non_module():
    with pytest.raises(TypeError, match="Invalid model"):
        collect_modules([nn.Linear(2, 2)])
