"""Parameter selection (DESIGN.md, "Parameter selection"): what WEIGHTS picks, rules and
selectors, wrappers, parametrizations, the Regularizer's table, and param_groups.

Every expected list of names is written out by hand from the layer definitions in this file; the
library is only ever asked the question, never used to compute the answer.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

import regtorch
from regtorch import ALL, L1, L2, WEIGHTS, Regularizer, inside, named, param_groups, where
from regtorch.selection import as_selector, collect

# -- helpers -----------------------------------------------------------------------------------


def selected(model: nn.Module, spec: object = WEIGHTS) -> list[str]:
    """Names of the trainable parameters of ``model`` that ``spec`` picks, in model order."""
    selector = as_selector(spec)
    return [info.name for info in collect(model) if selector(info)]


def penalized(reg: Regularizer) -> list[str]:
    return [name for name, _ in reg.named_parameters()]


def names_of(model: nn.Module, tensors: list[torch.Tensor]) -> list[str]:
    """torch's own names (``model.named_parameters()``) of ``tensors``, in the given order."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    return [by_id[id(t)] for t in tensors]


def group_names(model: nn.Module, groups: list[dict]) -> list[tuple[list[str], float]]:
    return [(names_of(model, g["params"]), g["weight_decay"]) for g in groups]


class Double(nn.Module):
    """A trivial parametrization (tensor -> 2 * tensor) with no state of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


# -- a small model used throughout -------------------------------------------------------------


class Net(nn.Module):
    """encoder: Linear(4, 8), LayerNorm(8), Linear(8, 8); decoder: Linear(8, 8), BatchNorm1d(8);
    head: Linear(8, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8))
        self.decoder = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
        self.head = nn.Linear(8, 2)


E0W, E0B = "encoder.0.weight", "encoder.0.bias"  # Linear(4, 8): (8, 4), (8,)
E1W, E1B = "encoder.1.weight", "encoder.1.bias"  # LayerNorm(8): (8,), (8,)
E2W, E2B = "encoder.2.weight", "encoder.2.bias"  # Linear(8, 8): (8, 8), (8,)
D0W, D0B = "decoder.0.weight", "decoder.0.bias"  # Linear(8, 8): (8, 8), (8,)
D1W, D1B = "decoder.1.weight", "decoder.1.bias"  # BatchNorm1d(8): (8,), (8,)
HW, HB = "head.weight", "head.bias"  # Linear(8, 2): (2, 8), (2,)
NET_ALL = [E0W, E0B, E1W, E1B, E2W, E2B, D0W, D0B, D1W, D1B, HW, HB]
NET_WEIGHTS = [E0W, E2W, D0W, HW]
NET_NOT_WEIGHTS = [E0B, E1W, E1B, E2B, D0B, D1W, D1B, HB]


def test_net_names_are_what_this_file_assumes():
    assert [name for name, _ in Net().named_parameters()] == NET_ALL


# -- WEIGHTS, the default ----------------------------------------------------------------------


