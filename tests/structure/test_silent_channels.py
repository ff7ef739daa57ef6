"""compact removes a channel whose BatchNorm weight (γ) and bias (β) are exactly zero, whatever its
producer rows hold: it emits ``0 · x̂ + 0 = 0`` in eval and in training mode. A channel with γ = 0
and β ≠ 0 emits the constant β: it is folded or kept by the rules of the constants, never treated
as zero. A channel that reaches a consumer around the zero norm (a residual stream with one live
producer) is kept.

References, never the code under test: the parameter counts are computed here from the
architecture and the zero pattern of the BatchNorm entries; the original model's own outputs, in
eval and in training mode, on the example inputs and on other inputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from structure_models import ResNet
from torch import nn

from regtorch import compact, compaction_of
from regtorch.structure import FLOAT64_TOLERANCE

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_statistics(model: nn.Module) -> None:
    """Nonzero running statistics, so eval mode is not the identity normalization."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()


def silence(bn: nn.Module, channels, *, beta: float = 0.0) -> None:
    with torch.no_grad():
        bn.weight[list(channels)] = 0.0
        bn.bias[list(channels)] = beta


def same_outputs(small: nn.Module, model: nn.Module, inputs) -> None:
    for mode in (False, True):  # eval, then training mode (batch statistics)
        a, b = copy.deepcopy(small).train(mode), copy.deepcopy(model).train(mode)
        with torch.no_grad():
            for x in inputs:
                torch.testing.assert_close(a(x), b(x), rtol=FLOAT64_TOLERANCE,
                                           atol=FLOAT64_TOLERANCE)


def bn_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))


def test_mlp_channels_with_zero_batchnorm_entries_are_removed_and_constants_folded():
    torch.manual_seed(0)
    model = bn_mlp().to(F64)
    randomize_statistics(model)
    silence(model[1], (1, 4, 9))
    silence(model[4], (0, 5))
    silence(model[1], (7,), beta=0.3)    # emits relu(0.3): folded into model[3].bias
    silence(model[4], (3,), beta=-0.2)   # emits relu(-0.2) = 0: nothing to fold
    with torch.no_grad():
        model[1].weight[2] = 0.5         # γ ≠ 0, β = 0: depends on the input, kept
        model[1].bias[2] = 0.0
    x, other = torch.randn(32, 6, dtype=F64), torch.randn(16, 6, dtype=F64)

    small = compact(model, x)

    record = compaction_of(small)
    assert record.kept == []
    assert len(record.removed) == 7
    assert len(record.folded) == 1 and "0.bias" not in record.folded[0]
    h1, h2 = 16 - 4, 12 - 3
    assert (small[0].out_features, small[1].num_features, small[3].in_features) == (h1, h1, h1)
    assert (small[3].out_features, small[4].num_features, small[6].in_features) == (h2, h2, h2)
    expected = (6 * h1 + h1) + 2 * h1 + (h1 * h2 + h2) + 2 * h2 + (h2 * 3 + 3)
    assert sum(p.numel() for p in small.parameters()) == expected == record.parameters_after
    same_outputs(small, model, (x, other))


def resnet_expected_parameters(model: ResNet) -> int:
    """A producer channel is silent when its BatchNorm's γ and β are both zero; a stream channel
    goes when every producer feeding it is silent, an inner channel when its bn1 entry is."""
    def alive(bn):
        return (bn.weight != 0) | (bn.bias != 0)

    b = model.layer1[0], model.layer1[1], model.layer2[0], model.layer2[1]
    s1 = int((alive(model.bn) | alive(b[0].bn2) | alive(b[1].bn2)).sum())
    s2 = int((alive(b[2].down[1]) | alive(b[2].bn2) | alive(b[3].bn2)).sum())
    total = 3 * 9 * s1 + 2 * s1
    for block, cin, cout in ((b[0], s1, s1), (b[1], s1, s1), (b[2], s1, s2), (b[3], s2, s2)):
        inner = int(alive(block.bn1).sum())
        total += cin * 9 * inner + 2 * inner + inner * 9 * cout + 2 * cout
        if block.down is not None:
            total += cin * cout + 2 * cout
    return total + s2 * model.head.out_features + model.head.out_features


