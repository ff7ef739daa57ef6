"""How many torch threads a group trains with: one, unless its step is large enough for a second
thread to pay.

A lab group's optimizer step is a few dozen ops on tensors of a few thousand to a few million
elements. torch splits an op over its threads only above a grain of 32768 elements, and then
every op pays a fork/join of the thread pool. Measured on an idle 2-core machine with
``benchmarks/bench_threads.py`` (16 members, one group, 2 threads vs 1, 2026-12-02): at
1.5·10⁶ multiply-adds per step (``mlp-synthetic``) the second thread gains nothing (t2/t1 1.14,
range 0.88–1.30); from 1.7·10⁷ (``digits``) it pays at every size (t2/t1 0.54–0.64). So
:func:`group_threads` gives a group below :data:`MIN_STEP_WORK` one thread and a larger one every
thread the process has (``torch.get_num_threads()``: what the ``regtorch`` command set —
``--threads`` or its default, which stays at one thread for the lab's models because on a *busy*
machine a second thread waits for a busy core: 8.8–10.8× slower, :mod:`regtorch.lab.cli.threads`).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

__all__ = ["MIN_STEP_WORK", "group_threads", "step_work"]

MIN_STEP_WORK = 1e7
"""Forward multiply-adds per optimizer step of a whole group (:func:`step_work`) from which a
second thread pays on an idle machine (between the 1.5·10⁶ where it did not and the 1.7·10⁷
where it did, ``benchmarks/bench_threads.py``)."""


@torch.no_grad()
def step_work(template: nn.Module, x_batch: Tensor, members: int) -> float:
    """Forward multiply-adds of one optimizer step of ``members`` stacked copies of ``template``
    on the batch ``x_batch``: ``Σ output elements × inputs per output`` over its ``Linear`` and
    convolution layers (the other layers are cheap beside them)."""
    model = copy.deepcopy(template)
    work = [0.0]

    def count(module: nn.Module, args: object, out: object) -> None:
        if not isinstance(out, Tensor):
            return
        if isinstance(module, nn.Linear):
            work[0] += out.numel() * module.in_features
        elif isinstance(module, nn.modules.conv._ConvNd):
            work[0] += out.numel() * module.in_channels // module.groups * math.prod(
                module.kernel_size)

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    rows = min(2, x_batch.shape[0])  # two rows (BatchNorm cannot train on one), scaled up
    try:
        with torch.random.fork_rng(devices=[]):
            model(x_batch[:rows])
    finally:
        for handle in handles:
            handle.remove()
    return work[0] / rows * x_batch.shape[0] * members


def group_threads(work: float, available: int | None = None) -> int:
    """1 below :data:`MIN_STEP_WORK`, else ``available`` (default ``torch.get_num_threads()``)."""
    available = torch.get_num_threads() if available is None else available
    return 1 if work < MIN_STEP_WORK else max(1, available)
