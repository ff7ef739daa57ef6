"""compact: after proximal group-lasso training the exactly-zero coupled groups are removed, the
outputs match the original's, the parameter count is what the zero pattern predicts; training
continues on the compact model with the carried optimizer state exactly as on the original with
the zero groups held at zero.

References, never the code under test: parameter counts computed here from the zero pattern of
the trained weights and the architecture; the original model itself (its outputs, and its own
continued training with the removed slices re-zeroed after every step).
"""

from __future__ import annotations

import copy
import gc
import itertools
import weakref

import pytest
import torch
import torch.nn.functional as F
from structure_models import ResNet, mlp
from torch import nn

from regtorch import (
    ChannelGroups,
    ChannelLasso,
    Proximal,
    Regularizer,
    carry_optimizer,
    channel_groups,
    compact,
    compaction_of,
)
from regtorch.structure import FLOAT32_TOLERANCE, FLOAT64_TOLERANCE

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(model, x, y, lam, steps, *, lr=0.1, roles=("out", "bias", "norm")):
    groups = channel_groups(model, x)
    penalty = ChannelLasso(lam, groups, roles=roles)
    optimizer = Proximal(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
                         Regularizer(model, {groups.selector: penalty}))
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return groups, optimizer


def nonzero_rows(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().flatten(1).abs().sum(1) > 0


def mlp_expected_parameters(model: nn.Sequential) -> int:
    linears = [m for m in model if isinstance(m, nn.Linear)]
    kept = [linears[0].in_features] + [int(nonzero_rows(m.weight).sum()) for m in linears[:-1]]
    kept.append(linears[-1].out_features)
    return sum(a * b + b for a, b in itertools.pairwise(kept))


def resnet_expected_parameters(model: ResNet) -> int:
    """From the zero pattern: a stream channel stays if any producer feeding its additions has a
    nonzero row, a block's inner channel if its conv1 row is nonzero."""
    def stream(producers):
        keep = torch.zeros(producers[0].weight.shape[0], dtype=torch.bool)
        for conv in producers:
            keep |= nonzero_rows(conv.weight)
        return int(keep.sum())

    b = model.layer1[0], model.layer1[1], model.layer2[0], model.layer2[1]
    s1 = stream([model.stem, b[0].conv2, b[1].conv2])
    s2 = stream([b[2].down[0], b[2].conv2, b[3].conv2])
    total = 3 * 9 * s1 + 2 * s1  # stem conv (no bias) + its BatchNorm
    for block, cin, cout in ((b[0], s1, s1), (b[1], s1, s1), (b[2], s1, s2), (b[3], s2, s2)):
        inner = int(nonzero_rows(block.conv1.weight).sum())
        total += cin * 9 * inner + 2 * inner + inner * 9 * cout + 2 * cout
        if block.down is not None:
            total += cin * cout + 2 * cout
    head_in = s2 * (16 if model.flatten_head else 1)
    return total + head_in * model.head.out_features + model.head.out_features


CASES = {
    "mlp-float64": (lambda: mlp((6, 16, 12, 3)), (48, 6), F64, 0.004, 80),
    "mlp-float32": (lambda: mlp((6, 16, 12, 3)), (48, 6), torch.float32, 0.005, 80),
    "resnet-float64": (lambda: ResNet(width=4, classes=3), (8, 3, 8, 8), F64, 0.008, 40),
    "resnet-flatten-float32": (lambda: ResNet(width=4, classes=3, flatten_head=True),
                               (8, 3, 8, 8), torch.float32, 0.008, 40),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compact_after_proximal_training(case):
    build, shape, dtype, lam, steps = CASES[case]
    torch.manual_seed(0)
    model = build().to(dtype)
    x = torch.randn(*shape, dtype=dtype)
    y = torch.randint(0, 3, (shape[0],))
    groups, _ = train(model, x, y, lam, steps)
    zero = set(groups.zero_groups(("out", "bias", "norm")))
    assert 0 < len(zero) < len(groups), "the strength must zero some groups, not all"
    expected_count = (mlp_expected_parameters(model) if case.startswith("mlp")
                      else resnet_expected_parameters(model))
    before = copy.deepcopy(model.state_dict())

    small = compact(model, x)

    record = compaction_of(small)
    assert set(record.removed) == zero
    assert record.kept == []
    assert sum(p.numel() for p in small.parameters()) == expected_count
    assert record.parameters_after == expected_count
    for key, value in model.state_dict().items():  # the original is untouched
        assert torch.equal(value, before[key]), key
    tolerance = FLOAT64_TOLERANCE if dtype == F64 else FLOAT32_TOLERANCE
    model.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=tolerance, atol=tolerance)
        other = torch.randn(*shape, dtype=dtype)  # not just the example inputs
        torch.testing.assert_close(small(other), model(other), rtol=tolerance, atol=tolerance)


def test_layer_attributes_follow_the_weights():
    torch.manual_seed(0)
    model = ResNet(width=4, classes=3).double()
    x = torch.randn(4, 3, 8, 8, dtype=F64)
    with torch.no_grad():
        for module in (model.layer1[0].conv1, model.layer1[0].bn1):
            module.weight[1:3] = 0
        model.layer1[0].bn1.bias[1:3] = 0
    small = compact(model, x)
    block = small.layer1[0]
    assert (block.conv1.out_channels, block.bn1.num_features, block.conv2.in_channels) == (2, 2, 2)
    assert block.conv1.weight.shape == (2, 4, 3, 3)
    assert block.bn1.running_mean.shape == (2,)
    assert block.conv2.weight.shape == (4, 2, 3, 3)
    rows = [s.indices for i in compaction_of(small).removed
            for s in channel_groups(model, x).groups[i].of("out")]
    assert rows == [(1,), (2,)]


# --------------------------------------------------------------------------------------------
# Folding the constant a zeroed channel emits.
# --------------------------------------------------------------------------------------------


def test_linear_folds_relu_of_the_bias():
    torch.manual_seed(0)
    model = mlp((5, 8, 3)).double()
    with torch.no_grad():
        model[0].weight[[1, 4, 6]] = 0
        model[0].bias[1] = -0.5  # relu(-0.5) = 0: nothing to fold for channel 1
        model[0].bias[4] = 0.7
    x = torch.randn(20, 5, dtype=F64)
    expected_bias = (model[2].bias + model[2].weight[:, 4] * 0.7
                     + model[2].weight[:, 6] * torch.relu(model[0].bias[6])).detach()
    small = compact(model, x)
    assert small[0].out_features == 5
    torch.testing.assert_close(small[2].bias.detach(), expected_bias, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(small(x), model(x), rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)
    assert len(compaction_of(small).folded) == 2


class ConvBNHead(nn.Module):
    """conv → BN → ReLU → conv (padding p) → global mean → Linear."""

    def __init__(self, padding: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=padding)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.conv2(torch.relu(self.bn1(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize("padding", [0, 1])
def test_a_constant_is_folded_into_a_conv_without_padding_and_kept_before_zero_padding(padding):
    torch.manual_seed(0)
    model = ConvBNHead(padding).double().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-1.5, -1)
        model.bn1.running_var.uniform_(0.5, 2)
        model.bn1.bias.fill_(0.3)
        model.conv1.weight[2] = 0  # channel 2 emits relu(BN(bias)): a nonzero constant
    x = torch.randn(3, 2, 9, 9, dtype=F64)
    small = compact(model, x)
    record = compaction_of(small)
    if padding == 0:
        assert record.removed == [2]
        assert small.conv2.in_channels == 3
        assert "conv2.bias" in record.folded[0]
    else:
        assert record.removed == []
        assert small.conv2.in_channels == 4
        (index, reason), = record.kept
        assert index == 2
        assert "zero-padded convolution at node 'conv2'" in reason
    torch.testing.assert_close(small(x), model(x), rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)


def test_a_fold_into_a_consumer_without_bias_creates_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2, bias=False)).double()
    with torch.no_grad():
        model[0].weight[0] = 0
    x = torch.randn(5, 3, dtype=F64)
    small = compact(model, x)
    assert compaction_of(small).created == ["2.bias"]
    torch.testing.assert_close(small(x), model(x), rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)


# --------------------------------------------------------------------------------------------
# Continuing training with the carried optimizer state.
# --------------------------------------------------------------------------------------------


OPTIMIZERS = {
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9,
                                                   weight_decay=1e-3),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
}


def zero_slices(model, groups, removed):
    with torch.no_grad():
        for index in removed:
            for s in groups.groups[index].of("out", "bias", "norm"):
                tensor = dict(model.named_parameters())[s.tensor]
                tensor.index_fill_(s.dim, torch.tensor(s.indices), 0.0)


@pytest.mark.parametrize("architecture", ["mlp", "resnet"])
@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_training_continues_as_on_the_original_with_zero_groups_held(architecture, optimizer_name):
    torch.manual_seed(1)
    if architecture == "mlp":
        model, x = mlp((6, 10, 8, 3)).double(), torch.randn(24, 6, dtype=F64)
    else:
        model, x = ResNet(width=4, classes=3).double(), torch.randn(6, 3, 8, 8, dtype=F64)
    y = torch.randint(0, 3, (x.shape[0],))
    groups = channel_groups(model, x)
    removed = [g.index for g in groups.groups[::3]]  # a third of the channels, every family
    zero_slices(model, groups, removed)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    for _ in range(3):  # optimizer state built up, momentum in the zero groups too
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        zero_slices(model, groups, removed)

    small = compact(model, x)
    assert set(compaction_of(small).removed) == set(removed)
    carried = carry_optimizer(optimizer, model, small)
    old_ids = {id(p) for p in model.parameters()}
    assert not any(id(p) in old_ids for group in carried.param_groups for p in group["params"])
    assert not any(id(t) in old_ids or id(p) in old_ids
                   for p, state in carried.state.items() for t in state.values())

    old_param = weakref.ref(next(model.parameters()))
    reference = copy.deepcopy((model, optimizer))  # one memo: the copy optimizes the copy
    groups = ChannelGroups(groups.groups, groups.left_out)  # the structure, not the tensors
    # The compact model, its record and the carried optimizer hold no tensor of the original.
    model, optimizer = None, None
    gc.collect()
    assert old_param() is None
    model, optimizer = reference

    for _ in range(4):
        for net, opt in ((model, optimizer), (small, carried)):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        zero_slices(model, groups, removed)
        torch.testing.assert_close(small(x), model(x), rtol=1e-10, atol=1e-10)
    record = compaction_of(small)
    for name, p in model.named_parameters():
        expected = p.detach()
        for dim, index in sorted(record.kept_indices.get(name, {}).items()):
            expected = expected.index_select(dim, index)
        torch.testing.assert_close(small.get_parameter(name).detach(), expected, rtol=1e-10,
                                   atol=1e-10)
    for name, b in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            continue
        expected = b
        for dim, index in sorted(record.kept_indices.get(name, {}).items()):
            expected = expected.index_select(dim, index)
        torch.testing.assert_close(small.get_buffer(name), expected, rtol=1e-10, atol=1e-10)


def test_carry_optimizer_needs_a_compact_model_and_a_plain_optimizer():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"not returned by regtorch\.compact"):
        carry_optimizer(optimizer, model, model)
    small = compact(model, torch.randn(4, 6))
    groups = channel_groups(model, torch.randn(4, 6))
    prox = Proximal(optimizer, Regularizer(model, {groups.selector: ChannelLasso(0.1, groups)}))
    with pytest.raises(TypeError, match=r"prox\.optimizer"):
        carry_optimizer(prox, model, small)


