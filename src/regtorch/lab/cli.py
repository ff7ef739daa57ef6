"""The ``regtorch`` command: list the presets, run one study, or run them all.

Usage::

    regtorch list                                   # every preset and what it shows
    regtorch run NAME|FILE [--seeds N] [--epochs N] [--out DIR]
    regtorch demo [--seeds N] [--epochs N] [--out DIR]     # every preset, 5 seeds by default

``NAME`` is a preset (``regtorch list``); ``FILE`` is a study written in TOML with the vocabulary
of :mod:`regtorch.lab.study` (a ``.toml`` path, or any existing file). ``--seeds`` and
``--epochs`` override the study's own. Each study writes, under ``DIR/<study>/`` (``DIR`` is
``runs`` by default), atomically (:mod:`regtorch.lab.output`):

* ``config.json``: the study in the file vocabulary (``Study.to_dict()``, with the seeds and
  epochs actually run; without its ``"run"`` key it parses back with ``parse_study``) and, under
  ``"run"``, the ``torch`` and ``regtorch`` versions, the training ``groups`` and the ``created``
  time (UTC, ISO 8601);
* ``metrics.jsonl``: one record per member (variant × λ × seed) per epoch, epoch 0 being before
  training (see :mod:`regtorch.lab.engine`);
* ``summary.json``: :func:`regtorch.lab.summary.summarize` of the run.

It then prints the comparison table, each variant's verdict and the summary's notes on stdout;
progress goes to stderr.

Exit status: 0 done; 1 the results could not be written (the reason on stderr); 2 bad input — an
unknown preset or option, an unreadable or malformed TOML file, an invalid study (unknown penalty,
negative strength...), ``--seeds 0``, or the ``lab`` extra not installed — told in at most two short
lines on stderr, never a traceback; 130 interrupted (Ctrl-C). Anything else is a bug and raises.

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
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from rich.console import Console

    from regtorch.lab.engine import StudyResult
    from regtorch.lab.study import Study

__all__ = ["DEFAULT_OUT", "DEMO_SEEDS", "FILES", "LAB_EXTRA", "main", "missing_extra"]

LAB_EXTRA = {"rich": "rich", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
"""The ``lab`` extra: importable module name → the package that provides it."""

DEFAULT_OUT = "runs"
DEMO_SEEDS = 5
FILES = ("config.json", "metrics.jsonl", "summary.json")
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
    from regtorch.lab.study import StudyError

    keep_freed_memory()  # this process is ours: no page faults for memory freed and reused
    try:
        args.handler(args)
    except (UsageError, StudyError) as error:
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
    return parser


# -- the commands ------------------------------------------------------------------------------
def _list(args: argparse.Namespace) -> None:
    from regtorch.lab.console import make_console, print_presets
    from regtorch.lab.presets import PRESETS, preset_names

    print_presets(make_console(sys.stdout),
                  [(name, PRESETS[name].get("description", "")) for name in preset_names()])


def _run(args: argparse.Namespace) -> None:
    study = load_study(args.study).with_overrides(seeds=args.seeds, epochs=args.epochs)
    _run_studies([study], _output_dir(args.out))


def _demo(args: argparse.Namespace) -> None:
    from regtorch.lab.presets import preset, preset_names

    if args.jobs < 1:
        raise UsageError(f"--jobs: must be a positive integer, got {args.jobs}")
    # Every study is validated before the first one trains: a bad option fails at once.
    studies = [preset(name).with_overrides(seeds=args.seeds, epochs=args.epochs)
               for name in preset_names()]
    _run_studies(studies, _output_dir(args.out), jobs=args.jobs)


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


def _run_studies(studies: list[Study], out: Path, jobs: int = 1) -> None:
    from regtorch.lab.console import make_console, progress

    stdout, stderr = make_console(sys.stdout), make_console(sys.stderr)
    start = time.perf_counter()
    workers = min(jobs, len(studies))
    if workers <= 1:
        for study in studies:
            with progress(stderr, study.name) as on_epoch:
                report = train_and_write(study, out, on_epoch)
            _print_report(stdout, report)
    else:
        for report in _run_in_processes(studies, out, workers, stderr):
            _print_report(stdout, report)
    if len(studies) > 1:
        stdout.print(f"{len(studies)} studies in {time.perf_counter() - start:.1f} s; results "
                     f"in {out}{os.sep}", style="bold")


def train_and_write(study: Study, out: Path,
                    on_epoch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train one study and write its three files; return what the console shows of it."""
    from regtorch.lab.engine import run_study
    from regtorch.lab.summary import summarize

    start = time.perf_counter()
    result = run_study(study, on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    summary = summarize(result)
    directory = out / study.name
    _write_results(directory, result, summary)
    members = sum(group["members"] for group in result.groups)
    title = (f"{study.name}: {_count(study.seeds, 'seed')} × "
             f"{_count(study.train.epochs, 'epoch')}, {_count(members, 'member')}, "
             f"{seconds:.1f} s")
    return {"title": title, "summary": summary, "directory": str(directory)}


def _print_report(stdout: Console, report: dict[str, Any]) -> None:
    from regtorch.lab.console import print_study, print_written
    from regtorch.lab.summary import table_rows

    headers, rows = table_rows(report["summary"])
    print_study(stdout, report["title"], headers, rows, report["summary"])
    print_written(stdout, Path(report["directory"]), FILES)


# -- several studies at once -------------------------------------------------------------------
def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _run_in_processes(studies: list[Study], out: Path, workers: int,
                      stderr: Console) -> list[dict[str, Any]]:
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
        started = {i: pool.apply_async(_worker_job, (i, studies[i], str(out))) for i in order}
        jobs = [started[i] for i in range(len(studies))]
        with study_progress(stderr, [study.name for study in studies]) as update:
            while not all(job.ready() for job in jobs):
                _drain(updates, update, timeout=0.1)
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


def _worker_job(index: int, study: Study, out: str) -> dict[str, Any]:
    def on_epoch(done: int, total: int) -> None:
        _UPDATES.put((index, done, total))

    return train_and_write(study, Path(out), on_epoch)


def _write_results(directory: Path, result: StudyResult, summary: dict[str, Any]) -> None:
    from regtorch.lab.output import write_json, write_jsonl

    path = directory
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "config.json"
        write_json(path, config_of(result))
        path = directory / "metrics.jsonl"
        write_jsonl(path, result.records)
        path = directory / "summary.json"
        write_json(path, summary)
    except OSError as error:
        raise WriteError(f"cannot write {path}: {error.strerror or error}") from None


def config_of(result: StudyResult) -> dict[str, Any]:
    """``config.json``: the study as a file (``Study.to_dict()``) and how this run was made."""
    import torch

    import regtorch

    config = result.study.to_dict()  # seeds and epochs included, as run
    config["run"] = {"torch": str(torch.__version__), "regtorch": regtorch.__version__,
                     "groups": result.groups,
                     "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return config


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fail(message: str) -> None:
    """One line on stderr: ``regtorch: <message>``, shortened if a value made it long."""
    line = " ".join(message.split())
    if len(line) > _MAX_MESSAGE:
        line = line[:_MAX_MESSAGE - 3] + "..."
    sys.stderr.write(f"regtorch: {line}\n")
