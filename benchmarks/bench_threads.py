"""Where a second torch thread starts to pay for one lab study: wall time of ``run_study`` with 1
and with 2 intra-op threads, for presets of growing model size.

Method (the machine is shared, so load from other processes varies by the second): every
measurement is a fresh process (``torch.set_num_threads(n)`` before anything runs; one untimed
1-epoch warm-up in that process); each round runs the 1-thread and the 2-thread process of a case
back to back, the side that goes first alternating from round to round. A case's number is the
median over rounds of the paired ratio t(2 threads) / t(1 thread) (< 1: the second thread pays),
with its range. ``size`` is :func:`regtorch.lab.cli.threads.step_size`, the per-step work that
chooses the default (:func:`regtorch.lab.cli.threads.default_threads`).

Usage: ``python benchmarks/bench_threads.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CASES = {  # name → (preset, overrides of the study dict, epochs)
    "sparse-recovery": ("sparse-recovery", {}, 60),
    "digits": ("digits", {}, 6),
    "digits-cnn": ("digits-cnn", {}, 4),
    "wide-mlp-1024": ("mlp-synthetic", {"data": {"features": 256},
                                         "model": {"hidden": [1024, 1024]},
                                         "train": {"batch_size": 256}}, 3),
}

_CHILD = """
import sys, time, json, torch
torch.set_num_threads(int(sys.argv[1]))
from regtorch.lab.study.parse import parse_study
from regtorch.lab.study.presets import PRESETS
from regtorch.lab.train import run_study
from regtorch.lab.cli.threads import step_size
raw = json.loads(JSON)
study = parse_study(raw).with_overrides(seeds=2, epochs=1)
run_study(study)
study = study.with_overrides(epochs=int(sys.argv[2]))
start = time.perf_counter()
run_study(study)
print(time.perf_counter() - start, step_size(study))
"""


def _study_dict(name: str, overrides: dict) -> dict:
    from regtorch.lab.study.presets import PRESETS
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[name].items()}
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value}
    return raw


def _time(raw: dict, threads: int, epochs: int) -> tuple[float, float]:
    import json
    code = _CHILD.replace("JSON", repr(json.dumps(raw)))
    out = subprocess.run([sys.executable, "-c", code, str(threads), str(epochs)], check=True,
                         capture_output=True, text=True, timeout=1200).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'case':<16} {'size':>10} {'1 thread s':>10} {'2 threads s':>11} "
          f"{'t2/t1 median':>12} {'range':>13}")
    for case, (name, overrides, epochs) in CASES.items():
        raw = _study_dict(name, overrides)
        ratios, one, two = [], [], []
        for round_ in range(args.repeats):
            order = (1, 2) if round_ % 2 == 0 else (2, 1)
            times = {}
            for threads in order:
                times[threads], size = _time(raw, threads, epochs)
            one.append(times[1])
            two.append(times[2])
            ratios.append(times[2] / times[1])
        print(f"{case:<16} {size:>10.3g} {statistics.median(one):>10.2f} "
              f"{statistics.median(two):>11.2f} {statistics.median(ratios):>12.2f} "
              f"{min(ratios):>6.2f}–{max(ratios):<6.2f}", flush=True)


if __name__ == "__main__":
    main()
