"""Train one small model five ways and print data loss, penalty and sparsity.

Data: y depends on 5 of 40 inputs (generated here, nothing is downloaded). Model: 40-32-1 MLP.
Each way uses the same init, data order and SGD (lr 0.01, momentum 0.9):

* none         — no regularization;
* loss term    — ``loss = mse + reg()``: the printed loss includes the penalty;
* fused grad   — ``loss.backward(); reg.add_grad_()``: same gradients, cheaper; identical to the
                 loss-term run;
* proximal     — ``regtorch.Proximal(opt, reg).step()``: the optimizer step, then the proximal
                 step at its effective step size ``lr / (1 - momentum)``: exact zeros;
* group prox   — the same with a column group lasso on the first layer: whole inputs switched off.

All use ``L1(0.01)`` on the weights (not the biases), except the last.

Run: ``python examples/quickstart.py``
"""

from __future__ import annotations

import torch
from torch import nn

import regtorch

LR, MOMENTUM, EPOCHS, BATCH = 0.01, 0.9, 40, 32


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 40, generator=generator)
    weights = torch.tensor([2.0, -1.5, 1.0, 0.5, -0.5])
    y = x[:, :5] @ weights + 0.3 * torch.randn(n, generator=generator)
    return x, y.unsqueeze(1)


def train(mode: str, data) -> dict[str, float]:
    (x, y), (x_test, y_test) = data
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 1))
    if mode == "group prox":  # one group per input column of the first layer
        rules = {"0.weight": regtorch.GroupLasso(0.03, groups="columns"),
                 regtorch.WEIGHTS: regtorch.L1(1e-2)}
        reg = regtorch.Regularizer(model, rules)
    else:
        reg = regtorch.Regularizer(model, regtorch.L1(1e-2))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    if mode in ("proximal", "group prox"):
        opt = regtorch.Proximal(opt, reg)  # step(): SGD's step, then reg.prox_(lr / (1 - μ))
    order = torch.Generator().manual_seed(1)
    mse = nn.MSELoss()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(x), generator=order).split(BATCH):
            opt.zero_grad()
            loss = mse(model(x[idx]), y[idx])
            if mode == "loss term":
                loss = loss + reg()
            loss.backward()
            if mode == "fused grad":
                reg.add_grad_()
            opt.step()
    with torch.no_grad():
        first = model[0].weight
        return {
            "train": mse(model(x), y).item(),
            "test": mse(model(x_test), y_test).item(),
            "penalty": reg.value().item(),
            "zeros": (first == 0).float().mean().item(),
            "dead inputs": int((first == 0).all(dim=0).sum()),
        }


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    data = (make_data(200, generator), make_data(1000, generator))
    print(f"{'mode':<11} {'train mse':>9} {'test mse':>9} {'penalty':>8} "
          f"{'zero weights':>12} {'unused inputs':>13}")
    for mode in ("none", "loss term", "fused grad", "proximal", "group prox"):
        r = train(mode, data)
        print(f"{mode:<11} {r['train']:>9.4f} {r['test']:>9.4f} {r['penalty']:>8.4f} "
              f"{r['zeros']:>12.1%} {r['dead inputs']:>9} / 40")


if __name__ == "__main__":
    main()
