"""L1 by proximal steps in the Hugging Face Trainer: exact zeros, and the penalty logged apart.

Run: python examples/transformers_l1.py  (needs ``pip install regtorch[transformers]``)
"""

import tempfile

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from regtorch import L1
from regtorch.integrations.transformers import Regularization


def make_data(n: int = 256, d: int = 20) -> list[dict[str, torch.Tensor]]:
    """Only the first 3 of the d inputs matter."""
    x = torch.randn(n, d)
    y = x[:, :3] @ torch.tensor([[2.0], [-1.0], [0.5]]) + 0.1 * torch.randn(n, 1)
    return [{"x": xi, "labels": yi} for xi, yi in zip(x, y)]


class Regression(nn.Module):
    """Any module works: the Trainer passes the batch as keywords and reads "loss"."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(20, 1)

    def forward(self, x, labels=None):
        out = self.linear(x)
        loss = None if labels is None else nn.functional.mse_loss(out, labels)
        return {"loss": loss, "logits": out}


def main(output_dir: str) -> tuple[Regression, Trainer]:
    torch.manual_seed(0)
    data = make_data()
    model = Regression()
    args = TrainingArguments(output_dir, num_train_epochs=20, per_device_train_batch_size=64,
                             learning_rate=0.05, lr_scheduler_type="constant", optim="sgd",
                             optim_args="momentum=0.9",
                             train_sampling_strategy="sequential", logging_steps=4,
                             report_to="none", save_strategy="no", use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model, args, train_dataset=data,
                      callbacks=[Regularization(L1(0.05), mode="prox")])
    trainer.train()
    return model, trainer


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as output_dir:
        model, trainer = main(output_dir)
    weight = model.linear.weight.detach()
    print("exact zeros:", int((weight == 0).sum()), "of", weight.numel(), "weights")
    print("kept inputs:", torch.nonzero(weight[0]).flatten().tolist())
    last = [record for record in trainer.state.log_history if "loss" in record][-1]
    print(f"loss (the data loss): {last['loss']:.4f}, penalty: {last['penalty']:.4f}")