class CustomParams(nn.Module):
    """Free-standing parameters: 2-D ones whose names do or do not end in ``bias``, a 1-D gain and
    a 0-d temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_bias = nn.Parameter(torch.zeros(3, 4))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(5, 2))  # a position table
        self.scale_table = nn.Parameter(torch.zeros(5, 2))  # no bias, no position name
        self.kernel = nn.Parameter(torch.zeros(2, 3, 4))
        self.gains = nn.Parameter(torch.ones(4))
        self.temperature = nn.Parameter(torch.ones(()))


LAYER_CASES = [
    pytest.param(lambda: nn.Linear(3, 2), ["weight", "bias"], ["weight"], id="Linear"),
    pytest.param(lambda: nn.Linear(3, 2, bias=False), ["weight"], ["weight"], id="Linear-no-bias"),
    pytest.param(lambda: nn.Bilinear(2, 3, 4), ["weight", "bias"], ["weight"], id="Bilinear"),
    pytest.param(lambda: nn.Conv1d(3, 4, 3), ["weight", "bias"], ["weight"], id="Conv1d"),
    pytest.param(lambda: nn.Conv2d(3, 4, 3), ["weight", "bias"], ["weight"], id="Conv2d"),
    pytest.param(
        lambda: nn.ConvTranspose2d(3, 4, 3), ["weight", "bias"], ["weight"], id="ConvTranspose2d"
    ),
    pytest.param(lambda: nn.Embedding(10, 4), ["weight"], ["weight"], id="Embedding"),
    pytest.param(lambda: nn.BatchNorm1d(4), ["weight", "bias"], [], id="BatchNorm1d"),
    pytest.param(lambda: nn.BatchNorm2d(4), ["weight", "bias"], [], id="BatchNorm2d"),
    pytest.param(
        lambda: nn.InstanceNorm2d(4, affine=True),
        ["weight", "bias"],
        [],
        id="InstanceNorm2d-affine",
    ),
    pytest.param(lambda: nn.LayerNorm(4), ["weight", "bias"], [], id="LayerNorm-1d"),
    pytest.param(lambda: nn.LayerNorm((3, 4)), ["weight", "bias"], [], id="LayerNorm-2d"),
    pytest.param(lambda: nn.GroupNorm(2, 4), ["weight", "bias"], [], id="GroupNorm"),
    pytest.param(lambda: nn.RMSNorm(4), ["weight"], [], id="RMSNorm-1d"),
    pytest.param(lambda: nn.RMSNorm((3, 4)), ["weight"], [], id="RMSNorm-2d"),
    pytest.param(
        lambda: nn.LSTM(3, 4),
        ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"],
        ["weight_ih_l0", "weight_hh_l0"],
        id="LSTM",
    ),
    pytest.param(
        lambda: nn.MultiheadAttention(4, 2),
        ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"],
        ["in_proj_weight", "out_proj.weight"],
        id="MultiheadAttention",
    ),
    pytest.param(
        CustomParams,
        ["pos_bias", "relative_position_bias_table", "scale_table", "kernel", "gains",
         "temperature"],
        ["scale_table", "kernel"],
        id="custom-pos_bias",
    ),
]


@pytest.mark.parametrize(("make", "trainable", "weights"), LAYER_CASES)
def test_weights_default(make, trainable, weights):
    layer = make()
    assert selected(layer, ALL) == trainable
    assert selected(layer) == weights


@pytest.mark.parametrize(
    "norm", [nn.LayerNorm((3, 4)), nn.RMSNorm((3, 4))], ids=["LayerNorm", "RMSNorm"]
)
def test_two_dimensional_norm_weight_is_still_a_gain(norm):
    """ndim >= 2 alone does not make a weight: the layer is a normalization layer."""
    assert norm.weight.ndim == 2
    model = nn.Sequential(nn.Linear(4, 4), norm)
    assert selected(model) == ["0.weight"]
    assert penalized(Regularizer(model, L2(0.1))) == ["0.weight"]


def test_norm_layer_subclass_is_a_norm_layer():
    class MyNorm(nn.LayerNorm):
        pass

    assert selected(nn.Sequential(nn.Linear(2, 2), MyNorm((2, 2)))) == ["0.weight"]


def test_single_penalty_goes_to_weights():
    reg = Regularizer(Net(), L2(0.1))
    assert penalized(reg) == NET_WEIGHTS


# -- frozen parameters -------------------------------------------------------------------------


def test_frozen_parameters_are_never_selected_not_even_by_all():
    model = Net()
    model.encoder[0].requires_grad_(False)  # whole layer frozen
    model.head.weight.requires_grad_(False)  # half a layer frozen
    trainable = [E1W, E1B, E2W, E2B, D0W, D0B, D1W, D1B, HB]
    assert selected(model, ALL) == trainable
    assert selected(model) == [E2W, D0W]
    assert penalized(Regularizer(model, {ALL: L2(0.1)})) == trainable
    assert penalized(Regularizer(model, L2(0.1))) == [E2W, D0W]


def test_rule_matching_only_frozen_parameters_raises():
    model = Net()
    model.encoder[0].requires_grad_(False)
    with pytest.raises(ValueError, match=re.escape("named('encoder.0.*')")):
        Regularizer(model, {"encoder.0.*": L2(0.1)})


# -- tied weights ------------------------------------------------------------------------------


class TiedLM(nn.Module):
    """Embedding(10, 4) tied to an output Linear(4, 10); a Linear(4, 4) body in between."""

    def __init__(self, embed_first: bool) -> None:
        super().__init__()
        if embed_first:
            self.embed = nn.Embedding(10, 4)
            self.body = nn.Linear(4, 4)
            self.out = nn.Linear(4, 10, bias=False)
        else:
            self.out = nn.Linear(4, 10, bias=False)
            self.body = nn.Linear(4, 4)
            self.embed = nn.Embedding(10, 4)
        self.out.weight = self.embed.weight


@pytest.mark.parametrize(
    ("embed_first", "tied_name"),
    [(True, "embed.weight"), (False, "out.weight")],
    ids=["embedding-first", "output-first"],
)
def test_tied_weight_appears_once_under_its_first_name(embed_first, tied_name):
    model = TiedLM(embed_first)
    assert model.out.weight is model.embed.weight
    if embed_first:
        trainable = ["embed.weight", "body.weight", "body.bias"]
        weights = ["embed.weight", "body.weight"]
    else:
        trainable = ["out.weight", "body.weight", "body.bias"]
        weights = ["out.weight", "body.weight"]
    assert selected(model, ALL) == trainable
    assert selected(model) == weights

    reg = Regularizer(model, {ALL: L2(0.1)})
    assert penalized(reg) == trainable
    assert sum(p is model.embed.weight for p in reg.parameters()) == 1

    groups = param_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [2, 1]
    assert sum(p is model.embed.weight for g in groups for p in g["params"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about a parameter listed twice
        torch.optim.AdamW(groups, lr=1e-3)


# -- no_weight_decay() (timm convention) -------------------------------------------------------


class Block(nn.Module):
    """A submodule that declares its own 2-D ``rel_pos`` (name relative to itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.rel_pos = nn.Parameter(torch.zeros(3, 3))
        self.proj = nn.Linear(4, 4)

    def no_weight_decay(self) -> set[str]:
        return {"rel_pos"}


class ViTLike(nn.Module):
    """2-D ``cls_token`` and ``pos_embed``, two Blocks, a Linear head; declares ``no_decay``."""

    def __init__(self, no_decay: tuple[str, ...] = ("cls_token",)) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(5, 4))
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(4, 2)
        self._no_decay = set(no_decay)

    def no_weight_decay(self) -> set[str]:
        return self._no_decay


