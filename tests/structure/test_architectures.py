"""compact on common architecture idioms: zero a random third of the coupled groups (every slice
they penalize), compact, and compare with the original — outputs, removed groups, and the shapes
the zero pattern implies.

References: the original model's outputs (float64, 1e-10) on the example inputs and on fresh ones;
the chosen zero groups.
"""

from __future__ import annotations

import pytest
import torch
from structure_models import (
    Conv1dNet,
    DenseStyle,
    MobileStyle,
    SqueezeExcite,
    TokenMLP,
    TorchvisionStyle,
)

from regtorch import channel_groups, compact, compaction_of
from regtorch.structure import FLOAT64_TOLERANCE

F64 = torch.float64


def images(n=4):
    return torch.randn(n, 3, 8, 8, dtype=F64)


ARCHITECTURES = {
    "torchvision-resnet": (TorchvisionStyle, images),
    "mobilenet-v2": (MobileStyle, images),
    "densenet": (DenseStyle, images),
    "token-mlp": (TokenMLP, lambda n=4: torch.randint(0, 11, (n, 5))),
    "conv1d": (Conv1dNet, lambda n=4: torch.randn(n, 2, 8, dtype=F64)),
    "squeeze-excite-index": (SqueezeExcite, images),
    "squeeze-excite-unsqueeze": (lambda: SqueezeExcite(unsqueeze=True), images),
}
# Groups every architecture must have (the rest are left out with a reason).
EXPECTED_GROUPS = {"torchvision-resnet": 6 + 2 * 6, "mobilenet-v2": 4 + 2 * 12,
                   "densenet": 3 + 3 * 4, "token-mlp": 2 * 10, "conv1d": 5 + 4,
                   # the gate couples fc2's rows with the conv's channels; fc1's rows stand alone
                   "squeeze-excite-index": 6 + 3, "squeeze-excite-unsqueeze": 6 + 3}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_compact_removes_exactly_the_zeroed_groups(name):
    build, inputs = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = build().double()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    x = inputs()
    groups = channel_groups(model, x)
    assert len(groups) == EXPECTED_GROUPS[name], str(groups)
    chosen = sorted(torch.randperm(len(groups))[: len(groups) // 3].tolist())
    with torch.no_grad():
        for index in chosen:
            for s in groups.groups[index].of("out", "bias", "norm"):
                groups.tensor(s.tensor).index_fill_(s.dim, torch.tensor(s.indices), 0.0)
    small = compact(model.train(), x)
    assert small.training
    record = compaction_of(small)
    assert record.removed == chosen
    assert record.kept == []
    removed_elements = 0
    for name_, p in model.named_parameters():
        kept = record.kept_indices.get(name_, {})
        expected_shape = list(p.shape)
        for dim, index in kept.items():
            expected_shape[dim] = len(index)
        assert list(small.get_parameter(name_).shape) == expected_shape, name_
        removed_elements += p.numel() - small.get_parameter(name_).numel()
    assert record.parameters_before - record.parameters_after == removed_elements > 0
    model.eval()
    small.eval()
    with torch.no_grad():
        for batch in (x, inputs(6)):
            torch.testing.assert_close(small(batch), model(batch), rtol=FLOAT64_TOLERANCE,
                                       atol=FLOAT64_TOLERANCE)


def test_layer_norm_streams_are_left_out_naming_the_node():
    groups = channel_groups(TokenMLP(), torch.randint(0, 11, (2, 5)))
    reasons = [reason for what, reason in groups.left_out if "embed.weight" in what]
    assert reasons == ["node 'norms_0' (LayerNorm) normalizes across the channels"]


def test_tied_parameters_are_left_out():
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = torch.nn.Linear(4, 4)
            self.b.weight = self.a.weight
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))))

    groups = channel_groups(Tied(), torch.randn(2, 4))
    assert len(groups) == 0
    assert any("a.weight is tied to b.weight" in reason for _, reason in groups.left_out)
