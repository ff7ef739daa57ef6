"""The records: after every epoch (and once before training, epoch 0), one row per member.

Per member: the data loss on the full train, validation and test sets in eval mode, the penalty
R(w) of the member's own variant (for optimizer weight decay, the L2 penalty ``wd/2·Σw²`` whose
gradient it adds), accuracy for classification, ‖w‖₂ and the fraction of exactly-zero entries of
the ``WEIGHTS`` parameters, the learning rate, and whether the member has diverged (a non-finite
train loss or weight). The row's keys are :class:`regtorch.lab.schema.Record`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from regtorch.lab.schema import SPLITS, TRAIN_LOSS, WEIGHT_NORM, Record, acc_key, loss_key
from regtorch.lab.study.data import Datasets
from regtorch.lab.train.build import member_losses
from regtorch.lab.train.plan import Member
from regtorch.lab.train.units import Unit

__all__ = ["EvaluationSet", "finite", "record_epoch"]


class EvaluationSet:
    """The three splits' inputs concatenated, so one forward pass evaluates them all (fewer,
    larger matrix products)."""

    def __init__(self, data: Datasets) -> None:
        self.data = data
        inputs = [data.split(split)[0] for split in SPLITS]
        self.x_all = torch.cat(inputs)
        self.split_sizes = [x.shape[0] for x in inputs]


@torch.no_grad()
def record_epoch(units: Sequence[Unit], members: Sequence[Member], epoch: int,
                 evaluation: EvaluationSet, *, loss: str, classification: bool,
                 weight_names: Sequence[str]) -> list[Record]:
    """The rows of ``epoch`` for every member of ``units`` (in ``members`` order)."""
    metrics: dict[str, list] = {}
    outputs = torch.cat([unit.outputs(evaluation.x_all) for unit in units])  # [K, n, out]
    for split, out in zip(SPLITS, outputs.split(evaluation.split_sizes, dim=1)):
        y = evaluation.data.split(split)[1]
        metrics[loss_key(split)] = member_losses(loss, out, y).tolist()
        if classification:
            metrics[acc_key(split)] = (out.argmax(-1) == y).double().mean(1).tolist()
    norms, zeros, penalties, lrs = [], [], [], []
    for unit in units:
        size = len(unit.members)
        weights = [unit.member_view(name).detach().reshape(size, -1) for name in weight_names]
        squares = sum(w.double().square().sum(1) for w in weights)
        count = sum(w.shape[1] for w in weights)
        norms.extend(squares.sqrt().tolist())
        zeros.extend((sum((w == 0).sum(1) for w in weights).double() / count).tolist())
        penalties.extend(unit.penalty_of(k) for k in range(size))
        lrs.extend([unit.lr] * size)
    rows: list[Record] = []
    for k, member in enumerate(members):
        row: dict = {
            "variant": member.variant.name,
            "strength": member.strength if member.variant.penalty else None,
            "seed": member.seed,
            "epoch": epoch,
        }
        for key, values in metrics.items():
            row[key] = finite(values[k])
        row.update(penalty=finite(penalties[k]), weight_norm=finite(norms[k]),
                   sparsity=zeros[k], lr=lrs[k])
        row["diverged"] = row[TRAIN_LOSS] is None or row[WEIGHT_NORM] is None
        rows.append(row)  # type: ignore[arg-type]
    return rows


def finite(value: float) -> float | None:
    """JSON has no NaN/inf: a non-finite value is recorded as null (and marks divergence)."""
    return value if math.isfinite(value) else None

