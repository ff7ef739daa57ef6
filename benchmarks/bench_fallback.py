"""The pure-PyTorch path (what a user without a C++ compiler gets), before vs after, in one run.

The penalties module of an earlier git revision (``--before``, default ``0b40186``: the last
commit before the lean formulations of this benchmark's section in ``benchmarks/README.md``) is
loaded from git beside the current one, and every variant below runs with the fused kernel
switched off, interleaved in shuffled rounds (``bench_penalty.time_interleaved``). Seed MLP
784-200-100-10, batch 32 (``--model``: another of ``bench_penalty``'s workloads), 1 thread by
default. Variants, each on its own copy of the model:

* ``none``, ``none (2nd copy)`` (the A/A control), ``builtin weight_decay``;
* ``P value before`` / ``P value after`` for P in L2, L1, ElasticNet, GroupLasso:
  ``penalty.add_grad_(params, grads, value=True, scratch=...)`` under ``no_grad`` after
  ``backward()``, with the earlier module's penalty resp. the current one (the same call, so the
  two rows differ only by the penalties' code; ``Regularizer.add_grad_`` adds the same few µs to
  both);
* ``P Proximal before``: ``attach_prox``'s generic step, ``effective_steps()`` then
  ``reg.prox_`` with the earlier module's penalty (what ``Proximal`` did without the kernel);
  ``P Proximal after``: ``Proximal`` with the kernel switched off (its lean element-wise step);
* ``L2 value kernel`` and ``L1 Proximal kernel``: the kernel itself, for reference (left out
  when it is not built).

With ``--calls`` it times the calls alone instead (thread CPU time, so other processes on a
busy machine count less): ``add_grad_(value=True)`` on the seed MLP's weights with fixed
gradients, and the proximal hook after an Adam / AdamW / SGD step, before vs after, interleaved
rounds of ``--calls`` calls; the median per call, and the median of the paired ratios.

Usage::

    python benchmarks/bench_fallback.py [--before REV] [--model seed] [--optims sgd,adam,adamw]
                                        [--rounds N] [--threads 1] [--calls N]
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import random
import statistics
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import torch
from bench_fused import _no_kernel
from bench_fused import _proximal_pure_pytorch_step as without_kernel
from bench_penalty import MODELS, OPTIMIZERS, keep_freed_memory, overheads
from bench_penalty import time_interleaved as interleave
from bench_proximal import _training_step as _train_step

import regtorch
from regtorch import L1, L2, Proximal, Regularizer, attach_prox, penalties
from regtorch import _fused as fused

LAM = 1e-4
L1_LAM = 1e-5
ROOT = Path(__file__).resolve().parent.parent
PENALTIES = {
    "L2": lambda m: m.L2(LAM),
    "L1": lambda m: m.L1(L1_LAM),
    "ElasticNet": lambda m: m.ElasticNet(L1_LAM, LAM),
    "GroupLasso": lambda m: m.GroupLasso(LAM),
}


def load_penalties(revision: str) -> types.ModuleType:
    """``regtorch/penalties.py`` as it was at ``revision``, as a module of its own (its imports
    are today's ``regtorch._reduce``, ``_strength`` and ``_fused``), with the kernel off."""
    source = subprocess.run(["git", "-C", str(ROOT), "show",
                             f"{revision}:src/regtorch/penalties.py"],
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(f"penalties_{revision}")
    module.__file__ = f"{revision}:src/regtorch/penalties.py"
    sys.modules[module.__name__] = module  # dataclass-like NamedTuples resolve their module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    module._kernel = lambda *args: None
    return module




def _value(module, name):
    """``penalty.add_grad_(value=True)`` of ``module``'s penalty on the model's weights."""
    def factory(model, make_optimizer, work):
        penalty = PENALTIES[name](module)
        params = list(Regularizer(model, L2(LAM)).parameters())
        scratch = module.Scratch()

        @torch.no_grad()
        def add_grad():
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            return penalty.add_grad_(params, [p.grad for p in params], value=True,
                                     scratch=scratch)

        return without_kernel(_train_step(model, make_optimizer(model.parameters()), work,
                                          after_backward=add_grad))

    return factory


def _proximal_before(module, name):
    def factory(model, make_optimizer, work):
        optimizer = make_optimizer(model.parameters())
        reg = Regularizer(model, PENALTIES[name](penalties))
        reg._groups[0].penalty = PENALTIES[name](module)  # the earlier prox_, same parameters
        handle = attach_prox(optimizer, reg)
        handle._lean_prox_ = lambda: False  # absent before: effective_steps() then prox_
        return without_kernel(_train_step(model, optimizer, work))

    return factory


def _proximal_after(name):
    def factory(model, make_optimizer, work):
        optimizer = Proximal(make_optimizer(model.parameters()),
                             Regularizer(model, PENALTIES[name](penalties)))
        return without_kernel(_train_step(model, optimizer, work))

    return factory


def _kernel_value(model, make_optimizer, work):
    reg = Regularizer(model, L2(LAM))
    return _train_step(model, make_optimizer(model.parameters()), work,
                       after_backward=functools.partial(reg.add_grad_, value=True))


def _kernel_proximal(model, make_optimizer, work):
    return _train_step(model, Proximal(make_optimizer(model.parameters()),
                                       Regularizer(model, L1(L1_LAM))), work)


def _none(model, make_optimizer, work):
    return _train_step(model, make_optimizer(model.parameters()), work)


def _builtin(model, make_optimizer, work):
    return _train_step(model, make_optimizer(regtorch.param_groups(model, weight_decay=LAM)),
                       work)


def variants(before: types.ModuleType) -> dict:
    out = {"none": _none, "none (2nd copy)": _none, "builtin weight_decay": _builtin}
    for name in PENALTIES:
        out[f"{name} value before"] = _value(before, name)
        out[f"{name} value after"] = _value(penalties, name)
    for name in ("L1", "ElasticNet"):
        out[f"{name} Proximal before"] = _proximal_before(before, name)
        out[f"{name} Proximal after"] = _proximal_after(name)
    if fused.load_kernel() is not None:
        out["L2 value kernel"] = _kernel_value
        out["L1 Proximal kernel"] = _kernel_proximal
    return out


def _call_pairs(before: types.ModuleType, optims: list[str], model_name: str) -> dict[str, tuple]:
    """(before, after) zero-argument calls: the penalties' add_grad_ and the proximal hooks."""
    torch.manual_seed(0)
    work = MODELS[model_name](False)
    model = copy.deepcopy(work.model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    params = list(Regularizer(model, L2(LAM)).parameters())
    pairs = {}
    for name in PENALTIES:
        calls = []
        for module in (before, penalties):
            penalty, scratch = PENALTIES[name](module), module.Scratch()
            calls.append(torch.no_grad()(functools.partial(
                penalty.add_grad_, params, [p.grad for p in params], value=True,
                scratch=scratch)))
        pairs[f"{name} add_grad_(value=True)"] = tuple(calls)
    for optim in optims:
        for name in ("L1", "ElasticNet"):
            calls = []
            for module in (before, penalties):
                twin = copy.deepcopy(model)
                for a, b in zip(twin.parameters(), model.parameters()):
                    a.grad = b.grad.clone()  # deepcopy leaves .grad behind
                optimizer = OPTIMIZERS[optim][1](twin.parameters())
                reg = Regularizer(twin, PENALTIES[name](penalties))
                reg._groups[0].penalty = PENALTIES[name](module)
                handle = attach_prox(optimizer, reg)
                optimizer.step()
                handle.remove()  # the hook is called by hand below, without the step
                if module is before:
                    calls.append(torch.no_grad()(lambda h=handle: h.regularizer.prox_(
                        h.effective_steps())))
                else:
                    calls.append(handle._lean_prox_)
            pairs[f"{name} proximal hook, {optim}"] = tuple(calls)
    return pairs


def time_calls(before: types.ModuleType, optims: list[str], rounds: int, calls: int,
               model_name: str) -> None:
    pairs = _call_pairs(before, optims, model_name)
    rng = random.Random(0)
    times = {name: ([], []) for name in pairs}
    fused.load_kernel, load = _no_kernel, fused.load_kernel
    try:
        for _ in range(rounds):
            names = list(pairs)
            rng.shuffle(names)
            for name in names:
                for side in rng.sample([0, 1], 2):
                    call = pairs[name][side]
                    call()
                    start = time.thread_time_ns()
                    for _ in range(calls):
                        call()
                    times[name][side].append((time.thread_time_ns() - start) / calls / 1e3)
    finally:
        fused.load_kernel = load
    print(f"| call (pure PyTorch, {model_name} weights) | before µs | after µs | after / before |")
    print("|---|---:|---:|---:|")
    for name, (old, new) in times.items():
        ratio = statistics.median(b / a for a, b in zip(old, new))
        print(f"| {name} | {statistics.median(old):.1f} | {statistics.median(new):.1f} | "
              f"{ratio:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="0b40186", help="git revision of the 'before' rows")
    parser.add_argument("--optims", default="sgd,adam,adamw")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="seed", choices=sorted(MODELS),
                        help="bench_penalty's workload (default: the seed MLP)")
    parser.add_argument("--calls", type=int, default=0,
                        help="time the calls alone, this many per round (thread CPU time)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    before = load_penalties(args.before)
    if args.calls:
        print(f"torch {torch.__version__}, {args.threads} thread(s), before = {args.before}, "
              f"{args.rounds} rounds of {args.calls} calls, load {os.getloadavg()[0]:.1f}\n")
        time_calls(before, args.optims.split(","), args.rounds, args.calls, args.model)
        return 0
    table = variants(before)
    columns = {}
    for optim in args.optims.split(","):
        label, make_optimizer = OPTIMIZERS[optim]
        torch.manual_seed(0)
        work = MODELS[args.model](False)
        steps = {name: factory(copy.deepcopy(work.model), make_optimizer, work)
                 for name, factory in table.items()}
        load = os.getloadavg()[0]
        times = interleave(steps, work, args.rounds, random.Random(0))
        columns[optim] = (overheads(times), statistics.median(times["none"]))
        print(f"{args.model} · {label} · {args.rounds} rounds · load {load:.1f} → "
              f"{os.getloadavg()[0]:.1f}", flush=True)
    print(f"\ntorch {torch.__version__}, {args.threads} thread(s), before = {args.before}\n")
    print("| variant (overhead vs none) | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    print("| `none` ms/step | " + " | ".join(f"{1e3 * t:.2f}" for _, t in columns.values())
          + " |")
    for name in table:
        if name != "none":
            print(f"| {name} | " + " | ".join(f"{stats[name][0]:+.1f}%"
                                               for stats, _ in columns.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