VIT_ALL = [
    "cls_token",
    "pos_embed",
    "blocks.0.rel_pos",
    "blocks.0.proj.weight",
    "blocks.0.proj.bias",
    "blocks.1.rel_pos",
    "blocks.1.proj.weight",
    "blocks.1.proj.bias",
    "head.weight",
    "head.bias",
]


@pytest.mark.parametrize(
    ("no_decay", "weights"),
    [
        pytest.param(
            (),
            [
                "cls_token",
                "pos_embed",
                "blocks.0.proj.weight",
                "blocks.1.proj.weight",
                "head.weight",
            ],
            id="nothing",
        ),
        pytest.param(
            ("cls_token",),
            ["pos_embed", "blocks.0.proj.weight", "blocks.1.proj.weight", "head.weight"],
            id="cls_token",
        ),
        pytest.param(
            ("cls_token", "pos_embed"),
            ["blocks.0.proj.weight", "blocks.1.proj.weight", "head.weight"],
            id="cls_token+pos_embed",
        ),
        pytest.param(
            ("*_token", "pos_*"),
            ["blocks.0.proj.weight", "blocks.1.proj.weight", "head.weight"],
            id="glob-suffix-prefix",
        ),
        pytest.param(
            ("blocks.*.proj.weight",),
            ["cls_token", "pos_embed", "head.weight"],
            id="glob-into-submodules",
        ),
        pytest.param(
            ("blocks.1.*",),
            ["cls_token", "pos_embed", "blocks.0.proj.weight", "head.weight"],
            id="glob-one-block",
        ),
        pytest.param(
            ("not_a_parameter",),
            [
                "cls_token",
                "pos_embed",
                "blocks.0.proj.weight",
                "blocks.1.proj.weight",
                "head.weight",
            ],
            id="unknown-name",
        ),
        pytest.param(("*",), [], id="glob-everything"),
    ],
)
def test_no_weight_decay_declarations(no_decay, weights):
    """What no_weight_decay() takes away, seen without the position-table exemption (which
    would take cls_token and pos_embed away by name anyway: see the next test)."""
    model = ViTLike(no_decay)
    assert selected(model, ALL) == VIT_ALL
    assert selected(model, regtorch.weights(position_tables=True)) == weights
    assert selected(model) == [n for n in weights if n not in ("cls_token", "pos_embed")]


def test_submodule_declares_no_weight_decay_relative_to_itself():
    class PlainBlock(Block):
        def no_weight_decay(self) -> set[str]:
            return set()

    assert selected(Block()) == ["proj.weight"]
    assert selected(PlainBlock()) == ["rel_pos", "proj.weight"]
    assert selected(nn.Sequential(nn.Linear(4, 4), Block())) == ["0.weight", "1.proj.weight"]


def test_no_weight_decay_only_narrows_weights_not_explicit_rules():
    model = ViTLike(("cls_token",))
    reg = Regularizer(model, {"cls_token": L1(0.1), WEIGHTS: L2(0.1)})
    assert penalized(reg) == [
        "cls_token",
        "blocks.0.proj.weight",
        "blocks.1.proj.weight",
        "head.weight",
    ]


# -- wrappers ----------------------------------------------------------------------------------

# torch.compile's first call imports torch._dynamo, which warns about torch's own use of
# torch.jit.script_method: not ours to fix.
TORCH_COMPILE_IMPORT = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)
WRAPPERS = [
    pytest.param(nn.DataParallel, "module.", id="DataParallel"),
    pytest.param(torch.compile, "_orig_mod.", id="torch.compile", marks=TORCH_COMPILE_IMPORT),
    pytest.param(
        lambda m: torch.compile(nn.DataParallel(m)),
        "_orig_mod.module.",
        id="compile(DataParallel)",
        marks=TORCH_COMPILE_IMPORT,
    ),
]


@pytest.mark.parametrize(("wrap", "prefix"), WRAPPERS)
def test_wrapped_model_has_the_unwrapped_names(wrap, prefix):
    model = Net()
    wrapped = wrap(model)
    # The wrapper really does prefix torch's own names.
    assert [name for name, _ in wrapped.named_parameters()] == [prefix + n for n in NET_ALL]

    assert selected(wrapped, ALL) == NET_ALL
    assert selected(wrapped) == NET_WEIGHTS

    seen = []

    def in_head(name: str, param: torch.Tensor) -> bool:
        seen.append(name)
        return name.startswith("head.")

    reg = Regularizer(
        wrapped,
        {inside(model.decoder): None, where(in_head): L1(0.1), "encoder.*" & WEIGHTS: L2(0.1)},
    )
    assert penalized(reg) == [HW, HB, E0W, E2W]
    assert [id(p) for p in reg.parameters()] == [
        id(model.head.weight),
        id(model.head.bias),
        id(model.encoder[0].weight),
        id(model.encoder[2].weight),
    ]
    # The predicate sees unwrapped names, and only the parameters earlier rules left over.
    assert seen == [E0W, E0B, E1W, E1B, E2W, E2B, HW, HB]

    assert group_names(model, param_groups(wrapped, 0.1)) == [
        (NET_WEIGHTS, 0.1),
        (NET_NOT_WEIGHTS, 0.0),
    ]


