"""ChannelLasso refuses DTensor parameters, naming the parameter (one process: a world of one
gloo rank, as tests/test_distributed_errors.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regtorch import ChannelLasso, Regularizer, channel_groups

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="torch built without torch.distributed / gloo")


def sharded_mlp(mesh):
    """An MLP whose first layer's weight is a DTensor sharded by rows, and its groups."""
    from torch.distributed.tensor import Shard, distribute_tensor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    groups = channel_groups(model, torch.randn(5, 3, dtype=torch.float64))
    penalty = ChannelLasso(0.1, groups)
    model[0].weight = nn.Parameter(distribute_tensor(model[0].weight.detach(), mesh, [Shard(0)]))
    return model, groups, penalty


def test_a_regularizer_over_dtensor_parameters_is_refused_with_the_parameter_named(mesh):
    model, groups, penalty = sharded_mlp(mesh)
    with pytest.raises(ValueError, match=r"cannot act on parameter '0\.weight' of shape \(4, 3\)"
                                         r": ChannelLasso does not support DTensor parameters"):
        Regularizer(model, {groups.selector: penalty})


def test_direct_calls_on_a_dtensor_are_refused(mesh):
    model, _, penalty = sharded_mlp(mesh)
    weight = model[0].weight
    for call in (lambda: penalty.value([weight]),
                 lambda: penalty.add_grad_([weight], [torch.zeros_like(weight)]),
                 lambda: penalty.prox_([weight], [0.1])):
        with pytest.raises(ValueError, match="does not support DTensor parameters"):
            call()
