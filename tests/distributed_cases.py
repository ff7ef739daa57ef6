"""The cases of tests/test_distributed.py, shared by its two gloo worker processes (run as
``python distributed_cases.py RANK PORT OUTDIR``) and its single-process reference."""

from __future__ import annotations

import itertools
import os
import sys
from datetime import timedelta

import torch
from torch import nn

from regtorch import L1, L2, ElasticNet, GroupLasso, Orthogonal, Proximal, Regularizer

WORLD = 2
STEPS = 3
LAYOUTS = ("fsdp-even", "fsdp-uneven", "tp-even", "tp-uneven")
PENALTIES = {
    "L1": lambda: L1(0.05),
    "L2": lambda: L2(0.3),
    "ElasticNet": lambda: ElasticNet(0.05, 0.2),
    "GroupLasso-rows": lambda: GroupLasso(0.1),
    "GroupLasso-columns": lambda: GroupLasso(0.1, groups="columns"),
    "Orthogonal": lambda: Orthogonal(0.2),  # gathered; no proximal step
}
MODES = ("loss", "add_grad_", "prox")
OPTIMIZERS = ("sgd-momentum", "adamw")
# REGTORCH_CASES=<substring> runs a subset of the cases (when debugging the workers by hand).
CASES = [c for c in itertools.product(LAYOUTS, PENALTIES, MODES, OPTIMIZERS)
         if os.environ.get("REGTORCH_CASES", "") in "/".join(c)
         and not (c[1] == "Orthogonal" and c[2] == "prox")]


def case_id(case: tuple) -> str:
    return "/".join(case)


def make_model(layout: str) -> nn.Module:
    """A 2-layer MLP, float64; 'uneven' sizes do not divide by the 2 ranks."""
    torch.manual_seed(0)
    hidden = 6 if layout.endswith("even") and not layout.endswith("uneven") else 5
    out = 4 if hidden == 6 else 3
    return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, out)).double()


def data(layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = 4 if make_model(layout)[2].out_features == 4 else 3
    return (torch.randn(8, 4, generator=g, dtype=torch.float64),
            torch.randn(8, out, generator=g, dtype=torch.float64))


def make_regularizer(model: nn.Module, penalty_name: str) -> Regularizer:
    # Two rules: the weights' penalty, and the biases (TP: a Replicate bias) under L2.
    return Regularizer(model, [("*.weight", PENALTIES[penalty_name]()), ("*.bias", L2(0.1))])


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd-momentum":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.01)


def train(model: nn.Module, case: tuple, x: torch.Tensor, y: torch.Tensor):
    """STEPS steps of one case; the reported penalty per step and the regularizer."""
    _, penalty_name, mode, optimizer_name = case
    reg = make_regularizer(model, penalty_name)
    optimizer = make_optimizer(optimizer_name, model)
    if mode == "prox":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the group lasso + AdamW mean-step warning
            optimizer = Proximal(optimizer, reg)
    values = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        if mode == "loss":
            penalty = reg()
            (loss + penalty).backward()
            values.append(penalty.detach())
        elif mode == "add_grad_":
            loss.backward()
            values.append(reg.add_grad_(value=True))
        else:
            loss.backward()
            values.append(reg.value())
        optimizer.step()
    return torch.stack(values), reg


def reference(case: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    model = make_model(case[0])
    x, y = data(case[0])
    values, reg = train(model, case, x, y)
    return values, {n: p.detach().clone() for n, p in model.named_parameters()}, \
        reg.value().item()


def shard(model: nn.Module, layout: str, mesh) -> None:
    if layout.startswith("fsdp"):
        from torch.distributed.fsdp import fully_shard

        fully_shard(model[0], mesh=mesh)
        fully_shard(model[2], mesh=mesh)
        fully_shard(model, mesh=mesh)
    else:
        from torch.distributed.tensor import Replicate
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            RowwiseParallel,
            parallelize_module,
        )

        if layout == "tp-even":
            plan = {"0": ColwiseParallel(), "2": RowwiseParallel()}
        else:
            # An uneven hidden layer cannot pass sharded from ColwiseParallel to
            # RowwiseParallel in torch 2.13 ("a and b must have same reduction dim": the local
            # activation is taken as an even shard); with a replicated activation between
            # them, both layers keep uneven Shard(0) / Shard(1) weights.
            plan = {"0": ColwiseParallel(output_layouts=Replicate()),
                    "2": RowwiseParallel(input_layouts=Replicate())}
        parallelize_module(model, mesh, plan)


class CountAllReduce:
    """Counts torch.distributed.all_reduce calls (regtorch._distributed calls it by attribute)."""

    def __init__(self) -> None:
        self.calls = 0
        self._original = torch.distributed.all_reduce

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self._original(*args, **kwargs)

        torch.distributed.all_reduce = counted
        return self

    def __exit__(self, *exc) -> None:
        torch.distributed.all_reduce = self._original


def worker(rank: int, port: int, outdir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=120))
    mesh = init_device_mesh("cpu", (WORLD,))
    results: dict[str, object] = {}
    for case in CASES:
        layout = case[0]
        model = make_model(layout)
        shard(model, layout, mesh)
        x, y = data(layout)
        if layout.startswith("fsdp"):  # data parallel: each rank gets half of the batch
            x, y = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        try:
            values, reg = train(model, case, x, y)
            with CountAllReduce() as counter:
                final = reg.value()
                per_rule = reg.breakdown()
                for p in reg.parameters():
                    p.grad = None
                reg.add_grad_(value=True)
            params = {n: p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
                      for n, p in model.named_parameters()}
            results[case_id(case)] = {
                "values": values, "params": params, "final": final,
                "breakdown": sum(per_rule.values()), "all_reduce_calls": counter.calls,
            }
        except Exception as error:  # reported by the test with the case's name
            results[case_id(case)] = {"error": f"{type(error).__name__}: {error}"}
    torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