def test_a_wrong_compaction_raises_naming_the_first_differing_node(monkeypatch):
    """If the analysis wrongly took torch.roll over the channels for a channel-wise op, the
    check must catch it at that node."""
    from regtorch.structure import graph

    class Rolled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(2, 4, 1)
            self.conv2 = nn.Conv2d(4, 3, 1)

        def forward(self, x):
            y = torch.relu(self.conv1(x))
            return self.conv2(y * torch.roll(y, 1, 1)).mean((2, 3))  # zeros stay zero

    torch.manual_seed(0)
    model = Rolled().double()
    with torch.no_grad():
        model.conv1.weight[1:3] = 0
        model.conv1.bias[1:3] = 0
    x = torch.randn(2, 2, 4, 4, dtype=F64)
    assert compaction_of(compact(model, x)).removed == []  # roll is not known: nothing removed
    monkeypatch.setattr(graph, "_UNARY_FUNCTIONS", graph._UNARY_FUNCTIONS | {torch.roll})
    with pytest.raises(ValueError, match="first differing node: 'roll'"):
        compact(model, x)
    with pytest.raises(ValueError, match="first differing node: 'roll'"):
        compact(model, x, tolerance=1e-3)  # the difference is O(1), not rounding
    with pytest.raises(ValueError, match="Invalid tolerance"):
        compact(model, x, tolerance=-1.0)


def test_a_producer_keeps_one_channel_and_its_constant_is_not_folded_twice():
    torch.manual_seed(0)
    model = mlp((3, 4, 2)).double()
    with torch.no_grad():
        model[0].weight.zero_()  # every channel emits relu(bias) > 0: all foldable
        model[0].bias.copy_(torch.tensor([0.5, 0.2, 0.1, 0.3]))
    x = torch.randn(5, 3, dtype=F64)
    small = compact(model, x)
    record = compaction_of(small)
    assert small[0].out_features == 1
    assert [reason for _, reason in record.kept] == ["removing it would leave 0.weight no channel"]
    assert len(record.folded) == 3
    torch.testing.assert_close(small(x), model(x), rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)