@pytest.mark.parametrize(("wrap", "prefix"), WRAPPERS)
def test_wrapped_model_keeps_its_no_weight_decay(wrap, prefix):
    assert selected(wrap(ViTLike(("cls_token",))), regtorch.weights(position_tables=True)) == [
        "pos_embed",
        "blocks.0.proj.weight",
        "blocks.1.proj.weight",
        "head.weight",
    ]


# -- parametrizations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        pytest.param(lambda: nn.Linear(3, 5), (5, 3), id="Linear"),
        pytest.param(lambda: nn.Conv2d(3, 4, 2), (4, 3, 2, 2), id="Conv2d"),
    ],
)
def test_weight_norm_selects_direction_not_magnitude(make, shape):
    model = nn.Sequential(weight_norm(make()))
    trainable = [
        "0.bias",
        "0.parametrizations.weight.original0",
        "0.parametrizations.weight.original1",
    ]
    assert selected(model, ALL) == trainable
    assert selected(model) == ["0.parametrizations.weight.original1"]
    direction = model[0].parametrizations.weight.original1
    magnitude = model[0].parametrizations.weight.original0
    assert tuple(direction.shape) == shape
    assert tuple(magnitude.shape) == (shape[0],) + (1,) * (len(shape) - 1)
    assert [id(p) for p in Regularizer(model, L2(0.1)).parameters()] == [id(direction)]


def test_weight_norm_over_the_whole_tensor_selects_direction():
    model = nn.Sequential(weight_norm(nn.Linear(3, 5), dim=None))  # a 0-d magnitude
    assert selected(model) == ["0.parametrizations.weight.original1"]


def test_weight_norm_magnitude_excluded_when_shapes_coincide():
    model = nn.Sequential(weight_norm(nn.Linear(1, 5)))
    assert selected(model) == ["0.parametrizations.weight.original1"]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: nn.Linear(3, 4), id="Linear"),
        pytest.param(lambda: nn.Conv2d(3, 4, 2), id="Conv2d"),
    ],
)
def test_spectral_norm_selects_its_original(make):
    model = nn.Sequential(spectral_norm(make()))
    assert selected(model, ALL) == ["0.bias", "0.parametrizations.weight.original"]
    assert selected(model) == ["0.parametrizations.weight.original"]


def test_selection_does_not_run_spectral_norm_power_iteration():
    model = nn.Sequential(spectral_norm(nn.Linear(3, 4)), nn.LayerNorm(4))
    model.train()
    layer = model[0]
    sn = layer.parametrizations.weight[0]
    with torch.no_grad():
        # singular values 3, 2, 1; a _u far from the top singular vector, so that one power
        # iteration certainly moves it
        layer.parametrizations.weight.original.copy_(
            torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
        )
        sn._u.copy_(torch.full((4,), 0.5))
    u0, v0 = sn._u.clone(), sn._v.clone()

    reg = Regularizer(model, {WEIGHTS: L2(0.1), ALL: None})
    str(reg)
    param_groups(model, 0.1)
    param_groups(model, 0.1, rules={WEIGHTS: L2(0.1)})
    assert torch.equal(sn._u, u0)
    assert torch.equal(sn._v, v0)

    layer.weight  # noqa: B018 -- control: evaluating the parametrization does iterate
    assert not torch.equal(sn._u, u0)


def test_parametrized_linear_bias_is_not_selected():
    layer = nn.Linear(3, 4)
    parametrize.register_parametrization(layer, "bias", Double())
    assert selected(layer, ALL) == ["weight", "parametrizations.bias.original"]
    assert selected(layer) == ["weight"]


class TwoDimensionalBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4, 3))
        self.bias = nn.Parameter(torch.zeros(4, 3))
        self.pos_bias = nn.Parameter(torch.zeros(2, 3))


def test_parametrized_two_dimensional_bias_is_judged_as_a_bias():
    """The original's own name (``...original``) does not end in ``bias``; the tensor it stands
    for does."""
    module = TwoDimensionalBias()
    assert selected(module) == ["weight"]
    for tensor_name in ("weight", "bias", "pos_bias"):
        parametrize.register_parametrization(module, tensor_name, Double())
    assert selected(module, ALL) == [
        "parametrizations.weight.original",
        "parametrizations.bias.original",
        "parametrizations.pos_bias.original",
    ]
    assert selected(module) == ["parametrizations.weight.original"]


def test_parametrized_norm_weight_is_judged_as_a_norm_weight():
    norm = nn.LayerNorm((3, 4))
    parametrize.register_parametrization(norm, "weight", Double())
    assert selected(norm, ALL) == ["bias", "parametrizations.weight.original"]
    assert selected(norm) == []


def test_module_type_selector_reaches_parametrized_layers():
    model = nn.Sequential(weight_norm(nn.Linear(3, 4)), nn.LayerNorm(4))
    assert selected(model, nn.Linear) == [
        "0.bias",
        "0.parametrizations.weight.original0",
        "0.parametrizations.weight.original1",
    ]


def test_no_weight_decay_names_the_parametrized_tensor():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 3)
            self.head = spectral_norm(nn.Linear(3, 2))

        def no_weight_decay(self) -> set[str]:
            return {"head.weight"}

    assert selected(Model()) == ["body.weight"]


# -- selectors ---------------------------------------------------------------------------------

