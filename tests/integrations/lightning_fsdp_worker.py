"""One rank of the Lightning distributed test (run by tests/integrations/test_lightning_fsdp.py
under ``torch.distributed.run`` with 2 CPU processes and gloo): for each strategy (FSDP2 through
``ModelParallelStrategy``, and DDP) and mode, fit a small MLP and write the full weights and the
logged penalties to JSON."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

STEPS, LR, MOMENTUM, LAM, N = 3, 0.05, 0.5, 0.02, 64
STRATEGIES = ("fsdp2", "ddp")


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 10, generator=g, dtype=torch.float64)
    y = torch.tanh(x[:, :3].sum(1, keepdim=True)) + 0.1 * torch.randn(N, 1, generator=g,
                                                                      dtype=torch.float64)
    return x, y


def make_model() -> nn.Module:
    torch.manual_seed(1)
    # 6 hidden units shard evenly over 2 ranks, the 1-row output layer unevenly (1 and 0 rows).
    return nn.Sequential(nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def fit(strategy_name: str, mode: str) -> dict[str, Any]:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
    from torch.distributed.fsdp import fully_shard
    from torch.utils.data import DataLoader, TensorDataset

    from regtorch import L1
    from regtorch.integrations.lightning import Regularization

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model()

        def configure_model(self) -> None:
            if strategy_name != "fsdp2":
                return
            mesh = self.device_mesh["data_parallel"]
            for layer in (self.model[0], self.model[2]):
                fully_shard(layer, mesh=mesh)
            fully_shard(self.model, mesh=mesh)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    class Penalties(pl.loggers.Logger):
        """Every rank keeps what was logged (Lightning calls loggers on every rank)."""

        def __init__(self) -> None:
            super().__init__()
            self.penalties: list[float] = []

        name = property(lambda self: "memory")
        version = property(lambda self: 0)

        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            if "train/penalty" in metrics:
                self.penalties.append(float(metrics["train/penalty"]))

        def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
            pass

    module, logger = Module(), Penalties()
    strategy = (ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
                if strategy_name == "fsdp2" else DDPStrategy(process_group_backend="gloo"))
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=2, num_nodes=1,
                         strategy=strategy,
                         callbacks=[Regularization(L1(LAM), mode=mode)], logger=logger,
                         log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    # The distributed sampler gives each rank half of the one batch of N samples.
    trainer.fit(module, DataLoader(TensorDataset(*data()), batch_size=N // 2))
    weights = {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).tolist()
               for name, p in module.model.named_parameters()}
    return {"weights": weights, "penalties": logger.penalties}


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    for strategy in STRATEGIES:
        for mode in ("grad", "loss", "prox"):
            try:
                results[f"{strategy}-{mode}"] = fit(strategy, mode)
            except Exception as error:  # a failing case must not hide the others
                results[f"{strategy}-{mode}"] = {"error": f"{type(error).__name__}: {error}",
                                                 "traceback": traceback.format_exc()}
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
