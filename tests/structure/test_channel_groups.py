"""channel_groups: the coupled slices of every removable channel, and what is left out and why.

References: the slices each architecture must have, written out here from the layer shapes; for
the unsupported graphs, the original model's own outputs (compact must never change them).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from structure_models import ResNet, mlp
from torch import nn

from regtorch import channel_groups, compact, compaction_of
from regtorch.structure import FLOAT64_TOLERANCE

F64 = torch.float64


def slices_of(groups, tensor, role):
    """{channel index along the slice's dim: group index} for one tensor and role."""
    found = {}
    for group in groups:
        for s in group.of(role):
            if s.tensor == tensor:
                for i in s.indices:
                    found[i] = group.index
    return found


def test_mlp_groups_are_rows_bias_entries_and_next_columns():
    groups = channel_groups(mlp((6, 16, 12, 3)), torch.randn(4, 6))
    assert len(groups) == 16 + 12
    first = groups.groups[0]
    assert [(s.tensor, s.dim, s.indices, s.role) for s in first.slices] == [
        ("0.weight", 0, (0,), "out"), ("0.bias", 0, (0,), "bias"), ("2.weight", 1, (0,), "in")]
    assert groups.left_out == [("3 channels of 4.weight", "reaches the model output")]
    assert groups.parameter_names() == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_residual_additions_couple_every_producer_of_the_stream():
    groups = channel_groups(ResNet(width=4), torch.randn(2, 3, 8, 8))
    stem = slices_of(groups, "stem.weight", "out")
    for producer in ("layer1.0.conv2.weight", "layer1.1.conv2.weight"):
        assert slices_of(groups, producer, "out") == stem
    for norm in ("bn.weight", "layer1.0.bn2.bias", "layer1.1.bn2.weight"):
        assert slices_of(groups, norm, "norm") == stem
    assert slices_of(groups, "bn.running_var", "buffer") == stem
    for consumer in ("layer1.0.conv1.weight", "layer1.1.conv1.weight", "layer2.0.conv1.weight",
                     "layer2.0.down.0.weight"):
        assert slices_of(groups, consumer, "in") == stem
    second = slices_of(groups, "layer2.0.down.0.weight", "out")
    assert slices_of(groups, "layer2.1.conv2.weight", "out") == second
    assert slices_of(groups, "head.weight", "in") == second
    # 4 + 4 + 4 (stage 1: stream, two inner) + 8 + 8 + 8 (stage 2)
    assert len(groups) == 36


def test_conv_flatten_linear_maps_a_channel_to_a_block_of_columns():
    model = ResNet(width=4, flatten_head=True)
    groups = channel_groups(model, torch.randn(2, 3, 8, 8))
    head = {}
    for group in groups:
        for s in group.of("in"):
            if s.tensor == "head.weight":
                head[group.index] = s.indices
    assert sorted(head.values()) == [tuple(range(16 * c, 16 * c + 16)) for c in range(8)]


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Conv2d(2, 5, 1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), torch.relu(self.b(x))], dim=1))


def test_concatenation_offsets_channels():
    groups = channel_groups(Concat(), torch.randn(1, 2, 4, 4))
    columns = slices_of(groups, "c.weight", "in")
    assert {columns[i] for i in range(3)} == set(slices_of(groups, "a.weight", "out").values())
    assert [columns[3 + i] for i in range(5)] == [slices_of(groups, "b.weight", "out")[i]
                                                  for i in range(5)]


class Depthwise(nn.Module):
    def __init__(self, groups: int = 4) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=groups)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.dw(torch.relu(self.pw(x)))))


def test_depthwise_conv_is_channel_wise_and_grouped_conv_is_refused():
    groups = channel_groups(Depthwise(), torch.randn(1, 3, 5, 5))
    assert len(groups) == 4
    assert slices_of(groups, "dw.weight", "norm") == slices_of(groups, "pw.weight", "out")
    grouped = channel_groups(Depthwise(groups=2), torch.randn(1, 3, 5, 5))
    assert len(grouped) == 0
    reasons = [reason for _, reason in grouped.left_out]
    assert any("node 'dw' (Conv2d, groups=2)" in r for r in reasons)


class Attention(nn.Module):
    """nn.MultiheadAttention, then the hand-written form; an embedding in front."""

    def __init__(self, hand_written: bool) -> None:
        super().__init__()
        self.hand_written = hand_written
        self.embed = nn.Embedding(10, 8)
        self.inner = nn.Linear(8, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, tokens):
        x = torch.relu(self.inner(self.embed(tokens)))
        if not self.hand_written:
            return self.out(self.mha(x, x, x)[0])
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 2, 4).transpose(1, 2)
        k = self.k(x).view(b, n, 2, 4).transpose(1, 2)
        v = self.v(x).view(b, n, 2, 4).transpose(1, 2)
        attention = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
        return self.out((attention @ v).transpose(1, 2).reshape(b, n, 8))


@pytest.mark.parametrize("hand_written", [False, True])
def test_attention_is_refused_naming_the_node_and_the_embedding_is_a_producer(hand_written):
    groups = channel_groups(Attention(hand_written), torch.randint(0, 10, (2, 5)))
    reasons = " | ".join(f"{what}: {why}" for what, why in groups.left_out)
    if hand_written:
        assert "node 'view' (.view() to (2, 5, 2, 4)) reshapes the channels" in reasons
        assert len(groups) == 16  # the embedding's columns and inner's rows feed q, k, v
    else:
        assert "node 'mha' (nn.MultiheadAttention)" in reasons
        assert len(groups) == 8  # the embedding columns; inner's output goes into the attention
    assert slices_of(groups, "embed.weight", "out") == slices_of(groups, "inner.weight", "in")