# (id, spec given the model, expected names): every spec kind, alone and combined.
SELECTOR_CASES = [
    ("glob", lambda m: "encoder.*", [E0W, E0B, E1W, E1B, E2W, E2B]),
    ("glob-question-mark", lambda m: "encoder.?.bias", [E0B, E1B, E2B]),
    ("glob-suffix", lambda m: "*weight", [E0W, E1W, E2W, D0W, D1W, HW]),
    ("named", lambda m: named("head.*"), [HW, HB]),
    ("named-several", lambda m: named("*.bias", "head.*"), [E0B, E1B, E2B, D0B, D1B, HW, HB]),
    ("type", lambda m: nn.Linear, [E0W, E0B, E2W, E2B, D0W, D0B, HW, HB]),
    ("type-tuple", lambda m: (nn.LayerNorm, nn.BatchNorm1d), [E1W, E1B, D1W, D1B]),
    ("type-container", lambda m: nn.Sequential, [E0W, E0B, E1W, E1B, E2W, E2B, D0W, D0B, D1W, D1B]),
    ("instance", lambda m: m.decoder, [D0W, D0B, D1W, D1B]),
    ("instance-leaf", lambda m: m.encoder[1], [E1W, E1B]),
    ("inside-type-and-instance", lambda m: inside(nn.LayerNorm, m.head), [E1W, E1B, HW, HB]),
    ("predicate", lambda m: lambda name, p: p.ndim == 1, NET_NOT_WEIGHTS),
    ("where", lambda m: where(lambda name, p: p.shape[0] == 2), [HW, HB]),
    ("WEIGHTS", lambda m: WEIGHTS, NET_WEIGHTS),
    ("ALL", lambda m: ALL, NET_ALL),
    ("WEIGHTS&glob", lambda m: WEIGHTS & "encoder.*", [E0W, E2W]),
    ("glob&WEIGHTS-reflected", lambda m: "encoder.*" & WEIGHTS, [E0W, E2W]),
    ("instance&WEIGHTS-reflected", lambda m: m.encoder & WEIGHTS, [E0W, E2W]),
    ("type|WEIGHTS-reflected", lambda m: nn.LayerNorm | WEIGHTS, [E0W, E1W, E1B, E2W, D0W, HW]),
    ("named|type", lambda m: named("head.*") | nn.LayerNorm, [E1W, E1B, HW, HB]),
    ("~WEIGHTS", lambda m: ~WEIGHTS, NET_NOT_WEIGHTS),
    ("~(WEIGHTS|type)", lambda m: ~(WEIGHTS | nn.LayerNorm), [E0B, E2B, D0B, D1W, D1B, HB]),
    ("type&~WEIGHTS", lambda m: nn.Linear & ~WEIGHTS, [E0B, E2B, D0B, HB]),
    ("ALL&~glob", lambda m: ALL & ~named("decoder.*"), [E0W, E0B, E1W, E1B, E2W, E2B, HW, HB]),
    ("tuple-mixed", lambda m: ("decoder.*", nn.LayerNorm), [E1W, E1B, D0W, D0B, D1W, D1B]),
    (
        "where&type",
        lambda m: where(lambda name, p: p.shape[0] == 8) & nn.Linear,
        [E0W, E0B, E2W, E2B, D0W, D0B],
    ),
]


@pytest.mark.parametrize(
    ("make_spec", "expected"),
    [pytest.param(make, expected, id=case_id) for case_id, make, expected in SELECTOR_CASES],
)
def test_selector(make_spec, expected):
    model = Net()
    spec = make_spec(model)
    assert selected(model, spec) == expected
    # The same spec as a rule, in both rule forms: a dict and a list of pairs.
    assert penalized(Regularizer(model, {spec: L2(0.1)})) == expected
    assert penalized(Regularizer(model, [(spec, L2(0.1))])) == expected


def test_selector_repr_describes_it():
    assert repr(WEIGHTS & "encoder.*") == "(WEIGHTS & named('encoder.*'))"
    assert repr("encoder.*" & WEIGHTS) == "(named('encoder.*') & WEIGHTS)"
    assert repr(~(WEIGHTS | nn.LayerNorm)) == "~(WEIGHTS | inside(LayerNorm))"


# -- rules -------------------------------------------------------------------------------------


def test_first_matching_rule_wins():
    model = Net()
    reg = Regularizer(model, {"encoder.*": L1(0.1), WEIGHTS: L2(0.1)})
    assert penalized(reg) == [E0W, E0B, E1W, E1B, E2W, E2B, D0W, HW]
    reg = Regularizer(model, {WEIGHTS: L2(0.1), "encoder.*": L1(0.1)})
    assert penalized(reg) == [E0W, E2W, D0W, HW, E0B, E1W, E1B, E2B]


def test_dict_and_list_rules_agree():
    model = Net()
    l1, l2 = L1(0.1), L2(0.2)
    by_dict = Regularizer(model, {"head.*": None, "encoder.*": l1, WEIGHTS: l2})
    by_list = Regularizer(model, [("head.*", None), ("encoder.*", l1), (WEIGHTS, l2)])
    assert penalized(by_dict) == penalized(by_list) == [E0W, E0B, E1W, E1B, E2W, E2B, D0W]
    assert [p for _, p in by_dict.rules] == [p for _, p in by_list.rules] == [l1, l2]


