"""Where a second torch thread starts to pay for a lab group, and what the default costs.

**Part 1: 2 threads vs 1, by step size.** ``run_study`` on one group of 16 members (one variant,
16 seeds) of growing models, with 1 and with 2 intra-op threads. The engine normally picks a
group's threads itself (:mod:`regtorch.lab.train.threads`); here the child process sets
``MIN_STEP_WORK = 0`` so the group trains with the process's count. ``work`` is
:func:`regtorch.lab.train.threads.step_work` — forward multiply-adds of one optimizer step of the
whole group — the quantity the default is chosen by. A case's number is the median over rounds
of the paired ratio t(2 threads) / t(1 thread) (< 1: the second thread pays), with its range.

**Part 2: ``regtorch run sparse-recovery``** with the default threads against
``OMP_NUM_THREADS=1`` (the target: ≤ 1.2×): the wall time of the whole process, imports
included, in a fresh output directory each time.

Method (the machine is shared, so load from other processes varies by the second): every
measurement is a fresh process (``torch.set_num_threads(n)`` before anything runs; one untimed
1-epoch warm-up in that process); each round runs the two sides of a case back to back, the side
that goes first alternating from round to round. The 1-minute load average is printed before and
after: on a loaded machine a second thread mostly waits for a busy core, so part 1 must be read
on a quiet one.

Usage: ``python benchmarks/bench_threads.py [--repeats 3] [--parts 1,2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_WIDE = {"name": "wide", "data": {"kind": "linear", "features": 256, "train": 1024, "val": 256,
                                  "test": 256},
         "model": {"kind": "mlp", "hidden": [256, 256]},
         "train": {"loss": "mse", "optimizer": "adam", "lr": 0.001, "batch_size": 256},
         "variants": [{"name": "none"}]}


def _wide(width: int, epochs: int) -> tuple[dict, int]:
    raw = json.loads(json.dumps(_WIDE))
    raw["model"]["hidden"] = [width, width]
    return raw, epochs


def _preset(name: str, epochs: int, **model) -> tuple[dict, int]:
    from regtorch.lab.study.presets import PRESETS
    raw = json.loads(json.dumps(PRESETS[name]))
    raw["variants"] = [{"name": "none"}]
    raw["model"].update(model)
    return raw, epochs


CASES = {  # name → (study dict, epochs); one variant, 16 seeds: one group of 16
    "d2l-highdim": lambda: _preset("d2l-highdim", 30),
    "sparse-recovery": lambda: _preset("sparse-recovery", 100),
    "mlp-synthetic": lambda: _preset("mlp-synthetic", 5),
    "digits": lambda: _preset("digits", 5),
    "digits-cnn": lambda: _preset("digits-cnn", 3),
    "digits-cnn-32-64": lambda: _preset("digits-cnn", 2, channels=[32, 64]),
    "wide-mlp-256": lambda: _wide(256, 3),
    "wide-mlp-512": lambda: _wide(512, 3),
    "wide-mlp-1024": lambda: _wide(1024, 2),
    "wide-mlp-2048": lambda: _wide(2048, 1),
}

_CHILD = """
import sys, time, json, torch
torch.set_num_threads(int(sys.argv[1]))
from regtorch.lab.cli._process import keep_freed_memory
keep_freed_memory()
import regtorch.lab.train.threads as threads
threads.MIN_STEP_WORK = 0.0  # the group trains with the process's thread count
from regtorch.lab.study.data import make_data
from regtorch.lab.study.models import build_model
from regtorch.lab.study.parse import parse_study
from regtorch.lab.train import run_study
study = parse_study(json.loads(sys.argv[3])).with_overrides(seeds=16)
run_study(study.with_overrides(seeds=2, epochs=1))
data = make_data(study.data, study.data_seed)
x = data.split("train")[0]
model = build_model(study.model, data.input_shape, data.outputs, seed=0)
work = threads.step_work(model, x[:study.train.batch_size or x.shape[0]], 16)
study = study.with_overrides(epochs=int(sys.argv[2]))
start = time.perf_counter()
run_study(study)
print(time.perf_counter() - start, work)
"""


def _time(raw: dict, threads: int, epochs: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(threads), str(epochs),
                          json.dumps(raw)], check=True, capture_output=True, text=True,
                         timeout=1800).stdout.split()
    return float(out[0]), float(out[1])


def part_one(cases: list[str], repeats: int) -> None:
    print("| case (16 members, one group) | epochs | work per step (multiply-adds) | 1 thread (s) "
          "| 2 threads (s) | t2 / t1 | range |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case in cases:
        raw, epochs = CASES[case]()
        ratios, one, two = [], [], []
        for round_ in range(repeats):
            times = {}
            for threads in ((1, 2) if round_ % 2 == 0 else (2, 1)):
                times[threads], work = _time(raw, threads, epochs)
            one.append(times[1])
            two.append(times[2])
            ratios.append(times[2] / times[1])
        print(f"| {case} | {epochs} | {work:.3g} | {statistics.median(one):.2f} "
              f"| {statistics.median(two):.2f} | **{statistics.median(ratios):.2f}** "
              f"| {min(ratios):.2f}–{max(ratios):.2f} |", flush=True)
    print()


def _regtorch() -> list[str]:
    script = shutil.which("regtorch", path=str(Path(sys.executable).parent))
    if script:
        return [script]
    return [sys.executable, "-c", "import sys; from regtorch.lab.cli import main; "
            "sys.exit(main())"]


def part_two(repeats: int) -> None:
    def run(one_thread: bool) -> float:
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)
        if one_thread:
            env["OMP_NUM_THREADS"] = "1"
        with tempfile.TemporaryDirectory(prefix="bench_threads_") as out:
            start = time.perf_counter()
            subprocess.run([*_regtorch(), "run", "sparse-recovery", "--out", out], env=env,
                           check=True, capture_output=True, timeout=1800)
            return time.perf_counter() - start

    default, single, ratios = [], [], []
    for round_ in range(repeats):
        times = {}
        for one_thread in ((False, True) if round_ % 2 == 0 else (True, False)):
            times[one_thread] = run(one_thread)
        default.append(times[False])
        single.append(times[True])
        ratios.append(times[False] / times[True])
    value = statistics.median(ratios)
    print("| `regtorch run sparse-recovery` | default threads (s) | OMP_NUM_THREADS=1 (s) "
          "| default / 1 | range | target |")
    print("|---|---:|---:|---:|---:|---|")
    print(f"| process wall time | {statistics.median(default):.2f} "
          f"| {statistics.median(single):.2f} | **{value:.2f}×** "
          f"| {min(ratios):.2f}–{max(ratios):.2f} | ≤ 1.2× {'met' if value <= 1.2 else 'missed'} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="1,2")
    parser.add_argument("--cases", default=",".join(CASES),
                        help="part 1's cases: " + ", ".join(CASES))
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, {args.repeats} rounds; "
          f"1-min load average {os.getloadavg()[0]:.1f} before\n")
    if "1" in parts:
        part_one(cases, args.repeats)
    if "2" in parts:
        part_two(args.repeats)
    print(f"1-min load average {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
