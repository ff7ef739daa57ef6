"""The memory budget of a group: how many members train stacked at once.

A stacked group holds, per member, its parameters, their gradients, the optimizer's state (SGD
with momentum: one tensor per parameter; Adam: two), copies for the penalties and early stopping,
and the activations of one training batch and of one evaluation over every split.
:func:`member_bytes` estimates that sum from the model itself — the parameter and buffer sizes,
and the outputs of every leaf module on one training batch (kept for backward: twice) and on the
evaluation rows (about three outputs of the widest layer alive at once) — and
:func:`chunk_sizes` splits the members into as few chunks of near-equal size as fit the budget.
The chunks train one after the other, each over every epoch, so only one chunk's tensors are
alive at a time; a model too large for two members at once trains one by one. Every chunk sees
the same batches, so only dropout masks depend on the chunking (they are drawn per chunk).

The budget is ``--memory`` (``regtorch run``, ``sweep``, ``demo``) or ``memory=`` (the Python
API), in bytes or with a unit (``"512M"``, ``"2G"``); by default :func:`default_memory`: a quarter
of the machine's physical memory, at most :data:`MAX_DEFAULT_MEMORY`. It bounds what the stacking
adds, not the process: torch itself and the data come on top.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable

import torch
from torch import Tensor, nn

from regtorch.lab.study.spec import shown

__all__ = ["MAX_DEFAULT_MEMORY", "chunk_sizes", "default_memory", "member_bytes",
           "parse_memory", "state_bytes"]

MAX_DEFAULT_MEMORY = 2 << 30
"""The default budget's ceiling: 2 GiB."""

_OPTIMIZER_SLOTS = {"sgd": 1, "adam": 2, "adamw": 2}  # state tensors per parameter (SGD: momentum)
_COPIES = 4  # parameter, gradient, a penalty's temporaries, early stopping's best copy
# Outputs of the widest layer alive at once in an evaluation (a vmap'd forward over every row):
# measured 3 on the digits FC (peak RSS of 4- to 13-member chunks, benchmarks/bench_lab.py).
_EVAL_LAYERS = 3
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20,
          "MB": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}
_MEMORY = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")


def default_memory() -> int:
    """A quarter of the physical memory, at most :data:`MAX_DEFAULT_MEMORY` (bytes)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return MAX_DEFAULT_MEMORY
    return min(MAX_DEFAULT_MEMORY, physical // 4)


def parse_memory(text: str | int) -> int:
    """Bytes from ``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"800MB"`` or a number of bytes (units are
    powers of 1024).

    Raises:
        ValueError: not a positive size, naming the text.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _MEMORY.match(str(text))
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"--memory {shown(text)}: expected a size such as 512M or 2G")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"--memory {shown(text)}: must be more than 0 bytes")
    return value


@torch.no_grad()
def member_bytes(template: nn.Module, x_batch: Tensor, eval_rows: int, optimizer: str,
                 *, forward: Callable[[nn.Module, Tensor], Tensor] | None = None) -> int:
    """The estimated bytes one more stacked member costs (see the module docstring).

    Args:
        template: the model (not modified: a copy runs).
        x_batch: one training batch.
        eval_rows: the rows of one evaluation (train + validation + test).
        optimizer: ``train.optimizer``.
        forward: how to run the model (default: ``model(x)``).
    """
    model = copy.deepcopy(template)
    state = state_bytes(model)
    outputs: list[int] = []

    def measure(module: nn.Module, args: object, out: object) -> None:
        if isinstance(out, Tensor):
            outputs.append(out.numel() * out.element_size())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(measure) for m in leaves]
    try:
        with torch.random.fork_rng(devices=[]):
            # two examples (BatchNorm cannot train on one); halved below
            (forward or (lambda m, x: m(x)))(model, x_batch[:2])
    finally:
        for handle in handles:
            handle.remove()
    rows = min(2, x_batch.shape[0])
    per_row = [size // rows for size in outputs]  # bytes of each leaf's output per example
    train = 2 * sum(per_row) * x_batch.shape[0]
    evaluation = _EVAL_LAYERS * max(per_row, default=0) * eval_rows
    return state * (_COPIES + _OPTIMIZER_SLOTS.get(optimizer, 2)) + train + evaluation


def state_bytes(template: nn.Module) -> int:
    """Bytes of one member's parameters and buffers: what the run keeps of every member (its
    final state) while the chunks train."""
    return sum(t.numel() * t.element_size() for t in [*template.parameters(),
                                                        *template.buffers()])


def chunk_sizes(members: int, per_member: int, budget: int, kept: int = 0) -> list[int]:
    """Sizes of the fewest near-equal chunks of ``members`` whose estimated cost fits what
    ``budget`` leaves after ``kept`` bytes per member (the final states of every member);
    ``[1] * members`` when not even two fit."""
    fit = max(1, (budget - kept * members) // max(1, per_member))
    if fit >= members:
        return [members]
    if fit < 2:
        return [1] * members
    count = math.ceil(members / fit)
    base, extra = divmod(members, count)
    return [base + 1] * extra + [base] * (count - extra)
