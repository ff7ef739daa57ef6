"""Wall time of the lab: a vectorized group of 16 members vs plain PyTorch, and ``regtorch demo``.

The issue's performance targets, each measured here:

* ``d2l-highdim``, ``mlp-synthetic``: a 16-member group costs ≤ 2× one plain-PyTorch member. The
  group is ``run_study`` on the preset restricted to one variant with 16 seeds
  (``dataclasses.replace(study, variants=(v,), seeds=16)``), for the ``none`` variant and for a
  penalty variant (``l2-3``; ``l2`` at the single strength 0.01). Its time includes everything
  ``run_study`` does: data, models, tracing, training, per-epoch records.
* ``digits``: 16 members vectorized (``none``, 16 seeds) are ≥ 2.5× faster than 16 sequential
  plain runs (the data made once, then the plain loop for seeds 0..15).
* ``digits-cnn``: the same for the CNN with BatchNorm on the digits as images, ≥ 3× (the plain
  member runs the module itself: BatchNorm's running statistics update in train mode).
* ``factory-mlp``: the user's own model — a Python factory (:func:`user_mlp`, 12-64-32-1 with
  ReLU, ``kind = "python"``) on ``mlp-synthetic``'s data and recipe — 16 members vectorized are
  ≥ 5× faster than 16 sequential plain runs of the same factory.
* ``memory``: a chunked run stays under its memory budget. In a fresh process per budget: the
  digits FC (64-200-100-10) with 64 members (16 seeds × 4 λ of L2, one group) and ``--memory``
  48M, then 16M (below two members: one by one); the peak RSS the run adds over the process's
  peak after imports, data and a warm-up (a stacked group of two members for one epoch, which
  loads torch.func and the tracer) — ``ru_maxrss`` — must not exceed the budget. The same study
  without a budget (one stacked group) is measured the same way for comparison.
* ``regtorch demo`` (every preset, 5 seeds) takes ≤ 20 s on 2 cores: the wall time of the
  process, imports included, with ``OMP_NUM_THREADS`` = ``--threads``. The command is the
  ``regtorch`` console script next to this interpreter if installed, else what it runs
  (``regtorch.lab.cli:main``) in ``python -c``; without the CLI module, a process that runs
  ``run_study`` over every preset with 5 seeds (no tables, no files: a lower bound, said in the
  output).

The plain member is what a user writes: ``build_model(spec, ..., seed=s)`` (the same init as the
group's member ``s``), ``torch.optim.SGD(model.parameters(), lr=...)`` or ``Adam(..., lr=...)``
with torch's defaults otherwise, batches by tensor indexing in the engine's order (the ``e``-th
permutation drawn from ``data_seed``), the study's loss plus the penalty written out as a loss
term (``λ/2·Σw²`` over the weight matrices), and after every epoch (and before training) the
engine's recording work: eval mode, data loss (and accuracy) on the full train / validation / test
sets, penalty, ‖w‖₂ and the fraction of zero weights, the learning rate. Its time includes making
the data, as ``run_study``'s does. The ``Δ loss`` column checks that both sides did the same job:
the largest relative difference between the plain run and the group's member 0 in their final
train / validation / test losses (float32, so a sanity check, not a parity test: e.g. Adam's fused
kernel in the engine and torch's default per-tensor one round differently, and after 20 epochs on
mlp-synthetic, whose losses are ~1e-2, that is ~1e-2 relative).

Method: fixed thread count (``--threads``) for the process; the engine trains each group with one
thread when its step is small (:mod:`regtorch.lab.train.threads`: every group here), as
``regtorch run`` does, while the plain side runs with the process's count (its ops are too small
to split: they run on one); one untimed warm-up run of every side (one epoch: imports, first-call
costs); then ``--repeats`` rounds, each running every case's two sides back to back (the side that
goes first alternates from round to round), then the demo. A case's number is the median over
rounds of the *paired* ratio (the two sides of the same round), with the range of those ratios;
the seconds columns are medians. "fastest / fastest" is the ratio of each side's fastest round
(for the demo: its fastest run): load from other processes only slows a run down, so on a shared
machine it is the better estimate of the ratio on an idle one. "met" / "missed" judge the median
of the paired ratios. The load average before and after tells whether the machine was busy.

Usage::

    python benchmarks/bench_lab.py [--cases d2l-highdim,mlp-synthetic,digits,digits-cnn,demo]
                                   [--repeats N] [--threads N] [--quick] [--system-malloc]
                                   [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_penalty import parse_choices, set_up
from torch import Tensor, nn

from regtorch.lab import Study, run_study
from regtorch.lab.study.data import Datasets, make_data
from regtorch.lab.study.models import build_model
from regtorch.lab.study.presets import demo_names, preset
from regtorch.lab.study.spec import ModelSpec
from regtorch.lab.train.memory import parse_memory

MEMBERS = 16
DEMO_SEEDS = 5
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# Cases: a preset restricted to one variant, and what the vectorized side is compared with.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    preset: str
    variant: str
    strengths: tuple[float, ...] | None  # a single λ for a tuned variant
    sequential: bool  # False: group / one plain member (≤ target); True: 16 plain / group (≥)
    target: float
    quick_epochs: int
    factory: Callable[[], nn.Module] | None = None  # the user's model instead of the preset's

    @property
    def label(self) -> str:
        lam = f" λ={self.strengths[0]:g}" if self.strengths else ""
        model = f" · factory {self.factory.__name__}" if self.factory else ""
        return f"{self.preset}{model} · {self.variant}{lam}"

    def study(self, epochs: int | None = None) -> Study:
        full = preset(self.preset)
        variant = next(v for v in full.variants if v.name == self.variant)
        if self.strengths is not None:
            variant = dataclasses.replace(variant, strengths=self.strengths)
        study = dataclasses.replace(full, variants=(variant,), seeds=MEMBERS)
        if self.factory is not None:
            study = dataclasses.replace(study, model=ModelSpec("python", factory=self.factory))
        return study if epochs is None else study.with_overrides(epochs=epochs)


def user_mlp() -> nn.Module:
    """A user's model factory: mlp-synthetic's 12-64-32-1 written by hand."""
    return nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, 1))


CASES: dict[str, list[Case]] = {
    "d2l-highdim": [Case("d2l-highdim", "none", None, False, 2.0, 20),
                    Case("d2l-highdim", "l2-3", None, False, 2.0, 20)],
    "mlp-synthetic": [Case("mlp-synthetic", "none", None, False, 2.0, 5),
                      Case("mlp-synthetic", "l2", (0.01,), False, 2.0, 5)],
    "digits": [Case("digits", "none", None, True, 2.5, 10)],
    "digits-cnn": [Case("digits-cnn", "none", None, True, 3.0, 2)],
    "factory-mlp": [Case("mlp-synthetic", "none", None, True, 5.0, 5, factory=user_mlp)],
}
DEMO_TARGET = 20.0  # seconds
MEMORY_BUDGETS = ("48M", "16M")
CHOICES = [*CASES, "demo", "memory"]


# --------------------------------------------------------------------------------------------
# The plain PyTorch member.
# --------------------------------------------------------------------------------------------


def _half_mse(out: Tensor, y: Tensor) -> Tensor:
    return 0.5 * F.mse_loss(out, y)


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": F.mse_loss, "half-mse": _half_mse, "cross-entropy": F.cross_entropy,
}


def _optimizer(study: Study, model: nn.Module) -> torch.optim.Optimizer:
    recipe = study.train
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr)
    raise ValueError(f"plain loop: unsupported optimizer {recipe.optimizer!r}")


def train_plain(study: Study, data: Datasets, seed: int) -> list[dict[str, Any]]:
    """One member of ``study`` (its single variant) from init ``seed``, by a plain PyTorch loop;
    returns its records (epoch 0 = before training)."""
    (variant,) = study.variants
    if variant.penalty not in (None, "l2") or variant.weight_decay or variant.dropout:
        raise ValueError(f"plain loop: unsupported variant {variant.name!r}")
    lam = variant.strengths[0] if variant.penalty == "l2" else 0.0
    model = build_model(study.model, data.input_shape, data.outputs, seed=seed)
    optimizer = _optimizer(study, model)
    criterion = LOSSES[study.train.loss]
    weights = [p for p in model.parameters() if p.ndim >= 2]  # regtorch.WEIGHTS here: Linear's
    x_train, y_train = data.split("train")
    n = x_train.shape[0]
    batch = study.train.batch_size or n
    order = torch.Generator().manual_seed(study.data_seed)  # the engine's batch order
    records = [_record(model, data, criterion, weights, lam, optimizer, study.classification, 0)]
    for epoch in range(1, study.train.epochs + 1):
        perm = torch.randperm(n, generator=order)
        for start in range(0, n, batch):
            index = perm[start:start + batch]
            optimizer.zero_grad()
            loss = criterion(model(x_train[index]), y_train[index])
            if lam:
                loss = loss + lam / 2 * sum(w.square().sum() for w in weights)
            loss.backward()
            optimizer.step()
        records.append(_record(model, data, criterion, weights, lam, optimizer,
                               study.classification, epoch))
    return records


@torch.no_grad()
def _record(model: nn.Module, data: Datasets, criterion, weights: list[Tensor], lam: float,
            optimizer: torch.optim.Optimizer, classification: bool, epoch: int) -> dict[str, Any]:
    """The engine's per-epoch work for one member: eval-mode loss (and accuracy) on the full
    splits, penalty, ‖w‖₂ and fraction of zeros of the weights, learning rate."""
    model.eval()
    row: dict[str, Any] = {"epoch": epoch}
    for split in SPLITS:
        x, y = data.split(split)
        out = model(x)
        row[f"{split}_loss"] = float(criterion(out, y))
        if classification:
            row[f"{split}_acc"] = float((out.argmax(-1) == y).double().mean())
    squares = sum(w.double().square().sum() for w in weights)
    row["penalty"] = lam / 2 * float(squares)
    row["weight_norm"] = float(squares.sqrt())
    row["sparsity"] = float(sum((w == 0).sum() for w in weights)) / sum(w.numel() for w in weights)
    row["lr"] = optimizer.param_groups[0]["lr"]
    model.train()
    return row


# --------------------------------------------------------------------------------------------
# The two sides of a case, each a zero-argument run returning member 0's final record.
# --------------------------------------------------------------------------------------------


def _plain_side(case: Case, study: Study) -> Callable[[], dict[str, Any]]:
    def one_member() -> dict[str, Any]:
        return train_plain(study, make_data(study.data, study.data_seed), 0)[-1]

    def sequential() -> dict[str, Any]:
        data = make_data(study.data, study.data_seed)
        finals = [train_plain(study, data, seed)[-1] for seed in range(MEMBERS)]
        return finals[0]

    return sequential if case.sequential else one_member


def _vectorized_side(study: Study) -> Callable[[], dict[str, Any]]:
    def group() -> dict[str, Any]:
        result = run_study(study)
        epochs = study.train.epochs
        return next(r for r in result.records if r["seed"] == 0 and r["epoch"] == epochs)

    return group


def _timed(run: Callable[[], dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    gc.collect()
    start = time.perf_counter()
    final = run()
    return time.perf_counter() - start, final


def _loss_gap(plain: dict[str, Any], group: dict[str, Any]) -> float:
    return max(abs(plain[f"{s}_loss"] - group[f"{s}_loss"]) / abs(group[f"{s}_loss"])
               for s in SPLITS)


# --------------------------------------------------------------------------------------------
# The demo, in its own process.
# --------------------------------------------------------------------------------------------

_FALLBACK = """\
from regtorch.lab.train.engine import run_study
from regtorch.lab.study.presets import preset, demo_names
for name in demo_names():
    run_study(preset(name).with_overrides(seeds={seeds}))
