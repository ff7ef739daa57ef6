"""The default selection against the references, on real architectures built offline.

References, never the code under test: the Hugging Face Trainer's own decay split
(``Trainer.get_decay_parameter_names``) on tiny BERT / GPT-2 / T5 / Llama / ViT / Swin models built
from their configs (nothing downloads), and torchvision's parameter names (torchvision cannot be
imported here: its ViT, Swin and MaxViT are reproduced by the attribute names they use), with
torchvision's recipe (``references/classification/train.py --transformer-embedding-decay 0``)
and timm's ``no_weight_decay()`` lists written out. Where regtorch differs, the test says so and
why (docs/training.md has the table).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regtorch
from regtorch import POSITION_TABLES, WEIGHTS, select

transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")


def tiny(kind: str) -> nn.Module:
    t = transformers
    if kind == "bert":
        return t.BertForMaskedLM(t.BertConfig(
            vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=16))
    if kind == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=50, n_embd=8, n_layer=2, n_head=2,
                                              n_positions=16, bos_token_id=0, eos_token_id=0))
    if kind == "t5":
        return t.T5ForConditionalGeneration(t.T5Config(
            vocab_size=50, d_model=8, d_kv=4, d_ff=16, num_layers=2, num_heads=2))
    if kind == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(
            vocab_size=50, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1))
    if kind == "vit":
        return t.ViTForImageClassification(t.ViTConfig(
            image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=16, num_labels=3))
    if kind == "swin":
        return t.SwinForImageClassification(t.SwinConfig(
            image_size=8, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[2, 2],
            window_size=2, num_labels=3))
    raise AssertionError(kind)


def first_names(model: nn.Module, tensors) -> list[str]:
    names = {id(p): name for name, p in model.named_parameters()}  # first name of a tied tensor
    return sorted(names[id(p)] for p in tensors)


# What regtorch's default decays and the Trainer does not (and the reverse), by first name.
HF_DIFFERENCES = {
    "bert": [],
    "gpt2": [],  # wte and wpe decay in both; every Conv1D weight too
    "t5": [],  # relative_attention_bias: a position table here, a "bias" by name for the Trainer
    "llama": [],
    # The Trainer decays ViT's class token (only names with "bias" or a norm escape it); timm's
    # no_weight_decay() and torchvision's recipe exempt it, and so does regtorch.
    "vit": ["vit.embeddings.cls_token"],
    "swin": [],  # relative_position_bias_table: both exempt it
}


@pytest.mark.parametrize("kind", list(HF_DIFFERENCES))
def test_default_selection_matches_the_hf_trainer(kind):
    model = tiny(kind)
    trainer = set(transformers.Trainer.get_decay_parameter_names(None, model))
    every = dict(model.named_parameters(remove_duplicate=False))
    theirs = {id(every[name]) for name in trainer}
    ours = {id(p) for _, p in select(model)}
    tensors = {id(p): p for p in model.parameters()}
    assert first_names(model, [tensors[i] for i in ours - theirs]) == []
    assert first_names(model, [tensors[i] for i in theirs - ours]) == HF_DIFFERENCES[kind]


def test_position_tables_of_hf_models_are_exempt_and_can_be_put_back():
    t5, swin = tiny("t5"), tiny("swin")
    t5_tables = [n for n, _ in select(t5, POSITION_TABLES)]
    assert t5_tables == ["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                         "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    assert not set(t5_tables) & {n for n, _ in select(t5)}
    back = {n for n, _ in select(t5, regtorch.weights(position_tables=True))}
    assert back == {n for n, _ in select(t5)} | set(t5_tables)
    assert all(n.endswith("relative_position_bias_table")
               for n, _ in select(swin, POSITION_TABLES))


# -- torchvision's and timm's names, reproduced ------------------------------------------------


class _Attention(nn.Module):
    def __init__(self, dim: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, heads))


class TorchvisionViT(nn.Module):
    """torchvision.models.VisionTransformer's parameter names (conv_proj, class_token,
    encoder.pos_embedding, encoder.layers.*, encoder.ln, heads.head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, 4, 2, 2)
        self.class_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.encoder = nn.Module()
        self.encoder.pos_embedding = nn.Parameter(torch.zeros(1, 5, 4))
        self.encoder.layers = nn.Sequential(nn.Linear(4, 4))
        self.encoder.ln = nn.LayerNorm(4)
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(4, 2))


class TorchvisionSwinBlock(nn.Module):
    """torchvision's SwinTransformerBlock / MaxViT attention: attn.relative_position_bias_table."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(4)
        self.attn = _Attention()


class TimmDeiT(nn.Module):
    """timm's distilled DeiT: cls_token, dist_token, pos_embed (its no_weight_decay() lists all
    three); a model that declares nothing still gets them exempt by name."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 6, 4))
        self.head = nn.Linear(4, 2)


