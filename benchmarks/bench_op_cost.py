"""The penalty's own cost inside a training step, against built-in weight decay's own op.

Whole-step ratios (``bench_fused.py``) carry a bias per model copy: each variant trains its own
copy, whose memory placement shifts its step time by a few points for the whole process (on the
deep MLP at 60 rounds the A/A copy measured −2.1% and built-in weight decay −6.7%), and more rounds
do not average that away. Here one model and one optimizer take every step; the op under test is
timed alone, inside the step, after ``backward()`` (the gradients and weights as cold as they are
there), the ops interleaved step by step in a shuffled order. The difference of two ops, as a
fraction of the step without them, is the difference of their whole-step overheads:

* ``built-in``: what torch's SGD and Adam do for ``weight_decay`` per parameter,
  ``grad = grad.add(param, alpha=wd)`` (a new gradient tensor), on the penalized weights (malloc
  keeps freed memory, as in the other benchmarks here, so that tensor costs no page faults);
* ``P add_grad_(value=True)`` for P in L2, L1, ElasticNet, GroupLasso: ``reg.add_grad_(value=True)``
  (the fused kernel when it is built), gradient and value.

Usage::

    python benchmarks/bench_op_cost.py [--models deep,wide] [--steps N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from bench_penalty import MODELS, PENALTIES, keep_freed_memory

from regtorch import Regularizer

WEIGHT_DECAY = 1e-4
SEED = 0


def measure(model_name: str, steps: int) -> tuple[str, float, dict[str, list[float]]]:
    """(description, median seconds of a step without the op, seconds of each op per step)."""
    torch.manual_seed(SEED)
    work = MODELS[model_name](False)
    model = work.model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")
               and p.dim() > 1]

    def builtin() -> None:
        for p in weights:
            p.grad.add(p, alpha=WEIGHT_DECAY)

    ops = {"built-in grad.add(param)": builtin}
    for name, make in PENALTIES.items():
        reg = Regularizer(model, make())
        ops[f"{name} add_grad_(value=True)"] = lambda reg=reg: reg.add_grad_(value=True)
    times: dict[str, list[float]] = {name: [] for name in ops}
    rest: list[float] = []
    names, rng = list(ops), random.Random(SEED)
    for _ in range(steps):
        rng.shuffle(names)
        for name in names:
            optimizer.zero_grad()
            start = time.perf_counter()
            work.criterion(model(work.x), work.y).backward()
            before = time.perf_counter()
            with torch.no_grad():
                ops[name]()
            after = time.perf_counter()
            optimizer.step()
            end = time.perf_counter()
            times[name].append(after - before)
            rest.append(end - start - (after - before))
    return work.description, statistics.median(rest), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="deep,wide",
                        help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--steps", type=int, default=40, help="steps per op (default 40)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # as the other benchmarks here: glibc keeps freed blocks, so the built-in op's new gradient
    # tensor is not a fresh mmap (page faults) at every step
    print(f"malloc {'keeps freed memory' if keep_freed_memory() else 'defaults'}")
    for model_name in args.models.split(","):
        if model_name not in MODELS:
            parser.error(f"invalid --models value: {model_name!r} (choose from "
                         f"{', '.join(MODELS)})")
        description, step, times = measure(model_name, args.steps)
        base = statistics.median(times["built-in grad.add(param)"])
        print(f"\n{description}, 1 thread, {args.steps} steps per op: the step without the op "
              f"{step * 1e3:.1f} ms\n")
        print("| op (inside the step) | ms | % of the step | vs built-in's op (points) |")
        print("|---|---:|---:|---:|")
        for name, values in times.items():
            cost = statistics.median(values)
            print(f"| {name} | {cost * 1e3:.2f} | {100 * cost / step:.1f}% | "
                  f"{100 * (cost - base) / step:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