def test_resnet_channels_with_zero_batchnorm_entries_are_removed():
    torch.manual_seed(1)
    model = ResNet(width=4, classes=3).to(F64)
    randomize_statistics(model)
    silence(model.layer1[0].bn1, (0, 2))
    silence(model.layer2[1].bn1, (5,))
    # Stream channel 1 of stage 1: every producer (stem, both blocks' conv2) is silenced.
    for bn in (model.bn, model.layer1[0].bn2, model.layer1[1].bn2):
        silence(bn, (1,))
    # Stream channel 3 of stage 2: the downsampling shortcut still feeds it: kept.
    for bn in (model.layer2[0].bn2, model.layer2[1].bn2):
        silence(bn, (3,))
    x, other = torch.randn(6, 3, 8, 8, dtype=F64), torch.randn(4, 3, 8, 8, dtype=F64)

    small = compact(model, x)

    record = compaction_of(small)
    assert len(record.removed) == 4
    assert record.kept == [] and record.folded == []
    assert small.layer1[0].conv1.out_channels == 2 and small.layer2[1].conv1.out_channels == 7
    assert small.stem.out_channels == 3 and small.layer2[0].conv2.out_channels == 8
    expected = resnet_expected_parameters(model)
    assert sum(p.numel() for p in small.parameters()) == expected == record.parameters_after
    same_outputs(small, model, (x, other))


def test_a_zero_weight_with_a_nonzero_bias_is_a_constant_kept_before_zero_padding():
    torch.manual_seed(2)
    model = ResNet(width=4, classes=3).to(F64)
    randomize_statistics(model)
    silence(model.layer1[1].bn1, (3,), beta=0.7)   # relu(0.7) into a zero-padded conv2: kept
    silence(model.layer1[1].bn1, (1,), beta=-0.7)  # relu(-0.7) = 0: removed
    x = torch.randn(6, 3, 8, 8, dtype=F64)

    small = compact(model, x)

    record = compaction_of(small)
    assert len(record.removed) == 1
    assert [reason for _, reason in record.kept] == [
        "it emits the constant 0.7 into the zero-padded convolution at node "
        "'layer1_1_conv2' (not constant at the borders)"]
    assert small.layer1[1].conv1.out_channels == 3
    same_outputs(small, model, (x, torch.randn(4, 3, 8, 8, dtype=F64)))


def test_nonzero_weight_with_zero_bias_is_not_removed():
    torch.manual_seed(3)
    model = bn_mlp().to(F64)
    randomize_statistics(model)
    with torch.no_grad():
        model[1].bias.zero_()
        model[4].bias.zero_()
    small = compact(model, torch.randn(32, 6, dtype=F64))
    assert compaction_of(small).removed == []
    assert small[0].out_features == 16 and small[3].out_features == 12


class InPlaceSum(nn.Module):
    """``h.add_(other)`` writes the second branch into ``h`` after its BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Linear(5, 6), nn.BatchNorm1d(6)
        self.b, self.bn_b = nn.Linear(5, 6), nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn_a(self.a(x))
        h.add_(self.bn_b(self.b(x)))
        return self.head(torch.relu(h))


def test_a_channel_written_in_place_by_a_live_branch_is_kept():
    torch.manual_seed(4)
    model = InPlaceSum().to(F64)
    randomize_statistics(model)
    silence(model.bn_a, (0, 1))  # the other branch still feeds channels 0 and 1
    x = torch.randn(16, 5, dtype=F64)
    small = compact(model, x)
    assert compaction_of(small).removed == []
    same_outputs(small, model, (x, torch.randn(8, 5, dtype=F64)))