class TimmSwin(nn.Module):
    """timm's Swin: absolute_pos_embed, layers.*.attn.relative_position_bias_table."""

    def __init__(self) -> None:
        super().__init__()
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4, 4))
        self.layers = nn.Sequential(TorchvisionSwinBlock())


@pytest.mark.parametrize(("make", "weights"), [
    # torchvision's recipe keys ("class_token", "position_embedding",
    # "relative_position_bias_table") match attribute names exactly: "position_embedding" does
    # not match its own ViT's "pos_embedding", which the recipe therefore decays. regtorch
    # exempts it, as timm exempts pos_embed.
    (TorchvisionViT, ["conv_proj.weight", "encoder.layers.0.weight", "heads.head.weight"]),
    (TorchvisionSwinBlock, ["attn.qkv.weight", "attn.proj.weight"]),
    (TimmDeiT, ["head.weight"]),
    (TimmSwin, ["layers.0.attn.qkv.weight", "layers.0.attn.proj.weight"]),
], ids=["torchvision-vit", "torchvision-swin-maxvit", "timm-deit", "timm-swin"])
def test_vision_position_tables_are_exempt(make, weights):
    model = make()
    assert [n for n, _ in select(model)] == weights
    assert [n for n, _ in select(model, WEIGHTS)] == weights


# -- Hugging Face Conv1D: weights stored (in, out) ---------------------------------------------


def conv1d_and_linear(seed: int = 0):
    """A Conv1D(nf=3, nx=4) and the nn.Linear(4, 3) computing the same map (weight transposed)."""
    conv = transformers.pytorch_utils.Conv1D(3, 4).double()
    torch.manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(3 * torch.randn(4, 3, dtype=torch.float64))
    linear = nn.Linear(4, 3).double()
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(conv(x), linear(x), rtol=1e-12, atol=1e-12)  # the same layer
    return conv, linear


@pytest.mark.parametrize("constraint", [regtorch.MaxNorm(1.0), regtorch.UnitNorm(),
                                        regtorch.MinMaxNorm(0.5, 1.0, rate=0.5)], ids=repr)
def test_norm_constraints_on_conv1d_act_on_output_units_as_for_linear(constraint):
    conv, linear = conv1d_and_linear()
    regtorch.Constraints(conv, constraint).apply_()
    regtorch.Constraints(linear, constraint).apply_()
    torch.testing.assert_close(conv.weight.T, linear.weight, rtol=1e-12, atol=0)
    # Reference: norms over the inputs of each output unit, the columns of the (in, out) weight.
    norms = conv.weight.detach().norm(dim=0)
    if isinstance(constraint, regtorch.MaxNorm):
        assert bool((norms <= 1.0).all())


@pytest.mark.parametrize("penalty", [regtorch.GroupLasso(0.1, groups="rows"),
                                     regtorch.GroupLasso(0.1, groups="columns"),
                                     regtorch.L1(0.1) + regtorch.GroupLasso(0.1),
                                     regtorch.Orthogonal(0.1)], ids=repr)
def test_rows_or_columns_on_conv1d_are_refused_with_the_fix(penalty):
    conv, _ = conv1d_and_linear()
    with pytest.raises(ValueError, match=r"stores its weight as \(in, out\).*in a rule of its "
                                         r"own"):
        regtorch.Regularizer(conv, penalty)


@pytest.mark.parametrize("penalty", [regtorch.L1(0.1), regtorch.L2(0.1),
                                     regtorch.GroupLasso(0.1, groups="tensor")], ids=repr)
def test_layout_free_penalties_on_conv1d_equal_linear(penalty):
    conv, linear = conv1d_and_linear()
    values = [float(regtorch.Regularizer(m, penalty).value()) for m in (conv, linear)]
    assert values[0] == pytest.approx(values[1], rel=1e-12)


def test_gpt2_group_lasso_on_output_units_in_two_rules():
    """The fix the message suggests, on a real GPT-2: columns for Conv1D, rows elsewhere."""
    gpt2 = tiny("gpt2")
    conv1d = transformers.pytorch_utils.Conv1D
    rules = {regtorch.inside(conv1d) & WEIGHTS: regtorch.GroupLasso(0.1, groups="columns"),
             WEIGHTS: regtorch.GroupLasso(0.1, groups="rows")}
    with pytest.raises(ValueError, match="as_stored=True"):
        regtorch.Regularizer(gpt2, rules)
    reg = regtorch.Regularizer(gpt2, rules, as_stored=True)
    assert len(list(reg.parameters())) == len(select(gpt2))
    # Output-unit groups of a Conv1D are its columns: the same value as the equivalent Linear's
    # rows.
    conv, linear = conv1d_and_linear()
    as_conv = regtorch.Regularizer(conv, regtorch.GroupLasso(0.1, groups="columns"),
                                   as_stored=True).value()
    as_linear = regtorch.Regularizer(linear, regtorch.GroupLasso(0.1, groups="rows")).value()
    assert float(as_conv) == pytest.approx(float(as_linear), rel=1e-12)