"""


def demo_command(out: str) -> tuple[list[str], str, bool]:
    """The demo's command line, its description, and whether it is the CLI (which writes
    ``out/<preset>/summary.json``)."""
    script = shutil.which("regtorch", path=str(Path(sys.executable).parent))
    if script:
        return [script, "demo", "--out", out], "regtorch demo", True
    if importlib.util.find_spec("regtorch.lab.cli") is not None:
        # What the console script runs (``python -m`` needs a __main__ guard the CLI may lack).
        entry = "import sys; from regtorch.lab.cli import main; sys.exit(main())"
        return ([sys.executable, "-c", entry, "demo", "--out", out],
                "regtorch demo, through regtorch.lab.cli:main (console script not installed)",
                True)
    return ([sys.executable, "-c", _FALLBACK.format(seeds=DEMO_SEEDS)],
            f"no CLI yet: run_study over every preset, {DEMO_SEEDS} seeds, in a fresh process "
            "(no tables, no files)", False)


def time_demo(threads: int) -> tuple[float, str]:
    """Seconds of one demo process (imports included) and its description; raises RuntimeError
    when it fails or (CLI) leaves a preset without its summary.json."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="bench_lab_") as out:
        command, what, is_cli = demo_command(out)
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or [""])[-1]
            raise RuntimeError(f"{what}: exit status {done.returncode}: {tail}")
        if is_cli:
            missing = [n for n in demo_names() if not (Path(out) / n / "summary.json").exists()]
            if missing:
                raise RuntimeError(f"{what}: no summary.json for {', '.join(missing)}")
    return seconds, what


