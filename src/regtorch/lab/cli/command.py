"""The ``regtorch`` command: list the presets, run one study or all, sweep λ, redraw reports.

Usage::

    regtorch list                                   # every preset and what it shows
    regtorch run NAME|FILE [--seeds N] [--epochs N] [--out DIR] [--fresh] [--threads N]
                 [--memory SIZE] [--checkpoint-every SECONDS]
    regtorch demo [--seeds N] [--epochs N] [--out DIR] [--jobs N] [--fresh] [--memory SIZE]
                  [--checkpoint-every SECONDS]
    regtorch sweep NAME|FILE --penalty l1|l2|elasticnet|group|channels
                   [--lambdas a:b:n | v1,v2,...] [--apply gradient|prox] [--l1-ratio R]
                   [--groups rows|columns] [--seeds N] [--epochs N] [--out DIR] [--fresh]
                   [--threads N] [--memory SIZE] [--checkpoint-every SECONDS]
    regtorch report DIR                             # redraw the reports from the files
    regtorch --version

``NAME`` is a preset (``regtorch list``); ``FILE`` is a study written in TOML with the vocabulary
of :mod:`regtorch.lab.study` (a ``.toml`` path, or any existing file). ``--seeds`` and
``--epochs`` override the study's own; ``--memory`` bounds what a stacked group holds at once
(:mod:`regtorch.lab.train.memory`). Each study writes, under ``DIR/<study>/`` (``DIR`` is
``runs`` by default), atomically (:mod:`regtorch.lab.present.rundir`):

* ``config.json``: the study in the file vocabulary (``Study.to_dict()``, with the seeds and
  epochs actually run; without its ``"run"`` key it parses back with ``parse_study``) and, under
  ``"run"``, the ``torch`` and ``regtorch`` versions, the training ``groups`` and the ``created``
  time (UTC, ISO 8601) of the first start;
* ``metrics.jsonl``: one record per member (variant × λ × seed) per epoch, epoch 0 being before
  training (see :mod:`regtorch.lab.train.records`);
* ``summary.json``: :func:`regtorch.lab.analysis.summary.summarize` of the run;
* ``report.html`` and its plots as PNG files (:mod:`regtorch.lab.present.report`); ``demo`` adds
  ``DIR/index.html`` over every study;
* ``checkpoints/``: the training state that lets an interrupted run continue
  (:mod:`regtorch.lab.train.checkpoints`).

It then prints the comparison table, each variant's verdict and the summary's notes on stdout;
progress goes to stderr.

**Sweeps** (:mod:`regtorch.lab.analysis.sweep`) write ``DIR/<study>-sweep-<penalty>/``, with
``-prox`` or ``-gradient`` added when ``--apply`` is not the penalty's default, ``-r<R>`` for an
``--l1-ratio`` other than 0.5 and ``-cols`` for ``--groups columns``
(:func:`~regtorch.lab.analysis.sweep.sweep_name`), so that variants of a sweep sit side by side:
``config.json`` (the study, plus the sweep's arguments under ``"sweep"``), ``metrics.jsonl`` (the
path's members), ``search.jsonl`` (the λ_max search's, when the grid was searched), ``summary.json``
(the path, ``best_lambda``, ``lambda_1se``) and the report. ``--apply`` defaults to ``prox`` for
the sparse penalties (l1, elasticnet, group: exact zeros, so the sparsity path means something)
and to ``gradient`` for l2. ``--penalty channels`` is a group lasso over the channel groups
traced from the model (:func:`regtorch.channel_groups` on training rows; a model whose trace
refuses exits 2 naming the node); every member of the path is then compacted
(:func:`regtorch.compact`) and the summary's ``"pruning"`` key gives, per λ, the channels exactly
zero and kept, the parameters, MACs and measured latency of the compact model
(:mod:`regtorch.lab.analysis.pruning`), printed after the path.

**Interrupted runs continue.** Run the same command again (same arguments, same ``--out``):
finished groups are not trained again, the group in progress continues from its last checkpoint
(``--checkpoint-every`` seconds, 10 by default), and the results are identical to an
uninterrupted run's. ``--fresh`` starts over; a directory holding another configuration is
refused, with the first difference named.

Exit status: 0 done; 1 the results could not be written (the reason on stderr); 2 bad input — an
unknown preset or option, an unreadable or malformed TOML file, an invalid study (unknown penalty,
negative strength...), ``--seeds 0``, a directory of another configuration, nothing to report,
or the ``lab`` extra not installed — told in at most two short lines on stderr, never a
traceback; 130 interrupted (Ctrl-C). Anything else is a bug and raises.

This module is the command line itself (argparse, exit statuses, one-line errors); what each
command does is :mod:`regtorch.lab.cli.workflow`, and ``demo``'s process pool is
:mod:`regtorch.lab.cli.parallel`. The ``lab`` extra is checked (:func:`missing_extra`) before the
workflow, which needs it, is imported: a missing package is one line, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from typing import NoReturn

import regtorch
from regtorch.lab.cli._process import available_cpus, keep_freed_memory
from regtorch.lab.present.rundir import CHECKPOINT_SECONDS, ConfigMismatchError
from regtorch.lab.study.spec import StudyError

__all__ = ["DEFAULT_OUT", "DEMO_SEEDS", "LAB_EXTRA", "MAX_ERROR_LINE", "UsageError", "WriteError",
           "main", "missing_extra"]

LAB_EXTRA = {"rich": "rich", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
"""The ``lab`` extra: importable module name → the package that provides it."""

DEFAULT_OUT = "runs"
DEMO_SEEDS = 5
MAX_ERROR_LINE = 200
"""Characters of an error line (``regtorch: <message>``), the study file's path aside: every
message is short by construction (a value is quoted by :func:`regtorch.lab.study.spec.shown`),
never cut, so its advice is always there."""


class UsageError(Exception):
    """Bad input: ``regtorch: <message>`` on stderr, exit status 2."""


class WriteError(Exception):
    """The results could not be written: ``regtorch: <message>`` on stderr, exit status 1."""


class _Exit(Exception):  # noqa: N818 -- a control-flow signal, not an error
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and returns instead of exiting."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"regtorch: error: {message} (see '{self.prog} --help')\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


def missing_extra() -> list[str]:
    """The packages of the ``lab`` extra that cannot be imported (none when it is installed)."""
    return [package for module, package in LAB_EXTRA.items()
            if importlib.util.find_spec(module) is None]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``regtorch`` command with ``argv`` (default ``sys.argv[1:]``).

    Returns:
        the exit status (see the module docstring).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(_attach_values(argv))
    except _Exit as done:  # --help, or a usage error already reported
        return done.status
    missing = missing_extra()
    if missing:
        _fail(f'the lab needs the "lab" extra (missing: {", ".join(missing)}); '
              f'pip install "regtorch[lab]"')
        return 2

    if args.command == "list":  # without the workflow: listing the presets imports no torch
        _list_presets()
        return 0
    # Imported only now: the workflow needs the "lab" extra, just checked.
    from regtorch.lab.cli import workflow

    keep_freed_memory()  # this process is ours: no page faults for memory freed and reused
    try:
        workflow.COMMANDS[args.command](args)
    except (UsageError, StudyError, ConfigMismatchError) as error:
        _fail(str(error))
        return 2
    except WriteError as error:
        _fail(str(error))
        return 1
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    return 0


def _parser() -> _Parser:
    parser = _Parser(prog="regtorch", description="The regtorch lab: regularization experiments, "
                     "reproduced offline and averaged over seeds.")
    parser.add_argument("--version", action="version", version=f"regtorch {regtorch.__version__}",
                        help="print regtorch's version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    commands.add_parser("list", help="list the preset studies")

    def add_common(sub: argparse.ArgumentParser, seeds_default: int | None,
                   out_help: str = f"results go to DIR/<study>/ (default: {DEFAULT_OUT})"
                   ) -> None:
        default = "the study's own" if seeds_default is None else seeds_default
        sub.add_argument("--seeds", type=int, default=seeds_default, metavar="N",
                         help=f"init seeds per variant (default: {default})")
        sub.add_argument("--epochs", type=int, metavar="N",
                         help="training epochs (default: the study's own)")
        sub.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=out_help)
        sub.add_argument("--fresh", action="store_true",
                         help="start over: discard what an earlier run left in the directory "
                         "(default: continue it)")
        sub.add_argument("--memory", metavar="SIZE", help="memory budget of the members "
                         "trained stacked at once, e.g. 512M or 2G; a larger group trains in "
                         "chunks (default: a quarter of the RAM, at most 2G)")
        sub.add_argument("--checkpoint-every", type=float, default=CHECKPOINT_SECONDS,
                         metavar="SECONDS", help="save the training state this often "
                         f"(default: {CHECKPOINT_SECONDS:g}; 0: every epoch)")

    def add_threads(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--threads", type=int, metavar="N", help="torch threads to train with "
                         "(default: 1 for the small models of the lab, where a second thread "
                         "costs more than it gives; every CPU for a large one)")

    run = commands.add_parser("run", help="run one study: a preset name or a TOML file")
    run.add_argument("study", metavar="NAME|FILE", help="a preset (see `regtorch list`) or a "
                     "study file (.toml)")
    add_common(run, None)
    add_threads(run)
    demo = commands.add_parser("demo", help="run every preset")
    add_common(demo, DEMO_SEEDS)
    demo.add_argument("--jobs", type=int, default=min(2, available_cpus()), metavar="N",
                      help="studies trained at once, in separate processes sharing the CPUs "
                      "(default: 2, or 1 on one CPU)")

    sweep = commands.add_parser("sweep", help="train one penalty over a grid of λ × seeds and "
                                "choose λ on validation")
    sweep.add_argument("study", metavar="NAME|FILE", help="a preset or a study file: its data, "
                       "model and training recipe")
    sweep.add_argument("--penalty", required=True,
                       choices=("l1", "l2", "elasticnet", "group", "channels"),
                       help="the penalty whose strength λ is swept (required)")
    sweep.add_argument("--lambdas", metavar="a:b:n|v1,v2,...", help="the grid: n values "
                       "log-spaced from a to b, or a list (default: searched, λ_max down to "
                       "λ_max/100 in 16 points)")
    sweep.add_argument("--apply", choices=("gradient", "prox"), help="how the penalty acts "
                       "(default: prox for l1, elasticnet and group; gradient for l2)")
    sweep.add_argument("--l1-ratio", type=float, metavar="R", help="elasticnet: l1 = R·λ, "
                       "l2 = (1−R)·λ (default: 0.5)")
    sweep.add_argument("--groups", choices=("rows", "columns"), help="group: the groups of "
                       "each weight matrix (default: rows)")
    add_threads(sweep)
    add_common(sweep, None, out_help="results go to DIR/<study>-sweep-<penalty>[-<apply>]"
               "[-r<R>][-cols]/: -<apply> when --apply is not the penalty's default, -r<R> for "
               "--l1-ratio other than 0.5, -cols for --groups columns (default DIR: "
               f"{DEFAULT_OUT})")

    report = commands.add_parser("report", help="redraw the reports of earlier runs from their "
                                 "files, without training")
    report.add_argument("directory", metavar="DIR", help="a run directory (DIR/<study>) or the "
                        "--out directory holding several")
    return parser


_VALUE_OPTIONS = ("--lambdas",)  # values that may start with "-": "--lambdas -1,2"


def _attach_values(argv: list[str]) -> list[str]:
    """``--lambdas -1,2`` as ``--lambdas=-1,2``: argparse takes a value starting with ``-`` for
    an option unless it is one plain negative number, so a negative λ would be a usage error
    about the option instead of the study's error about the value."""
    joined: list[str] = []
    values = iter(argv)
    for arg in values:
        if arg in _VALUE_OPTIONS:
            value = next(values, None)
            if value is None or value.startswith("--"):  # no value: argparse says so
                joined.extend([arg] if value is None else [arg, value])
            else:
                joined.append(f"{arg}={value}")
        else:
            joined.append(arg)
    return joined


def _list_presets() -> None:
    """``regtorch list``: one line per preset, its name and what it shows."""
    from regtorch.lab.present.console import make_console, print_presets
    from regtorch.lab.study.presets import PRESETS, preset_names

    print_presets(make_console(sys.stdout),
                  [(name, PRESETS[name].get("description", "")) for name in preset_names()])


def _fail(message: str) -> None:
    """One line on stderr: ``regtorch: <message>`` (whitespace folded, nothing cut)."""
    sys.stderr.write(f"regtorch: {' '.join(message.split())}\n")
