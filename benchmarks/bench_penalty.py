"""Step-time overhead of regularization: regtorch vs torch's ``weight_decay`` vs the blog class.

One training step = ``zero_grad`` + forward + loss + backward (+ ``reg.add_grad_()``) + optimizer
step, on fixed random data (no download). Variants, each on its own copy of the same initial model
with its own optimizer, so no state is shared:

* ``none``      no regularization (the baseline); ``none (2nd copy)`` is the same step on another
                copy, an A/A control: its "overhead" is the noise floor of every comparison;
* ``builtin``   torch's ``weight_decay`` on the weight group only (``regtorch.param_groups``);
* ``blog``      the popular blog class, inline: ``loss + λ·Σ torch.norm(W)`` (un-squared) over
                every parameter whose name contains "weight", recollected each step;
* ``L2 reg()``  ``loss + reg()`` with ``Regularizer(model, L2(λ))`` (autograd);
* ``P add_grad_()`` / ``P add_grad_(value=True)`` for P in L2, L1, ElasticNet, GroupLasso:
                ``reg.add_grad_()`` between ``loss.backward()`` and ``optimizer.step()`` (the
                fused kernel when it is built, else the pure-PyTorch path);
* ``P add_grad_(value=True), pure PyTorch``: the same call with the kernel switched off for
                it (:func:`pure_pytorch`): what every user without a compiler gets, measured in
                the same run as the kernel.

Method: fixed thread count, warm-up steps for every variant, then rounds; each round runs every
variant (in a freshly shuffled order) for a few steps, each timed with ``time.perf_counter``; the
variant's time in the round is its fastest step (load from other processes only slows steps down).
A variant's overhead is the median over rounds of the *paired* ratio (its time / ``none``'s time in
the same round) minus 1; the IQR column is the 25th..75th percentile of those ratios, a measure of
the noise. The load average before and after each table tells whether the machine was busy.
glibc's malloc is told to keep freed memory (see :func:`keep_freed_memory`; ``--system-malloc``
leaves it alone).

Optimizers: SGD(lr=1e-3, momentum=0.9) and Adam(lr=1e-3), torch's defaults otherwise (on CPU that is
the per-tensor implementation, ``foreach=False``).

Usage::

    python benchmarks/bench_penalty.py [--models seed,deep,transformer,wide] [--optims sgd,adam]
                                       [--rounds N] [--threads N] [--quick] [--system-malloc]
                                       [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import regtorch
from regtorch import L1, L2, ElasticNet, GroupLasso, Regularizer, penalties
from regtorch.lab.cli._process import keep_freed_memory

SEED = 0
LAM = 1e-4  # L2 / weight_decay / blog / group-lasso strength (the value does not change the cost)
L1_LAM = 1e-5


# --------------------------------------------------------------------------------------------
# Workloads: a model and one fixed batch.
# --------------------------------------------------------------------------------------------


@dataclass
class Workload:
    description: str
    model: nn.Module
    x: Tensor
    y: Tensor
    criterion: Callable[[Tensor, Tensor], Tensor]
    steps_per_round: int  # steps per variant per round; the fastest one counts
    rounds: int  # default number of rounds
    warmup: int  # warm-up steps per variant


# The defaults keep the full run near 8 minutes on 2 idle cores; --quick (a smoke run, < 1 minute)
# takes 3 rounds, and quarter-size batches for the two heavy models.


def _seed_mlp(quick: bool) -> Workload:
    model = nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 100), nn.ReLU(),
                          nn.Linear(100, 10))
    return Workload("seed MLP 784-200-100-10, batch 32, cross-entropy", model,
                    torch.randn(32, 784), torch.randint(0, 10, (32,)), F.cross_entropy,
                    steps_per_round=10, rounds=3 if quick else 60, warmup=10)


def _deep_mlp(quick: bool) -> Workload:
    layers: list[nn.Module] = []
    for _ in range(64):
        layers += [nn.Linear(256, 256), nn.LayerNorm(256), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    return Workload("deep MLP 64 × [Linear(256,256), LayerNorm, ReLU] + Linear(256,10), batch 64, "
                    "cross-entropy", model, torch.randn(64, 256), torch.randint(0, 10, (64,)),
                    F.cross_entropy, steps_per_round=1 if quick else 3,
                    rounds=3 if quick else 25, warmup=1 if quick else 3)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(256, nhead=8, dim_feedforward=1024, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
        self.head = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def _transformer(quick: bool) -> Workload:
    batch = 4 if quick else 16
    return Workload(f"TransformerEncoder 6 × d256 nhead 8 ff1024 (dropout 0.1), seq 64, "
                    f"batch {batch}, mean-pool + Linear(256,10), cross-entropy", _Encoder(),
                    torch.randn(batch, 64, 256), torch.randint(0, 10, (batch,)), F.cross_entropy,
                    steps_per_round=1 if quick else 2, rounds=3 if quick else 8,
                    warmup=1 if quick else 2)


def _wide_mlp(quick: bool) -> Workload:
    layers: list[nn.Module] = []
    for i in range(4):
        layers.append(nn.Linear(2048, 2048))
        if i < 3:
            layers.append(nn.ReLU())
    batch = 64 if quick else 256
    return Workload(f"wide MLP 4 × Linear(2048,2048) + ReLU, batch {batch}, MSE",
                    nn.Sequential(*layers), torch.randn(batch, 2048), torch.randn(batch, 2048),
                    F.mse_loss, steps_per_round=1 if quick else 2, rounds=3 if quick else 10,
                    warmup=1 if quick else 2)


MODELS: dict[str, Callable[[bool], Workload]] = {
    "seed": _seed_mlp, "deep": _deep_mlp, "transformer": _transformer, "wide": _wide_mlp,
}

OPTIMIZERS: dict[str, tuple[str, Callable[..., torch.optim.Optimizer]]] = {
    "sgd": ("SGD(lr=1e-3, momentum=0.9)",
            functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9)),
    "adam": ("Adam(lr=1e-3)", functools.partial(torch.optim.Adam, lr=1e-3)),
    # weight_decay=0: torch's AdamW decays every parameter by 0.01 by default
    "adamw": ("AdamW(lr=1e-3, weight_decay=0)",
              functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0)),
}


# --------------------------------------------------------------------------------------------
# Variants: each returns a zero-argument training step bound to its own model and optimizer.
# --------------------------------------------------------------------------------------------

Step = Callable[[], None]
StepFactory = Callable[[nn.Module, Callable[..., torch.optim.Optimizer], Callable[[], Tensor]],
                       Step]


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, data_loss: Callable[[], Tensor], *,
          penalty: Callable[[], Tensor] | None = None,
          after_backward: Callable[[], object] | None = None) -> Step:
    def step() -> None:
        optimizer.zero_grad()
        loss = data_loss()
        if penalty is not None:
            loss = loss + penalty()
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()

    return step


def _none(model, make_optimizer, data_loss):
    return _step(model, make_optimizer(model.parameters()), data_loss)


def _builtin(model, make_optimizer, data_loss):
    return _step(model, make_optimizer(regtorch.param_groups(model, weight_decay=LAM)), data_loss)


def _blog_penalty(model: nn.Module, lam: float) -> Tensor:
    """The blog ``Regularization`` class's forward: λ · Σ ‖W‖₂ over params named like a weight."""
    weights = [(name, w) for name, w in model.named_parameters() if "weight" in name]
    reg_loss = 0
    for _, w in weights:
        reg_loss = reg_loss + torch.norm(w, p=2)
    return lam * reg_loss