# --------------------------------------------------------------------------------------------
# Measurement and report.
# --------------------------------------------------------------------------------------------


@dataclass
class Measured:
    case: Case
    plain: list[float] = dataclasses.field(default_factory=list)
    group: list[float] = dataclasses.field(default_factory=list)
    gap: float = float("nan")

    def ratio_of_fastest(self) -> float:
        """The same ratio from each side's fastest round: load from other processes only slows a
        run down, so on a shared machine this is the better estimate of the unloaded ratio."""
        if self.case.sequential:
            return min(self.plain) / min(self.group)
        return min(self.group) / min(self.plain)

    def ratios(self) -> list[float]:
        pairs = zip(self.plain, self.group, strict=True)
        if self.case.sequential:
            return [p / g for p, g in pairs]
        return [g / p for p, g in pairs]

    def met(self, value: float) -> bool:
        return value >= self.case.target if self.case.sequential else value <= self.case.target


def measure(cases: list[Case], demo_rounds: int, repeats: int,
            epochs_of: Callable[[Case], int | None], threads: int
            ) -> tuple[list[Measured], list[float], str]:
    """Per-round times of every case's two sides, and of the demo in the first ``demo_rounds``
    rounds."""
    runs = []
    for case in cases:
        study = case.study(epochs_of(case))
        warm = case.study(1)
        _plain_side(dataclasses.replace(case, sequential=False), warm)()
        _vectorized_side(warm)()
        runs.append((Measured(case), _plain_side(case, study), _vectorized_side(study)))
    demo_times: list[float] = []
    demo_what = ""
    for round_ in range(repeats):
        for measured, plain, group in runs:
            sides = [("plain", plain), ("group", group)]
            for side, run in sides if round_ % 2 == 0 else sides[::-1]:
                seconds, final = _timed(run)
                getattr(measured, side).append(seconds)
                if side == "plain":
                    plain_final = final
                else:
                    group_final = final
            measured.gap = _loss_gap(plain_final, group_final)
        if round_ < demo_rounds:
            try:
                seconds, demo_what = time_demo(threads)
            except RuntimeError as error:  # report the other numbers anyway
                demo_rounds, demo_what = 0, f"FAILED: {error}"
            else:
                demo_times.append(seconds)
        print(f"round {round_ + 1}/{repeats} done", file=sys.stderr)
    return [m for m, _, _ in runs], demo_times, demo_what


