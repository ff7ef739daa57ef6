"""What DTensor support refuses (at construction), in one process: a world of one gloo rank."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regtorch import L1, GroupLasso, Regularizer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="torch built without torch.distributed / gloo")


def dtensor_parameter(mesh, placement) -> nn.Parameter:
    from torch.distributed.tensor import distribute_tensor

    torch.manual_seed(0)
    return nn.Parameter(distribute_tensor(torch.randn(4, 3, dtype=torch.float64), mesh,
                                          [placement]))


def test_a_partial_placement_is_refused_with_the_placement_named(mesh):
    from torch.distributed.tensor import Partial

    model = nn.Linear(3, 4).double()
    model.weight = dtensor_parameter(mesh, Partial())
    with pytest.raises(ValueError, match=r"L1\(0.1\): .* Shard or Replicate, got Partial"):
        Regularizer(model, L1(0.1))


def test_stacked_strengths_are_refused_on_dtensor_parameters(mesh):
    from torch.distributed.tensor import Shard

    stacked = {"weight": dtensor_parameter(mesh, Shard(0))}
    with pytest.raises(ValueError, match=r"stacked \[K\] strengths"):
        Regularizer(nn.Linear(3, 4), L1(torch.full((4,), 0.1)), parameters=stacked)


def test_dtensor_and_plain_parameters_in_one_rule(mesh):
    """A world of one: every value and gradient equals the plain tensors'."""
    from torch.distributed.tensor import Shard

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
    sharded = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
    sharded.load_state_dict(plain.state_dict())
    sharded[0].weight = nn.Parameter(
        torch.distributed.tensor.distribute_tensor(plain[0].weight.detach(), mesh, [Shard(1)]))
    penalty = GroupLasso(0.2, groups="columns") + L1(0.1)
    expected, got = Regularizer(plain, penalty), Regularizer(sharded, penalty)
    assert got.value().item() == pytest.approx(expected.value().item(), rel=1e-12)
    expected().backward()
    got().backward()
    torch.testing.assert_close(sharded[0].weight.grad.full_tensor(), plain[0].weight.grad,
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(sharded[1].weight.grad, plain[1].weight.grad, rtol=1e-12, atol=0)