def _blog(model, make_optimizer, data_loss):
    return _step(model, make_optimizer(model.parameters()), data_loss,
                 penalty=lambda: _blog_penalty(model, LAM))


def _loss_term(penalty_factory):
    def factory(model, make_optimizer, data_loss):
        reg = Regularizer(model, penalty_factory())
        return _step(model, make_optimizer(model.parameters()), data_loss, penalty=reg)

    return factory


def _fused(penalty_factory, value: bool):
    def factory(model, make_optimizer, data_loss):
        reg = Regularizer(model, penalty_factory())
        add_grad = functools.partial(reg.add_grad_, value=value)
        return _step(model, make_optimizer(model.parameters()), data_loss, after_backward=add_grad)

    return factory


def _no_kernel(*_args):
    return None


def pure_pytorch(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with the fused kernel switched off while it runs: the penalties' one dispatch
    point (``penalties._kernel``) answers "no kernel", so they take the pure-PyTorch path, as
    with ``REGTORCH_FUSED=0`` (two attribute swaps per call, ~0.1 µs)."""

    def run() -> object:
        dispatch = penalties._kernel
        penalties._kernel = _no_kernel
        try:
            return call()
        finally:
            penalties._kernel = dispatch

    return run


def _pure_pytorch(penalty_factory):
    def factory(model, make_optimizer, data_loss):
        reg = Regularizer(model, penalty_factory())
        add_grad = pure_pytorch(functools.partial(reg.add_grad_, value=True))
        return _step(model, make_optimizer(model.parameters()), data_loss, after_backward=add_grad)

    return factory


PENALTIES: dict[str, Callable[[], regtorch.Penalty]] = {
    "L2": lambda: L2(LAM),
    "L1": lambda: L1(L1_LAM),
    "ElasticNet": lambda: ElasticNet(L1_LAM, LAM),
    "GroupLasso": lambda: GroupLasso(LAM),
}

VARIANTS: dict[str, StepFactory] = {
    "none": _none,
    "none (2nd copy)": _none,  # an A/A control: how far apart two identical variants measure
    "builtin": _builtin,
    "blog": _blog,
    "L2 reg()": _loss_term(PENALTIES["L2"]),
}
for _name, _penalty in PENALTIES.items():
    VARIANTS[f"{_name} add_grad_()"] = _fused(_penalty, value=False)
    VARIANTS[f"{_name} add_grad_(value=True)"] = _fused(_penalty, value=True)
for _name, _penalty in PENALTIES.items():
    VARIANTS[f"{_name} add_grad_(value=True), pure PyTorch"] = _pure_pytorch(_penalty)


# --------------------------------------------------------------------------------------------
# Measurement.
# --------------------------------------------------------------------------------------------

def measure(work: Workload, make_optimizer, rounds: int, rng: random.Random) -> dict[str, list]:
    """Seconds per step of every variant, one entry per round (paired by index): the fastest of
    the variant's steps in that round, since load from other processes only ever slows a step."""
    steps: dict[str, Step] = {}
    for name, factory in VARIANTS.items():
        model = copy.deepcopy(work.model)
        steps[name] = factory(model, make_optimizer,
                              functools.partial(_data_loss, model, work))
    return time_interleaved(steps, work, rounds, rng)


def time_interleaved(steps: dict[str, Step], work: Workload, rounds: int,
                     rng: random.Random) -> dict[str, list[float]]:
    """Seconds per step of every variant, one entry per round (paired by index): after
    ``work.warmup`` steps each, every round runs the variants in a fresh shuffled order, each for
    ``work.steps_per_round`` steps, and keeps the fastest (load from other processes only ever
    slows a step). The garbage collector runs between rounds only."""
    for step in steps.values():
        for _ in range(work.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    gc.disable()
    try:
        for _ in range(rounds):
            gc.collect()
            rng.shuffle(names)
            for name in names:
                step = steps[name]
                fastest = math.inf
                for _ in range(work.steps_per_round):
                    start = time.perf_counter()
                    step()
                    fastest = min(fastest, time.perf_counter() - start)
                times[name].append(fastest)
    finally:
        gc.enable()
    return times


def _data_loss(model: nn.Module, work: Workload) -> Tensor:
    return work.criterion(model(work.x), work.y)


def overheads(times: dict[str, list[float]]) -> dict[str, tuple[float, float, float]]:
    """Per variant: (median, 25th, 75th percentile) of ``time / none's time`` − 1, in percent."""
    base = times["none"]
    out = {}
    for name, ts in times.items():
        ratios = sorted(100.0 * (t / b - 1.0) for t, b in zip(ts, base, strict=True))
        if len(ratios) > 1:
            q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        else:
            q1 = q3 = ratios[0]
        out[name] = (statistics.median(ratios), q1, q3)
    return out


def source_revision() -> str:
    """The git commit of the regtorch being measured, "+" when its files differ from it; "" when
    it is not a git checkout (e.g. installed from a wheel)."""
    where = str(Path(regtorch.__file__).parent)
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if head.returncode != 0:
        return ""
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def _pct(x: float) -> str:
    return f"{x:+.1f}%"


def print_table(title: str, times: dict[str, list[float]], load: tuple[float, float]) -> None:
    stats = overheads(times)
    base_ms = 1e3 * statistics.median(times["none"])
    rounds = len(times["none"])
    print(f"### {title}\n")
    print(f"`none`: {base_ms:.2f} ms/step (median of {rounds} rounds); 1-min load average "
          f"{load[0]:.1f} before, {load[1]:.1f} after\n")
    print("| variant | overhead vs none (median) | IQR of paired ratios | ms/step |")
    print("|---|---:|---:|---:|")
    for name, (median, q1, q3) in stats.items():
        ms = 1e3 * statistics.median(times[name])
        if name == "none":
            print(f"| {name} | — | — | {ms:.2f} |")
        else:
            print(f"| {name} | {_pct(median)} | {_pct(q1)} … {_pct(q3)} | {ms:.2f} |")
    print()


def print_summary(results: dict[str, dict[str, list[float]]]) -> None:
    print("### Summary: median overhead vs none\n")
    columns = list(results)
    stats = {c: overheads(results[c]) for c in columns}
    print("| variant | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name in VARIANTS:
        if name == "none":
            continue
        cells = [_pct(stats[c][name][0]) for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()


def parse_choices(text: str, allowed, what: str) -> list[str]:
    picked = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in picked if s not in allowed]
    if bad or not picked:
        raise argparse.ArgumentTypeError(f"invalid {what}: {bad[0] if bad else text!r} "
                                         f"(choose from {', '.join(allowed)})")
    return picked


def parse_arguments(argv: list[str] | None, description: str, models: dict, default_models: str,
                    full_run: str, quick_help: str,
                    extra: Callable[[argparse.ArgumentParser], None] | None = None,
                    ) -> argparse.Namespace:
    """The command line shared by the benchmarks in this folder (``extra`` adds a benchmark's
    own options)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", default=default_models,
                        type=lambda s: parse_choices(s, models, "model"),
                        help="comma-separated subset of: " + ", ".join(models))
    parser.add_argument("--optims", default="sgd,adam",
                        type=lambda s: parse_choices(s, OPTIMIZERS, "optimizer"),
                        help="comma-separated subset of: " + ", ".join(OPTIMIZERS))
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"rounds per (model, optimizer) (default: per model, {full_run})")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's malloc at its defaults (freed blocks go back to the "
                             "OS: page faults add noise)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw per-round times here")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"invalid --rounds value: {args.rounds} (must be >= 1)")
    if args.threads < 1:
        parser.error(f"invalid --threads value: {args.threads} (must be >= 1)")
    return args


def set_up(args: argparse.Namespace) -> None:
    """Fix the thread count and malloc behaviour, and print what the numbers were measured on."""
    torch.set_num_threads(args.threads)
    kept = not args.system_malloc and keep_freed_memory()
    revision = source_revision()
    print(f"torch {torch.__version__}, regtorch {regtorch.__version__}"
          f"{f' ({revision})' if revision else ''}, {args.threads} threads, "
          f"malloc {'keeps freed memory' if kept else 'defaults'}"
          f"{', --quick' if args.quick else ''}\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv, __doc__.split("\n\n")[0], MODELS, "seed,deep,transformer,wide",
                           "~8 min in all", "smoke run (< 1 min): 3 rounds, short warm-up, "
                           "transformer and wide batches ÷ 4")
    warnings.filterwarnings("ignore")
    set_up(args)
    results: dict[str, dict[str, list[float]]] = {}
    for model_name in args.models:
        torch.manual_seed(SEED)
        work = MODELS[model_name](args.quick)
        rounds = args.rounds or work.rounds
        for optim_name in args.optims:
            label, make_optimizer = OPTIMIZERS[optim_name]
            torch.manual_seed(SEED)
            load_before = os.getloadavg()[0]
            times = measure(work, make_optimizer, rounds, random.Random(SEED))
            results[f"{model_name}/{optim_name}"] = times
            print_table(f"{work.description} · {label} · {rounds} rounds × "
                        f"{work.steps_per_round} steps", times, (load_before, os.getloadavg()[0]))
    print_summary(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "quick": args.quick, "times": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