def test_summary_prints_one_line_per_family_and_per_reason():
    text = str(channel_groups(ResNet(width=4), torch.randn(2, 3, 8, 8)))
    lines = text.splitlines()
    assert lines[0] == "ChannelGroups: 36 removable channels in 6 families; 1 left out"
    assert lines[1].startswith("  4 x ")
    assert "out stem.weight, layer1.0.conv2.weight, layer1.1.conv2.weight" in lines[1]
    assert lines[-1] == "  left out: 4 channels of head.weight: reaches the model output"


def test_untraceable_model_raises_one_line():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match=r"torch\.fx cannot trace Branchy"):
        channel_groups(Branchy(), torch.randn(2))


# --------------------------------------------------------------------------------------------
# Unsupported graphs: left unpruned with a reason naming the node, never a wrong model.
# --------------------------------------------------------------------------------------------


class Unsupported(nn.Module):
    """conv1 → <op on conv1's channels> → conv2 → mean → head; conv1's channels are the ones
    the op uses."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv1 = nn.Conv2d(2, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.weight = nn.Parameter(torch.randn(4, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        if self.op == "cumsum":  # a custom op along the channel dim
            y = torch.cumsum(y, dim=1)
        elif self.op == "view":  # a reshape mixing channels
            y = y.view(y.shape[0], 2, 2, y.shape[2], y.shape[3]).transpose(1, 2).reshape(y.shape)
        elif self.op == "chunk":
            a, b = torch.chunk(y, 2, dim=1)
            y = torch.cat([b, a], dim=1)
        elif self.op == "matmul":  # a matmul with a weight over the channel dim
            y = (y.permute(0, 2, 3, 1) @ self.weight).permute(0, 3, 1, 2)
        elif self.op == "inplace-index":  # an in-place write on one channel
            y[:, 1].mul_(2.0)
        elif self.op == "pool-indices":  # a tuple holding the channels
            y = F.max_pool2d(y, 1, return_indices=True)[0]
        return self.head(self.conv2(y).mean((2, 3)))


NODES = {"cumsum": "cumsum", "view": "view", "chunk": "chunk", "matmul": "matmul",
         "inplace-index": "getitem",
         "pool-indices": "max_pool2d"}


@pytest.mark.parametrize("op", list(NODES))
def test_unsupported_op_leaves_the_channels_unpruned_naming_the_node(op):
    torch.manual_seed(0)
    model = Unsupported(op).double()
    x = torch.randn(3, 2, 5, 5, dtype=F64)
    with torch.no_grad():  # conv1's channels 1 and 2 emit exactly zero: tempting to remove
        model.conv1.weight[1:3] = 0
        model.conv1.bias[1:3] = 0
    groups = channel_groups(model, x)
    assert not any(s.tensor == "conv1.weight" for g in groups for s in g.of("out"))
    (what, reason), = [(w, r) for w, r in groups.left_out if "conv1.weight" in w]
    assert what == "4 channels of conv1.weight"
    assert f"node '{NODES[op]}" in reason
    small = compact(model, x)
    assert small.conv1.out_channels == 4
    assert all(s.tensor != "conv1.weight" for i in compaction_of(small).removed
               for s in groups.groups[i].slices)
    torch.testing.assert_close(small(x), model(x), rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)


def test_a_parameter_used_directly_in_forward_is_left_out():
    class Direct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(3, 4)
            self.fc2 = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x))) + F.linear(x, self.fc1.weight).sum(-1,
                                                                                         True)

    groups = channel_groups(Direct(), torch.randn(2, 3))
    assert len(groups) == 0
    assert any("fc1.weight is used directly at node" in r for _, r in groups.left_out)


class _TwoUses(nn.Module):
    """conv → BN, and the conv's raw output added back: the norm does not see every use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.head((torch.relu(self.bn(y)) + y).mean((2, 3)))


@pytest.mark.parametrize(("make", "x", "expected"), [
    (lambda: mlp((5, 7, 3)), torch.randn(2, 5), set()),
    (lambda: nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 2)),
     torch.randn(4, 5), {"0.weight", "0.bias"}),
    (lambda: nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7, affine=False), nn.ReLU(),
                           nn.Linear(7, 2)), torch.randn(4, 5), set()),
    (lambda: ResNet(width=4), torch.randn(2, 3, 8, 8),
     {"stem.weight"} | {f"layer{i}.{j}.conv{k}.weight" for i in (1, 2) for j in (0, 1)
                        for k in (1, 2)} | {"layer2.0.down.0.weight"}),
    (_TwoUses, torch.randn(2, 3, 4, 4), set()),
], ids=["mlp", "linear-bn", "bn-not-affine", "resnet", "two-uses"])
def test_normalized_lists_the_producers_an_affine_norm_follows_directly(make, x, expected):
    # expected: written out from the architectures (every conv of the ResNet feeds a BatchNorm)
    torch.manual_seed(0)
    assert channel_groups(make(), x).normalized == expected


def test_auto_roles_penalize_norm_entries_and_unnormalized_producers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(),
                          nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 2))
    groups = channel_groups(model, torch.randn(4, 5))
    by_group = [{(s.tensor, s.role) for s in groups.penalized(g)} for g in groups]
    assert by_group[:7] == [{("1.weight", "norm"), ("1.bias", "norm")}] * 7
    assert by_group[7:] == [{("3.weight", "out"), ("3.bias", "bias")}] * 6
    assert groups.parameter_names("auto") == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert groups.penalized(groups.groups[0], ("out",)) == groups.groups[0].of("out")
