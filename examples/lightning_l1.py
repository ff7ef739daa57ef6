"""L1 by proximal steps in PyTorch Lightning: exact zeros, and the penalty logged apart.

Run: python examples/lightning_l1.py  (needs ``pip install regtorch[lightning]``)
"""

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from regtorch import L1
from regtorch.integrations.lightning import Regularization


def make_data(n: int = 256, d: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Only the first 3 of the d inputs matter."""
    x = torch.randn(n, d)
    y = x[:, :3] @ torch.tensor([[2.0], [-1.0], [0.5]]) + 0.1 * torch.randn(n, 1)
    return x, y


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Linear(20, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y)  # the data loss: no penalty here

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main() -> tuple[Regression, pl.Trainer]:
    torch.manual_seed(0)
    x, y = make_data()
    module = Regression()
    trainer = pl.Trainer(max_epochs=20, callbacks=[Regularization(L1(0.05), mode="prox")],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=64),
                DataLoader(TensorDataset(x, y), batch_size=256))
    return module, trainer


if __name__ == "__main__":
    module, trainer = main()
    weight = module.model.weight.detach()
    print("exact zeros:", int((weight == 0).sum()), "of", weight.numel(), "weights")
    print("kept inputs:", torch.nonzero(weight[0]).flatten().tolist())
    for key in ("train/data_loss", "train/penalty", "val/data_loss"):
        print(f"{key}: {trainer.callback_metrics[key].item():.4f}")