def _range(values: list[float], fmt: str) -> str:
    return f"{min(values):{fmt}} … {max(values):{fmt}}"


def print_table(results: list[Measured], demo_times: list[float], demo_what: str,
                epochs_of: Callable[[Case], int | None]) -> None:
    print("| case | epochs | plain (s) | 16 vectorized (s) | measured | range of paired ratios "
          "| fastest / fastest | target | | Δ loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for m in results:
        ratios = m.ratios()
        value = statistics.median(ratios)
        epochs = epochs_of(m.case) or preset(m.case.preset).train.epochs
        if m.case.sequential:
            what, plain, target = "speedup: 16 plain runs / group", "16 runs: ", "≥"
        else:
            what, plain, target = "group / 1 plain member", "1 member: ", "≤"
        print(f"| {m.case.label}: {what} | {epochs} | {plain}{statistics.median(m.plain):.3f} "
              f"| {statistics.median(m.group):.3f} | **{value:.2f}×** | {_range(ratios, '.2f')} "
              f"| {m.ratio_of_fastest():.2f}× | {target} {m.case.target:g}× "
              f"| {'met' if m.met(value) else 'missed'} | {m.gap:.1e} |")
    if demo_what and not demo_times:
        print(f"| `regtorch demo` | — | — | — | — | — | — | ≤ {DEMO_TARGET:g} s | failed | — |")
        print(f"\ndemo command: {demo_what}")
    if demo_times:
        value = statistics.median(demo_times)
        print(f"| `regtorch demo` ({DEMO_SEEDS} seeds, every preset): process wall time | — | — "
              f"| — | **{value:.1f} s** | {_range(demo_times, '.1f')} s | {min(demo_times):.1f} s "
              f"| ≤ {DEMO_TARGET:g} s "
              f"| {'met' if value <= DEMO_TARGET else 'missed'} | — |")
        print(f"\ndemo command: {demo_what}")
    print()


# --------------------------------------------------------------------------------------------
# The memory budget, in its own process.
# --------------------------------------------------------------------------------------------

_MEMORY_CHILD = """\
import dataclasses, json, resource, sys
import torch
torch.set_num_threads({threads})
from regtorch.lab.cli._process import keep_freed_memory
keep_freed_memory()
from regtorch.lab.study.presets import preset
from regtorch.lab.train import run_study
from regtorch.lab.train.memory import parse_memory
base = preset("digits").with_overrides(epochs={epochs})
l2 = next(v for v in base.variants if v.name == "l2-0.002")
l2 = dataclasses.replace(l2, strengths=(0.0005, 0.001, 0.002, 0.004))
study = dataclasses.replace(base, variants=(l2,), seeds=16)
run_study(dataclasses.replace(study, seeds=2, variants=(dataclasses.replace(
    l2, strengths=(0.001,)),)).with_overrides(epochs=1))  # warm-up: two stacked members
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
budget = {budget!r}
result = run_study(study, memory=None if budget is None else parse_memory(budget))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"before": before, "after": after, "groups": result.groups}}))
"""


def measure_memory(threads: int, epochs: int) -> list[dict[str, Any]]:
    """The peak RSS a chunked run adds, and the same study's without a budget."""
    rows = []
    for budget in (*MEMORY_BUDGETS, None):
        code = _MEMORY_CHILD.format(threads=threads, epochs=epochs, budget=budget)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=3600, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  sys.path)})
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1])
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["budget"] = budget
        rows.append(row)
    return rows


