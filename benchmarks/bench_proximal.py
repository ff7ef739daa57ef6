"""Step-time cost of proximal regularization: ``Proximal`` vs ``prox_`` by hand vs ``add_grad_``.

One training step = ``zero_grad`` + forward + loss + backward + optimizer step (+ the penalty), on
fixed random data. Variants, each on its own copy of the same initial model with its own optimizer:

* ``none``      the plain optimizer (the baseline); ``none (2nd copy)`` is an A/A control, its
                "overhead" is the noise floor of every comparison;
* ``L1 add_grad_()``   the subgradient: ``loss.backward(); reg.add_grad_(); opt.step()``;
* ``L1 manual prox_``  ``opt.step(); reg.prox_(lr / (1 − μ))`` with a scalar step (μ = 0 for Adam,
                i.e. the plain lr: right for SGD, only a cost reference for Adam);
* ``L1 Proximal``      ``Proximal(opt, reg).step()``: for Adam this includes computing the
                element-wise step ``lr / (√v̂ + ε)``;
* ``GroupLasso(rows) Proximal``  the same with a row-wise group lasso.

``reg = Regularizer(model, penalty)`` with the default selection (weights only). Optimizers, models
and method are those of ``bench_penalty.py`` (imported from it): fixed thread count, warm-up, then
rounds that run every variant in a freshly shuffled order, a variant's time in a round being its
fastest step; the overhead is the median over rounds of the paired ratio to ``none`` of the same
round, minus 1, with the 25th..75th percentile of those ratios in brackets.

Usage::

    python benchmarks/bench_proximal.py [--models seed,deep] [--optims sgd,adam] [--rounds N]
                                        [--threads N] [--quick] [--system-malloc] [--json PATH]
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from bench_penalty import (
    MODELS,
    OPTIMIZERS,
    Workload,
    overheads,
    parse_arguments,
    set_up,
    time_interleaved,
)
from torch import nn

import regtorch
from regtorch import L1, GroupLasso, Proximal, Regularizer

SEED = 0
L1_LAM = 1e-5
GROUP_LAM = 1e-4  # the strengths do not change the cost

# Rounds and steps per round of the full run (~3 min on 2 idle cores); --quick keeps
# bench_penalty's smoke-run settings (3 rounds, a few seconds when the machine is idle).
FULL: dict[str, dict[str, int]] = {
    "seed": {"rounds": 200, "steps_per_round": 10, "warmup": 10},
    "deep": {"rounds": 60, "steps_per_round": 3, "warmup": 3},
}

Step = Callable[[], None]


def _training_step(model: nn.Module, optimizer: torch.optim.Optimizer, work: Workload, *,
                   after_backward: Callable[[], object] | None = None,
                   after_step: Callable[[], object] | None = None) -> Step:
    def step() -> None:
        optimizer.zero_grad()
        work.criterion(model(work.x), work.y).backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        if after_step is not None:
            after_step()

    return step


def _none(model, optimizer, work):
    return _training_step(model, optimizer, work)


def _l1_add_grad(model, optimizer, work):
    return _training_step(model, optimizer, work,
                          after_backward=Regularizer(model, L1(L1_LAM)).add_grad_)


def _l1_manual_prox(model, optimizer, work):
    reg = Regularizer(model, L1(L1_LAM))
    group = optimizer.param_groups[0]
    step_size = group["lr"] / (1.0 - group.get("momentum", 0.0))
    return _training_step(model, optimizer, work, after_step=lambda: reg.prox_(step_size))


def _proximal(penalty: Callable[[], regtorch.Penalty]):
    def factory(model, optimizer, work):
        with warnings.catch_warnings():
            # GroupLasso under Adam's element-wise step warns that it uses each group's mean step.
            warnings.simplefilter("ignore", UserWarning)
            wrapped = Proximal(optimizer, Regularizer(model, penalty()))
        return _training_step(model, wrapped, work)

    return factory


VARIANTS: dict[str, Callable[[nn.Module, torch.optim.Optimizer, Workload], Step]] = {
    "none": _none,
    "none (2nd copy)": _none,  # an A/A control: how far apart two identical variants measure
    "L1 add_grad_()": _l1_add_grad,
    "L1 manual prox_": _l1_manual_prox,
    "L1 Proximal": _proximal(lambda: L1(L1_LAM)),
    "GroupLasso(rows) Proximal": _proximal(lambda: GroupLasso(GROUP_LAM, groups="rows")),
}


def measure(work: Workload, make_optimizer, rng: random.Random) -> dict[str, list[float]]:
    """Seconds per step of every variant, one entry per round (paired by index): the fastest of
    the variant's steps in that round, since load from other processes only ever slows a step."""
    steps = {}
    for name, factory in VARIANTS.items():
        model = copy.deepcopy(work.model)
        steps[name] = factory(model, make_optimizer(model.parameters()), work)
    return time_interleaved(steps, work, work.rounds, rng)


def print_table(results: dict[str, dict[str, list[float]]]) -> None:
    columns = list(results)
    stats = {c: overheads(results[c]) for c in columns}
    print("| variant | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    cells = [f"{1e3 * statistics.median(results[c]['none']):.2f} ms" for c in columns]
    print("| `none` ms/step | " + " | ".join(cells) + " |")
    for name in VARIANTS:
        if name == "none":
            continue
        cells = [f"{median:+.1f}% ({q1:+.1f} … {q3:+.1f})"
                 for median, q1, q3 in (stats[c][name] for c in columns)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nCells: median over rounds of the paired ratio to `none` − 1 (25th … 75th percentile).")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv, __doc__.split("\n\n")[0], FULL, "seed,deep", "~3 min in all",
                           "smoke run: 3 rounds (a few seconds on an idle machine)")
    set_up(args)
    results: dict[str, dict[str, list[float]]] = {}
    for model_name in args.models:
        torch.manual_seed(SEED)
        work = MODELS[model_name](args.quick)
        if not args.quick:
            work = dataclasses.replace(work, **FULL[model_name])
        if args.rounds is not None:
            work = dataclasses.replace(work, rounds=args.rounds)
        print(f"{model_name}: {work.description}")
        for optim_name in args.optims:
            label, make_optimizer = OPTIMIZERS[optim_name]
            torch.manual_seed(SEED)
            load_before, start = os.getloadavg()[0], time.perf_counter()
            results[f"{model_name}/{optim_name}"] = measure(work, make_optimizer,
                                                            random.Random(SEED))
            print(f"  {label}: {work.rounds} rounds × {work.steps_per_round} steps in "
                  f"{time.perf_counter() - start:.0f} s; 1-min load average {load_before:.1f} "
                  f"before, {os.getloadavg()[0]:.1f} after")
    print()
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "quick": args.quick, "times": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
