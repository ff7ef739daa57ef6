"""The ``regtorch`` command: list the presets, run one study or all, sweep λ, redraw reports.

Usage::

    regtorch list                                   # every preset and what it shows
    regtorch run NAME|FILE [--seeds N] [--epochs N] [--out DIR] [--fresh]
    regtorch demo [--seeds N] [--epochs N] [--out DIR] [--jobs N] [--fresh]
    regtorch sweep NAME|FILE --penalty l1|l2|elasticnet|group [--lambdas a:b:n | v1,v2,...]
                   [--apply gradient|prox] [--l1-ratio R] [--groups rows|columns]
                   [--seeds N] [--epochs N] [--out DIR] [--fresh]
    regtorch report DIR                             # redraw the reports from the files

``NAME`` is a preset (``regtorch list``); ``FILE`` is a study written in TOML with the vocabulary
of :mod:`regtorch.lab.study` (a ``.toml`` path, or any existing file). ``--seeds`` and
``--epochs`` override the study's own. Each study writes, under ``DIR/<study>/`` (``DIR`` is
``runs`` by default), atomically (:mod:`regtorch.lab.output`):

* ``config.json``: the study in the file vocabulary (``Study.to_dict()``, with the seeds and
  epochs actually run; without its ``"run"`` key it parses back with ``parse_study``) and, under
  ``"run"``, the ``torch`` and ``regtorch`` versions, the training ``groups`` and the ``created``
  time (UTC, ISO 8601) of the first start;
* ``metrics.jsonl``: one record per member (variant × λ × seed) per epoch, epoch 0 being before
  training (see :mod:`regtorch.lab.engine`);
* ``summary.json``: :func:`regtorch.lab.summary.summarize` of the run;
* ``report.html`` and its plots as PNG files (:mod:`regtorch.lab.report`); ``demo`` adds
  ``DIR/index.html`` over every study;
* ``checkpoints/``: the training state that lets an interrupted run continue
  (:mod:`regtorch.lab.store`).

It then prints the comparison table, each variant's verdict and the summary's notes on stdout;
progress goes to stderr.

**Sweeps** (:mod:`regtorch.lab.sweep`) write ``DIR/<study>-sweep-<penalty>/``: ``config.json``
(the study, plus the sweep's arguments under ``"sweep"``), ``metrics.jsonl`` (the path's
members), ``search.jsonl`` (the λ_max search's, when the grid was searched), ``summary.json``
(the path, ``best_lambda``, ``lambda_1se``) and the report. ``--apply`` defaults to ``prox`` for
the sparse penalties (l1, elasticnet, group: exact zeros, so the sparsity path means something)
and to ``gradient`` for l2.

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

This module imports only the standard library: the ``lab`` extra is checked with
:func:`importlib.util.find_spec` before any module that needs it is imported.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    from rich.console import Console

    from regtorch.lab.engine import StudyResult
    from regtorch.lab.store import Checkpoints
    from regtorch.lab.study import Study
    from regtorch.lab.sweep import SweepSpec

CHECKPOINT_SECONDS = 10.0  # regtorch.lab.store.CHECKPOINT_SECONDS (that module imports torch)

__all__ = ["DEFAULT_OUT", "DEMO_SEEDS", "FILES", "LAB_EXTRA", "load_study", "main",
           "missing_extra", "sweep_and_write", "train_and_write"]

LAB_EXTRA = {"rich": "rich", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
"""The ``lab`` extra: importable module name → the package that provides it."""

DEFAULT_OUT = "runs"
DEMO_SEEDS = 5
FILES = ("config.json", "metrics.jsonl", "summary.json", "report.html")
_MAX_MESSAGE = 200  # characters of an error line; a study value's repr can be long


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
    try:
        args = _parser().parse_args(argv)
    except _Exit as done:  # --help, or a usage error already reported
        return done.status
    missing = missing_extra()
    if missing:
        _fail(f'the lab needs the "lab" extra (missing: {", ".join(missing)}); '
              f'pip install "regtorch[lab]"')
        return 2

    from regtorch.lab._memory import keep_freed_memory
    from regtorch.lab.store import ConfigMismatchError
    from regtorch.lab.study import StudyError

    keep_freed_memory()  # this process is ours: no page faults for memory freed and reused
    try:
        args.handler(args)
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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    listing = commands.add_parser("list", help="list the preset studies")
    listing.set_defaults(handler=_list)

    def add_common(sub: argparse.ArgumentParser, seeds_default: int | None) -> None:
        default = "the study's own" if seeds_default is None else seeds_default
        sub.add_argument("--seeds", type=int, default=seeds_default, metavar="N",
                         help=f"init seeds per variant (default: {default})")
        sub.add_argument("--epochs", type=int, metavar="N",
                         help="training epochs (default: the study's own)")
        sub.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                         help=f"results go to DIR/<study>/ (default: {DEFAULT_OUT})")
        sub.add_argument("--fresh", action="store_true",
                         help="start over: discard what an earlier run left in the directory "
                         "(default: continue it)")
        sub.add_argument("--checkpoint-every", type=float, default=CHECKPOINT_SECONDS,
                         metavar="SECONDS", help="save the training state this often "
                         f"(default: {CHECKPOINT_SECONDS:g}; 0: every epoch)")

    run = commands.add_parser("run", help="run one study: a preset name or a TOML file")
    run.add_argument("study", metavar="NAME|FILE", help="a preset (see `regtorch list`) or a "
                     "study file (.toml)")
    add_common(run, None)
    run.set_defaults(handler=_run)
    demo = commands.add_parser("demo", help="run every preset")
    add_common(demo, DEMO_SEEDS)
    demo.add_argument("--jobs", type=int, default=min(2, available_cpus()), metavar="N",
                      help="studies trained at once, in separate processes sharing the CPUs "
                      "(default: 2, or 1 on one CPU)")
    demo.set_defaults(handler=_demo)

    sweep = commands.add_parser("sweep", help="train one penalty over a grid of λ × seeds and "
                                "choose λ on validation")
    sweep.add_argument("study", metavar="NAME|FILE", help="a preset or a study file: its data, "
                       "model and training recipe")
    sweep.add_argument("--penalty", required=True, choices=("l1", "l2", "elasticnet", "group"))
    sweep.add_argument("--lambdas", metavar="a:b:n|v1,v2,...", help="the grid: n values "
                       "log-spaced from a to b, or a list (default: searched, λ_max down to "
                       "λ_max/100 in 16 points)")
    sweep.add_argument("--apply", choices=("gradient", "prox"), help="how the penalty acts "
                       "(default: prox for l1, elasticnet and group; gradient for l2)")
    sweep.add_argument("--l1-ratio", type=float, metavar="R", help="elasticnet: l1 = R·λ, "
                       "l2 = (1−R)·λ (default: 0.5)")
    sweep.add_argument("--groups", choices=("rows", "columns"), help="group: the groups of "
                       "each weight matrix (default: rows)")
    add_common(sweep, None)
    sweep.set_defaults(handler=_sweep)

    report = commands.add_parser("report", help="redraw the reports of earlier runs from their "
                                 "files, without training")
    report.add_argument("directory", metavar="DIR", help="a run directory (DIR/<study>) or the "
                        "--out directory holding several")
    report.set_defaults(handler=_report)
    return parser


# -- the commands ------------------------------------------------------------------------------
def _list(args: argparse.Namespace) -> None:
    from regtorch.lab.console import make_console, print_presets
    from regtorch.lab.presets import PRESETS, preset_names

    print_presets(make_console(sys.stdout),
                  [(name, PRESETS[name].get("description", "")) for name in preset_names()])


def _run(args: argparse.Namespace) -> None:
    study = load_study(args.study).with_overrides(seeds=args.seeds, epochs=args.epochs)
    _run_studies([study], _output_dir(args.out), options=_options(args))


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """How results are kept: ``fresh`` and ``checkpoint_every`` (validated)."""
    every = args.checkpoint_every
    if not every >= 0 or every == float("inf"):
        raise UsageError(f"--checkpoint-every: must be a number of seconds >= 0, got {every}")
    return {"fresh": args.fresh, "checkpoint_every": every}


def _demo(args: argparse.Namespace) -> None:
    from regtorch.lab.presets import preset, preset_names

    if args.jobs < 1:
        raise UsageError(f"--jobs: must be a positive integer, got {args.jobs}")
    # Every study is validated before the first one trains: a bad option fails at once.
    studies = [preset(name).with_overrides(seeds=args.seeds, epochs=args.epochs)
               for name in preset_names()]
    out = _output_dir(args.out)
    _run_studies(studies, out, jobs=args.jobs, options=_options(args))
    from regtorch.lab.console import make_console, print_written
    from regtorch.lab.report import write_index

    index = _writing(lambda: write_index(out, [out / study.name for study in studies]))
    print_written(make_console(sys.stdout), out, [index.name])


def load_study(ref: str) -> Study:
    """The study ``ref`` names: a preset, or else a TOML study file.

    Raises:
        UsageError: neither a preset nor a file, or the file cannot be read or parsed.
        StudyError: the file is TOML but not a valid study.
    """
    from regtorch.lab.presets import preset, preset_names
    from regtorch.lab.study import parse_study

    names = preset_names()
    if ref in names:
        return preset(ref)
    path = Path(ref)
    if path.suffix == ".toml" or path.exists() or "/" in ref or os.sep in ref:
        return parse_study(_read_toml(path), source=ref)
    raise UsageError(f"unknown preset {ref!r} (presets: {', '.join(names)}; or give a .toml "
                     f"study file)")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UsageError("reading a TOML study needs Python 3.11 or later (or pip install "
                             "tomli)") from None
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise UsageError(f"no such study file: {path}") from None
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: malformed TOML: {error}") from None


def _output_dir(out: str) -> Path:
    """``--out``, created now: an unusable directory fails before any training."""
    directory = Path(out)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {out}: cannot create the directory: "
                         f"{error.strerror or error}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: the directory is not writable")
    return directory


def _run_studies(studies: list[Study], out: Path, jobs: int = 1,
                 options: dict[str, Any] | None = None) -> None:
    from regtorch.lab.console import make_console, progress

    options = options or {}
    stdout, stderr = make_console(sys.stdout), make_console(sys.stderr)
    start = time.perf_counter()
    workers = min(jobs, len(studies))
    if workers <= 1:
        for study in studies:
            with progress(stderr, study.name) as on_epoch:
                report = train_and_write(study, out, on_epoch, **options)
            _print_report(stdout, report)
    else:
        for report in _run_in_processes(studies, out, workers, stderr, options):
            _print_report(stdout, report)
    if len(studies) > 1:
        stdout.print(f"{len(studies)} studies in {time.perf_counter() - start:.1f} s; results "
                     f"in {out}{os.sep}", style="bold")


def train_and_write(study: Study, out: Path,
                    on_epoch: Callable[[int, int], None] | None = None, *, fresh: bool = False,
                    checkpoint_every: float | None = None, report: bool = True
                    ) -> dict[str, Any]:
    """Train one study (continuing an interrupted run in ``out/<study>``), write its files and
    (unless ``report`` is false: the caller draws it) its report; return what the console shows
    of it."""
    from regtorch.lab.engine import check_study, run_study
    from regtorch.lab.summary import summarize

    check_study(study)  # a bad study fails before its directory is made
    directory = out / study.name
    config, checkpoints = _prepare(directory, study.to_dict(), fresh, checkpoint_every)
    start = time.perf_counter()
    result = run_study(study, on_epoch=on_epoch, checkpoints=checkpoints)
    seconds = time.perf_counter() - start
    summary = summarize(result)
    config["run"]["groups"] = result.groups
    _write_results(directory, {"config.json": config, "metrics.jsonl": result.records,
                               "summary.json": summary}, report=report)
    members = sum(group["members"] for group in result.groups)
    title = (f"{study.name}: {_count(study.seeds, 'seed')} × "
             f"{_count(study.train.epochs, 'epoch')}, {_count(members, 'member')}, "
             f"{seconds:.1f} s")
    return {"title": title, "summary": summary, "directory": str(directory),
            "resumed": result.resumed, "files": list(FILES)}


def _prepare(directory: Path, config: dict[str, Any], fresh: bool,
             checkpoint_every: float | None) -> tuple[dict[str, Any], Checkpoints]:
    """Refuse another configuration, clear with ``fresh``, write config.json: the run's
    configuration (the first start's ``"run"`` metadata when resuming) and its checkpoints."""
    import torch

    import regtorch
    from regtorch.lab.store import CHECKPOINT_SECONDS, Checkpoints, prepare_directory

    config = {**config, "run": {
        "torch": str(torch.__version__), "regtorch": regtorch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    config = _writing(lambda: prepare_directory(directory, config, fresh=fresh), directory)
    every = CHECKPOINT_SECONDS if checkpoint_every is None else checkpoint_every
    return config, Checkpoints(directory, every)


def _print_report(stdout: Console, report: dict[str, Any]) -> None:
    from regtorch.lab.console import make_console, print_study, print_written
    from regtorch.lab.summary import table_rows

    _print_resumed(make_console(sys.stderr), report)
    if report["summary"].get("kind") == "sweep":
        from regtorch.lab.console import print_sweep
        from regtorch.lab.sweep import choice_rows, path_rows

        headers, rows = path_rows(report["summary"])
        print_sweep(stdout, report["title"], headers, rows, choice_rows(report["summary"]),
                    report["summary"])
    else:
        headers, rows = table_rows(report["summary"])
        print_study(stdout, report["title"], headers, rows, report["summary"])
    print_written(stdout, Path(report["directory"]), report["files"])


def _print_resumed(stderr: Console, report: dict[str, Any]) -> None:
    if report.get("resumed"):
        name = Path(report["directory"]).name
        stderr.print(f"regtorch: {name}: continued an earlier run "
                     f"({'; '.join(report['resumed'])})")


# -- sweeps and reports ------------------------------------------------------------------------
def _sweep(args: argparse.Namespace) -> None:
    from regtorch.lab.console import make_console
    from regtorch.lab.sweep import SweepSpec, parse_lambdas

    base = load_study(args.study).with_overrides(seeds=args.seeds, epochs=args.epochs)
    apply = args.apply or ("gradient" if args.penalty == "l2" else "prox")
    spec = SweepSpec(args.penalty, apply, l1_ratio=args.l1_ratio, groups=args.groups,
                     lambdas=None if args.lambdas is None else parse_lambdas(args.lambdas))
    report = sweep_and_write(base, spec, _output_dir(args.out), **_options(args))
    _print_report(make_console(sys.stdout), report)


def sweep_and_write(base: Study, spec: SweepSpec, out: Path, *, fresh: bool = False,
                    checkpoint_every: float | None = None) -> dict[str, Any]:
    """Search λ_max when no grid is given, train the path, write its files and report; return
    what the console shows of it (see :mod:`regtorch.lab.sweep`)."""
    from regtorch.lab.console import make_console, progress
    from regtorch.lab.engine import check_study, run_study
    from regtorch.lab.sweep import (
        find_lambda_max,
        geometric_grid,
        path_study,
        summarize_sweep,
        sweep_name,
    )

    check_study(path_study(base, spec, (1.0,)))  # a bad study fails before its directory is made
    directory = out / sweep_name(base, spec)
    config, checkpoints = _prepare(directory, {**base.to_dict(), "sweep": spec.to_dict()},
                                   fresh, checkpoint_every)
    stderr = make_console(sys.stderr)
    resumed: list[str] = []

    def train(study: Study, phase: str) -> StudyResult:
        with progress(stderr, f"{directory.name}: {phase}") as on_epoch:
            result = run_study(study, on_epoch=on_epoch,
                               checkpoints=checkpoints.child(f"{phase}-"))
        resumed.extend(f"{phase} {line}" for line in result.resumed)
        return result

    start = time.perf_counter()
    search = None
    lambdas = spec.lambdas
    if lambdas is None:
        search = find_lambda_max(base, spec, train)
        lambdas = geometric_grid(search.lambda_max)
    result = train(path_study(base, spec, lambdas), "path")
    seconds = time.perf_counter() - start
    summary = summarize_sweep(result, spec, base, search)
    config["run"]["groups"] = result.groups
    files: dict[str, Any] = {"config.json": config, "metrics.jsonl": result.records}
    if search is not None:
        files["search.jsonl"] = search.records
    files["summary.json"] = summary
    _write_results(directory, files)
    members = sum(group["members"] for group in result.groups)
    title = (f"{directory.name}: {len(lambdas)} λ × {_count(base.seeds, 'seed')} × "
             f"{_count(base.train.epochs, 'epoch')}, {_count(members, 'member')}, "
             f"{seconds:.1f} s")
    return {"title": title, "summary": summary, "directory": str(directory),
            "resumed": resumed, "files": [*files, "report.html"]}


def _report(args: argparse.Namespace) -> None:
    from regtorch.lab.console import make_console
    from regtorch.lab.report import ReportError, regenerate

    stdout = make_console(sys.stdout)
    try:
        written = _writing(lambda: regenerate(Path(args.directory)))
    except ReportError as error:
        raise UsageError(str(error)) from None
    for path in written:
        stdout.print(f"wrote {path}")


# -- several studies at once -------------------------------------------------------------------
def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _run_in_processes(studies: list[Study], out: Path, workers: int, stderr: Console,
                      options: dict[str, Any]) -> list[dict[str, Any]]:
    """Train ``studies`` in ``workers`` processes, each with its share of the CPUs as torch
    threads; return their reports in the given order (a worker's error is raised here).

    Small models use two cores poorly from one process (their ops are too short to split), so
    two studies side by side finish sooner than one after the other with two threads each.
    On Ctrl-C the workers are terminated; a worker stopped mid-write removes its temporary file
    (``SIGTERM`` unwinds through :func:`regtorch.lab.output.atomic_writer`).
    """
    import multiprocessing

    from regtorch.lab.console import study_progress

    threads = max(1, available_cpus() // workers)
    # fork: the workers inherit the imported modules (spawn imports torch again in each, ~1.5 s).
    # A forked child may not use an OpenMP pool its parent had started, so fork only workers
    # that run single-threaded; otherwise spawn.
    method = "fork" if sys.platform.startswith("linux") and threads == 1 else "spawn"
    context = multiprocessing.get_context(method)
    updates = context.Queue()
    pool = context.Pool(workers, initializer=_worker_start, initargs=(updates, threads))
    try:
        # Longest first, so that no worker is left with a long study at the end.
        order = sorted(range(len(studies)), key=lambda i: -_work(studies[i]))
        started = {i: pool.apply_async(_worker_job, (i, studies[i], str(out), options))
                   for i in order}
        jobs = [started[i] for i in range(len(studies))]
        drawn: set[int] = set()
        with study_progress(stderr, [study.name for study in studies]) as update:
            while len(drawn) < len(jobs):
                _drain(updates, update, timeout=0.1)
                # This process draws the reports, as the studies finish: it is otherwise idle,
                # and the worker left training the longest study is not also left drawing.
                for i, job in enumerate(jobs):
                    if i not in drawn and job.ready():
                        drawn.add(i)
                        _write_report(Path(job.get()["directory"]))
            _drain(updates, update, timeout=0.0)
        reports = [job.get() for job in jobs]
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    return reports


def _work(study: Study) -> float:
    """A rough cost: member-epochs × examples seen per epoch (training + evaluation) × model
    size (inputs times the widest layer, a proxy for the parameter count)."""
    members = sum(len(v.strengths) for v in study.variants) * study.seeds
    data = study.data
    examples = 1797 if data.kind == "digits" else data.train + data.val + data.test
    widths = [64 if data.kind == "digits" else data.features, *study.model.hidden, 10]
    size = sum(a * b for a, b in itertools.pairwise(widths))
    return members * study.train.epochs * examples * size


def _drain(updates: Any, update: Callable[[int, int, int], None], timeout: float) -> None:
    """Apply every progress message waiting in ``updates`` (waiting up to ``timeout`` s)."""
    import queue

    try:
        message = updates.get(timeout=timeout) if timeout else updates.get_nowait()
        while True:
            update(*message)
            message = updates.get_nowait()
    except queue.Empty:
        return


_UPDATES: Any = None  # in a worker: the queue of (study index, member-epochs done, total)


def _worker_start(updates: Any, threads: int) -> None:
    import signal

    import torch

    from regtorch.lab._memory import keep_freed_memory

    global _UPDATES
    _UPDATES = updates
    torch.set_num_threads(threads)
    keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, _exit_on_term)


def _exit_on_term(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through atomic_writer: no temporary file left


def _worker_job(index: int, study: Study, out: str, options: dict[str, Any]
                ) -> dict[str, Any]:
    def on_epoch(done: int, total: int) -> None:
        _UPDATES.put((index, done, total))

    return train_and_write(study, Path(out), on_epoch, report=False, **options)


def _write_results(directory: Path, files: dict[str, Any], report: bool = True) -> None:
    """Write each file (``.jsonl``: the rows of a list; else JSON), then the report."""
    from regtorch.lab.output import write_json, write_jsonl

    for name, content in files.items():
        write = write_jsonl if name.endswith(".jsonl") else write_json
        _writing(lambda: write(directory / name, content), directory / name)  # noqa: B023
    if report:
        _write_report(directory)


def _write_report(directory: Path) -> None:
    from regtorch.lab.report import write_report

    _writing(lambda: write_report(directory), directory / "report.html")


_T = TypeVar("_T")


def _writing(action: Callable[[], _T], path: Path | None = None) -> _T:
    """``action()``, its ``OSError`` turned into a :class:`WriteError` naming ``path``."""
    try:
        return action()
    except OSError as error:
        where = path if path is not None else (error.filename or "the results")
        raise WriteError(f"cannot write {where}: {error.strerror or error}") from None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fail(message: str) -> None:
    """One line on stderr: ``regtorch: <message>``, shortened if a value made it long."""
    line = " ".join(message.split())
    if len(line) > _MAX_MESSAGE:
        line = line[:_MAX_MESSAGE - 3] + "..."
    sys.stderr.write(f"regtorch: {line}\n")