def test_none_claims_parameters_and_leaves_them_unpenalized():
    model = Net()
    reg = Regularizer(
        model, {"head.*": None, inside(nn.LayerNorm, nn.BatchNorm1d): None, ALL: L2(0.1)}
    )
    assert penalized(reg) == [E0W, E0B, E2W, E2B, D0W, D0B]
    assert str(reg).splitlines()[-2:] == [  # wrapped at 100 columns
        "  not penalized: encoder.1.weight, encoder.1.bias, decoder.1.weight, decoder.1.bias, "
        "head.weight,",
        "    head.bias",
    ]


def test_rules_property():
    model = Net()
    l1, l2 = L1(0.1), L2(0.2)
    reg = Regularizer(model, [("head.*", None), ("encoder.*", l1), (WEIGHTS, l2)])
    rules = reg.rules
    assert [repr(selector) for selector, _ in rules] == ["named('encoder.*')", "WEIGHTS"]
    assert rules[1][0] is WEIGHTS
    assert rules[0][1] is l1
    assert rules[1][1] is l2


def test_named_parameters_and_parameters():
    model = Net()
    reg = Regularizer(model, {"head.*": L1(0.1), "encoder.*": L2(0.1)})
    pairs = list(reg.named_parameters())
    assert [name for name, _ in pairs] == [HW, HB, E0W, E0B, E1W, E1B, E2W, E2B]  # rule order
    own = dict(model.named_parameters())
    assert all(tensor is own[name] for name, tensor in pairs)
    assert [id(p) for p in reg.parameters()] == [id(tensor) for _, tensor in pairs]


def test_str_lists_the_table():
    reg = Regularizer(Net(), {"head.*": None, "encoder.*": L1(0.01), WEIGHTS: L2(0.001)})
    assert str(reg) == "\n".join(
        [
            "Regularizer: 7 tensors (192 elements) penalized, 5 tensors (42 elements) not",
            "  parameter         shape   rule                penalty",
            "  encoder.0.weight  (8, 4)  named('encoder.*')  L1(0.01)",
            "  encoder.0.bias    (8,)    named('encoder.*')  L1(0.01)",
            "  encoder.1.weight  (8,)    named('encoder.*')  L1(0.01)",
            "  encoder.1.bias    (8,)    named('encoder.*')  L1(0.01)",
            "  encoder.2.weight  (8, 8)  named('encoder.*')  L1(0.01)",
            "  encoder.2.bias    (8,)    named('encoder.*')  L1(0.01)",
            "  decoder.0.weight  (8, 8)  WEIGHTS             L2(0.001)",
            "  not penalized: decoder.0.bias, decoder.1.weight, decoder.1.bias, head.weight, "
            "head.bias",
        ]
    )


def test_str_without_unpenalized_parameters_has_no_such_line():
    reg = Regularizer(nn.Linear(3, 2), {ALL: L2(0.5)})
    assert str(reg) == "\n".join(
        [
            "Regularizer: 2 tensors (8 elements) penalized, 0 tensors (0 elements) not",
            "  parameter  shape   rule  penalty",
            "  weight     (2, 3)  ALL   L2(0.5)",
            "  bias       (2,)    ALL   L2(0.5)",
        ]
    )


# -- rule errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_rules", "rule"),
    [
        pytest.param(lambda m: {"nothing.*": L2(0.1)}, "named('nothing.*')", id="glob-no-match"),
        pytest.param(
            lambda m: {"nothing.*": None, ALL: L2(0.1)},
            "named('nothing.*')",
            id="None-rule-no-match",
        ),
        pytest.param(lambda m: {nn.Conv2d: L2(0.1)}, "inside(Conv2d)", id="type-not-in-model"),
        pytest.param(
            lambda m: {nn.Linear(8, 8): L2(0.1)}, "inside(Linear(...))", id="instance-not-in-model"
        ),
        pytest.param(
            lambda m: {"encoder.*": L1(0.1), "encoder.0.*": L2(0.1)},
            "named('encoder.0.*')",
            id="only-already-claimed",
        ),
        pytest.param(lambda m: {ALL: None, WEIGHTS: L2(0.1)}, "WEIGHTS", id="after-ALL"),
    ],
)
def test_rule_with_no_parameter_raises_listing_available_names(make_rules, rule):
    model = Net()
    with pytest.raises(ValueError, match=re.escape(rule)) as error:
        Regularizer(model, make_rules(model))
    assert "encoder.0.weight" in str(error.value)
    assert "encoder.0.bias" in str(error.value)


def test_single_penalty_on_a_model_without_weights_raises():
    with pytest.raises(ValueError, match="WEIGHTS"):
        Regularizer(nn.Sequential(nn.LayerNorm(4), nn.BatchNorm1d(4)), L2(0.1))


@pytest.mark.parametrize(
    "spec",
    [3, 2.5, None, ["encoder.*"], int, ()],
    ids=["int", "float", "None", "list", "non-module-type", "empty-tuple"],
)
def test_bad_selector_raises_type_error_naming_it(spec):
    with pytest.raises(TypeError, match=re.escape(repr(spec))):
        as_selector(spec)
    with pytest.raises(TypeError, match=re.escape(repr(spec))):
        Regularizer(Net(), [(spec, L2(0.1))])
    with pytest.raises(TypeError, match=re.escape(repr(spec))):
        WEIGHTS & spec