def print_memory(rows: list[dict[str, Any]]) -> None:
    print("| memory: digits FC, 64 members (16 seeds × 4 λ), one group | budget | chunks "
          "| peak RSS added | | ")
    print("|---|---:|---|---:|---|")
    for row in rows:
        added = row["after"] - row["before"]
        group = row["groups"][0]
        chunks = group.get("chunks", [group["members"]] if group["mode"] == "vectorized"
                           else ["1 ×", group["members"]])
        budget = row["budget"]
        verdict = "—" if budget is None else (
            "met" if added <= parse_memory(budget) else "missed")
        print(f"| {group['mode'] if budget else 'no budget (default)'} | {budget or 'default'} "
              f"| {chunks} | {added / 2**20:.1f} MiB | {verdict} |")
    print()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CHOICES),
                        type=lambda s: parse_choices(s, CHOICES, "case"),
                        help="comma-separated subset of: " + ", ".join(CHOICES))
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds (default 5; --quick: 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 rounds, fewer epochs (d2l 20, mlp 5, digits 10), "
                             "one demo run")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's malloc at its defaults")
    parser.add_argument("--json", metavar="PATH", help="also write the raw per-round times here")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"invalid --repeats value: {args.repeats} (must be >= 1)")
    if args.threads < 1:
        parser.error(f"invalid --threads value: {args.threads} (must be >= 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    set_up(args)  # thread count, malloc; prints torch / regtorch versions and the revision
    print(f"{_cpu_model()} ({platform.machine()}), {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}\n")
    repeats = args.repeats or (2 if args.quick else 5)
    cases = [c for name in args.cases if name in CASES for c in CASES[name]]

    def epochs_of(case: Case) -> int | None:
        return case.quick_epochs if args.quick else None

    load_before = os.getloadavg()[0]
    demo_rounds = 0 if "demo" not in args.cases else 1 if args.quick else repeats
    results, demo_times, demo_what = measure(cases, demo_rounds, repeats, epochs_of,
                                             args.threads)
    print(f"{repeats} rounds; 1-min load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after\n")
    print_table(results, demo_times, demo_what, epochs_of)
    if "memory" in args.cases:
        print_memory(measure_memory(args.threads, 2 if args.quick else 10))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "quick": args.quick,
                       "cases": {m.case.label: {"plain": m.plain, "group": m.group}
                                 for m in results},
                       "demo": demo_times}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
