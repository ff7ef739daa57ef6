"""Wall time of a sweep: a 16-point × 3-seed path on ``mlp-synthetic`` vs one 3-seed variant.

The issue's target: a sweep over a given grid of 16 strengths with 3 seeds costs ≤ 3× a single
3-seed run of one variant.

* **sweep**: what ``regtorch sweep mlp-synthetic --penalty l2 --lambdas 0.001:0.1:16 --seeds 3``
  trains and computes: :func:`regtorch.lab.analysis.sweep.path_study` (16 λ × 3 seeds plus the λ = 0
  reference × 3 seeds: 51 members in one vectorized group) through ``run_study``, then
  ``summarize_sweep``. Files and the report are left out on both sides (they do not depend on
  the training work: a few hundred ms of matplotlib).
* **one variant**: ``run_study`` on the preset restricted to its ``l2`` variant at one strength
  (0.01), 3 seeds: the same penalty, recipe and epochs, 3 members — what a user runs to try one λ;
  ``summarize`` included.

Both include everything ``run_study`` does: data, models, tracing, training, per-epoch records.
"16 runs / sweep" is what the sweep saves against trying the 16 λ one run at a time (16 × the
one-variant median; derived, not measured separately).

Method: fixed thread count; one untimed warm-up of each side (first-call costs, imports); then
``--repeats`` rounds, each timing both sides back to back, the first side alternating. The ratio
is the median of the paired per-round ratios, with their range; "fastest / fastest" divides each
side's fastest round (load from other processes only slows a run down).

Usage::

    python benchmarks/bench_sweep.py [--repeats N] [--threads N] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

from bench_penalty import set_up

from regtorch.lab import run_study
from regtorch.lab.analysis.summary import summarize
from regtorch.lab.analysis.sweep import SweepSpec, parse_lambdas, path_study, summarize_sweep
from regtorch.lab.study.presets import preset

STUDY = "mlp-synthetic"
GRID = "0.001:0.1:16"
SEEDS = 3
ONE_LAMBDA = 0.01
TARGET = 3.0


def sides(epochs: int | None) -> dict[str, Callable[[], object]]:
    base = preset(STUDY).with_overrides(seeds=SEEDS, epochs=epochs)
    spec = SweepSpec("l2")
    sweep = path_study(base, spec, parse_lambdas(GRID))
    l2 = next(v for v in base.variants if v.penalty == "l2")
    one = dataclasses.replace(base, variants=(dataclasses.replace(l2, strengths=(ONE_LAMBDA,)),))

    def run_sweep() -> object:
        return summarize_sweep(run_study(sweep), spec, base)

    def run_one() -> object:
        return summarize(run_study(one))

    return {"one variant": run_one, "sweep": run_sweep}


def timed(run: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 7; --quick 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 4 epochs")
    parser.add_argument("--json", metavar="PATH", help="also write the per-round times here")
    args = parser.parse_args(argv)
    if args.threads < 1 or (args.repeats is not None and args.repeats < 1):
        parser.error("--threads and --repeats must be >= 1")
    args.system_malloc = False
    set_up(args)  # thread count, malloc; prints torch / regtorch versions and the revision
    repeats = args.repeats or (2 if args.quick else 7)
    work = sides(4 if args.quick else None)
    for run in work.values():  # warm-up: imports, first traces, allocator
        run()
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {name: [] for name in work}
    names = list(work)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            times[name].append(timed(work[name]))
    ratios = [s / o for s, o in zip(times["sweep"], times["one variant"])]
    one, sweep = (statistics.median(times[n]) for n in ("one variant", "sweep"))
    print(f"{STUDY}, l2, grid {GRID}, {SEEDS} seeds; {repeats} rounds; 1-min load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print(f"  one variant (λ = {ONE_LAMBDA:g}, {SEEDS} seeds)   {one:7.3f} s")
    print(f"  sweep (16 λ + λ = 0, × {SEEDS} seeds)    {sweep:7.3f} s")
    print(f"  sweep / one variant: {statistics.median(ratios):.2f}× "
          f"(rounds {min(ratios):.2f}–{max(ratios):.2f}; fastest / fastest "
          f"{min(times['sweep']) / min(times['one variant']):.2f}×), target ≤ {TARGET:g}×: "
          f"{'met' if statistics.median(ratios) <= TARGET else 'missed'}")
    print(f"  16 runs / sweep: {16 * one / sweep:.1f}× (16 × the one-variant median)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "quick": args.quick, "times": times}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