@pytest.mark.parametrize(
    ("call", "bad"),
    [
        pytest.param(lambda: named("encoder.*", 3), "3", id="named"),
        pytest.param(lambda: inside(nn.Linear, 3), "3", id="inside-int"),
        pytest.param(lambda: inside(int), repr(int), id="inside-non-module-type"),
        pytest.param(lambda: where(3), "3", id="where"),
    ],
)
def test_bad_selector_arguments_raise_type_error_naming_them(call, bad):
    with pytest.raises(TypeError, match=re.escape(bad)):
        call()


@pytest.mark.parametrize(
    "value", ["l2", 0.1, L2, True], ids=["string", "float", "penalty-class", "bool"]
)
def test_bad_rule_value_raises_type_error_naming_it(value):
    with pytest.raises(TypeError, match=re.escape(repr(value))):
        Regularizer(Net(), {WEIGHTS: value})
    with pytest.raises(TypeError, match=re.escape(repr(value))):
        Regularizer(Net(), [("encoder.*", L1(0.1)), (WEIGHTS, value)])


@pytest.mark.parametrize(
    "rules",
    ["l2", 0.1, [("encoder.*",)], [["encoder.*", L2(0.1)]]],
    ids=["string", "float", "1-tuple", "list-pair"],
)
def test_bad_rules_container_raises_type_error_naming_it(rules):
    with pytest.raises(TypeError, match=re.escape(repr(rules))):
        Regularizer(Net(), rules)


def test_non_module_model_raises_type_error():
    with pytest.raises(TypeError, match="list"):
        Regularizer([nn.Linear(2, 2)], L2(0.1))


# -- param_groups ------------------------------------------------------------------------------


def test_param_groups_default_splits_weights_from_the_rest():
    model = Net()
    groups = param_groups(model, 0.05)
    assert group_names(model, groups) == [(NET_WEIGHTS, 0.05), (NET_NOT_WEIGHTS, 0.0)]
    assert all(set(g) == {"params", "weight_decay"} for g in groups)


PARAM_GROUP_RULES = [
    pytest.param(lambda m: None, NET_WEIGHTS, id="default"),
    pytest.param(lambda m: "encoder.*", [E0W, E0B, E1W, E1B, E2W, E2B], id="glob"),
    pytest.param(lambda m: nn.Linear, [E0W, E0B, E2W, E2B, D0W, D0B, HW, HB], id="type"),
    pytest.param(lambda m: m.head, [HW, HB], id="instance"),
    pytest.param(lambda m: WEIGHTS & "encoder.*", [E0W, E2W], id="combined"),
    pytest.param(
        lambda m: lambda name, p: name.startswith("decoder."), [D0W, D0B, D1W, D1B], id="predicate"
    ),
    pytest.param(lambda m: (nn.LayerNorm, nn.BatchNorm1d), [E1W, E1B, D1W, D1B], id="type-tuple"),
    pytest.param(
        lambda m: {"head.*": None, "encoder.*": L1(0.01), WEIGHTS: L2(0.001)},
        [E0W, E0B, E1W, E1B, E2W, E2B, D0W],
        id="rules-dict",
    ),
    pytest.param(
        lambda m: [("head.*", None), (WEIGHTS, L2(0.1))], [E0W, E2W, D0W], id="rules-list"
    ),
    pytest.param(
        lambda m: {inside(nn.LayerNorm): None, ALL: L2(0.1)},
        [E0W, E0B, E2W, E2B, D0W, D0B, D1W, D1B, HW, HB],
        id="rules-None-then-ALL",
    ),
]


@pytest.mark.parametrize(("make_rules", "decay"), PARAM_GROUP_RULES)
def test_param_groups_rules(make_rules, decay):
    model = Net()
    rules = make_rules(model)
    rest = [name for name in NET_ALL if name not in decay]
    assert group_names(model, param_groups(model, 0.1, rules)) == [(decay, 0.1), (rest, 0.0)]


@pytest.mark.parametrize(
    ("make_rules", "decay"),
    [p for p in PARAM_GROUP_RULES if p.id.startswith("rules-") or p.id == "default"],
)
def test_param_groups_match_the_regularizer(make_rules, decay):
    """Decay exactly what a Regularizer with the same rules penalizes, nothing else."""
    model = Net()
    rules = make_rules(model)
    reg = Regularizer(model, L2(0.1) if rules is None else rules)
    groups = param_groups(model, 0.1, rules)
    assert sorted(names_of(model, groups[0]["params"])) == sorted(penalized(reg)) == sorted(decay)
    assert {id(p) for p in groups[1]["params"]} == (
        {id(p) for p in model.parameters()} - {id(p) for p in reg.parameters()}
    )


def test_param_groups_drop_an_empty_no_decay_group():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Conv1d(2, 2, 1, bias=False))
    assert group_names(model, param_groups(model, 0.1)) == [(["0.weight", "1.weight"], 0.1)]
    net = Net()
    assert group_names(net, param_groups(net, 0.1, ALL)) == [(NET_ALL, 0.1)]


def test_param_groups_drop_an_empty_decay_group_when_rules_decay_nothing():
    model = Net()
    assert group_names(model, param_groups(model, 0.1, {ALL: None})) == [(NET_ALL, 0.0)]


