"""FSDP2 with a group lasso and L1 by proximal steps (docs/distributed.md).

Run: torchrun --nproc-per-node 2 examples/distributed_l1.py
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import regtorch

dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
torch.manual_seed(0)  # the same initial model on every rank
model = nn.Sequential(nn.Linear(20, 15), nn.ReLU(), nn.Linear(15, 1))
for layer in (model[0], model[2], model):
    fully_shard(layer, mesh=mesh)

reg = regtorch.Regularizer(model, {"0.weight": regtorch.GroupLasso(0.05, groups="columns"),
                                   regtorch.WEIGHTS: regtorch.L1(1e-3)})
optimizer = regtorch.Proximal(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), reg)
x, y = torch.randn(64, 20), torch.randn(64, 1)  # this rank's batch
for step in range(100):
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()  # the optimizer's step, then the proximal step on the local shards
    if step % 20 == 0:
        penalty = reg.value()  # a collective: every rank calls it, every rank gets the total
        if dist.get_rank() == 0:
            print(f"step {step}: data {loss.item():.4f}  penalty {penalty.item():.4f}")
dist.destroy_process_group()