def bitfit_net() -> Net:
    """BitFit: everything frozen but the biases."""
    model = Net()
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    return model


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: nn.Sequential(nn.LayerNorm(4), nn.BatchNorm1d(4)), id="norm-only"),
        pytest.param(bitfit_net, id="bitfit"),
    ],
)
def test_param_groups_drop_an_empty_decay_group_by_default(make):
    groups = param_groups(make(), 0.1)
    assert len(groups) == 1
    assert groups[0]["weight_decay"] == 0.0


def test_param_groups_leave_frozen_parameters_out():
    model = Net()
    model.encoder.requires_grad_(False)
    model.head.bias.requires_grad_(False)
    assert group_names(model, param_groups(model, 0.1)) == [
        ([D0W, HW], 0.1),
        ([D0B, D1W, D1B], 0.0),
    ]


@pytest.mark.parametrize(
    ("weight_decay", "shown"),
    [
        pytest.param(-0.1, "-0.1", id="negative"),
        pytest.param(float("nan"), "nan", id="nan"),
        pytest.param(float("inf"), "inf", id="inf"),
    ],
)
def test_param_groups_invalid_weight_decay_raises_value_error_naming_it(weight_decay, shown):
    with pytest.raises(ValueError, match=rf"weight_decay.*{re.escape(shown)}"):
        param_groups(Net(), weight_decay)


def test_param_groups_rule_matching_nothing_raises():
    with pytest.raises(ValueError, match=re.escape("named('nothing.*')")):
        param_groups(Net(), 0.1, "nothing.*")


def test_param_groups_drive_adamw_decoupled_decay():
    """One AdamW step with zero gradients only applies the decay: p <- p * (1 - lr * wd) in the
    decay group, nothing elsewhere."""
    torch.manual_seed(0)
    model = Net().double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lr, wd = 0.1, 0.5
    optimizer = torch.optim.AdamW(param_groups(model, wd), lr=lr)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [wd, 0.0]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - lr * wd if name in NET_WEIGHTS else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-15, atol=0.0)


# -- public surface ----------------------------------------------------------------------------


def test_public_names_import():
    namespace: dict[str, object] = {}
    exec("from regtorch import *", namespace)  # a star import is only legal at module level
    missing = [name for name in regtorch.__all__ if name not in namespace]
    assert not missing
    for name in (
        "WEIGHTS",
        "ALL",
        "Regularizer",
        "Selector",
        "inside",
        "named",
        "where",
        "param_groups",
        "NORM_LAYERS",
    ):
        assert name in regtorch.__all__


@pytest.mark.parametrize("module", [
    "regtorch", "regtorch.selection", "regtorch.regularizer", "regtorch.penalties",
    "regtorch.optim", "regtorch.optim.groups", "regtorch.optim.proximal",
    "regtorch.optim.schedule", "regtorch.callbacks", "regtorch.activity", "regtorch.constraints",
    "regtorch.dropout",
])
def test_submodule_public_names_exist(module):
    imported = __import__(module, fromlist=["__all__"])
    assert [name for name in imported.__all__ if not hasattr(imported, name)] == []


def test_norm_layers_cover_the_torch_normalizations():
    for cls in (
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.SyncBatchNorm,
        nn.InstanceNorm1d,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        nn.RMSNorm,
    ):
        assert issubclass(cls, regtorch.NORM_LAYERS), cls
    assert not issubclass(nn.Linear, regtorch.NORM_LAYERS)


def test_parametrized_tensor_answers_to_its_layer_name():
    """A glob naming the tensor ("head.weight") reaches the originals that stand for it."""
    model = nn.Sequential(nn.Linear(3, 3), spectral_norm(nn.Linear(3, 2)))
    reg = Regularizer(model, {"1.weight": L1(0.1)})
    assert [name for name, _ in reg.named_parameters()] == ["1.parametrizations.weight.original"]


def test_rules_as_tuple_or_empty_mean_the_same_in_param_groups_and_regularizer():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    as_tuple = regtorch.param_groups(model, 0.1, rules=(("0.weight", L2(1.0)),))
    assert [len(g["params"]) for g in as_tuple] == [1, 3]
    assert as_tuple[0]["params"][0] is model[0].weight
    nothing = regtorch.param_groups(model, 0.1, rules=[])
    assert [(len(g["params"]), g["weight_decay"]) for g in nothing] == [(4, 0.0)]


def test_import_without_rmsnorm():
    """A torch without nn.RMSNorm (added in 2.4) still imports regtorch and selects as usual."""
    code = (
        "import torch.nn as nn\n"
        "del nn.RMSNorm\n"
        "import regtorch\n"
        "assert all(t is not None for t in regtorch.NORM_LAYERS)\n"
        "model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))\n"
        "print([n for n, _ in regtorch.Regularizer(model, regtorch.L2(1.0)).named_parameters()])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['0.weight']"


def test_rule_labels_tell_a_repeated_selector_apart():
    from regtorch.selection import rule_labels

    rules = [(named("0.*"), L1(0.1)), (WEIGHTS, L2(0.1)), (named("0.*"), None)]
    assert rule_labels(rules) == ["0:named('0.*')", "WEIGHTS", "2:named('0.*')"]
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    # Two predicates are both "where(<lambda>)": the table tells them apart by index.
    table = str(Regularizer(model, [(where(lambda n, p: n.startswith("0.")), L1(0.1)),
                                    (where(lambda n, p: n.startswith("1.")), L2(0.1))]))
    assert "0:where(<lambda>)" in table and "1:where(<lambda>)" in table
