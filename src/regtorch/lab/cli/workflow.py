"""What each ``regtorch`` command does: load a study, train it, summarize it, write its run
directory and report, print its table (see :mod:`regtorch.lab.cli.command` for the command line).

:func:`train_and_write` and :func:`sweep_and_write` are the whole workflow of ``run`` and
``sweep`` for one study; ``demo`` runs several, in parallel processes
(:mod:`regtorch.lab.cli.parallel`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.console import Console

import regtorch
from regtorch.lab.analysis.pruning import with_pruning
from regtorch.lab.analysis.summary import summarize
from regtorch.lab.analysis.sweep import (
    SweepSpec,
    default_apply,
    find_lambda_max,
    geometric_grid,
    parse_lambdas,
    path_study,
    summarize_sweep,
    sweep_name,
)
from regtorch.lab.caught import caught_warnings
from regtorch.lab.cli import parallel
from regtorch.lab.cli.command import UsageError, WriteError
from regtorch.lab.cli.threads import default_threads
from regtorch.lab.present import rundir
from regtorch.lab.present.console import (
    make_console,
    print_presets,
    print_study,
    print_sweep,
    print_written,
    progress,
)
from regtorch.lab.present.pruning import print_pruning
from regtorch.lab.present.tables import choice_rows, path_rows, table_rows
from regtorch.lab.study import PRESETS, Study, parse_study, preset, preset_names, read_toml
from regtorch.lab.study.presets import demo_names
from regtorch.lab.study.spec import shown
from regtorch.lab.train import Checkpoints, StudyResult, check_study, run_study
from regtorch.lab.train.memory import parse_memory

__all__ = ["COMMANDS", "load_study", "sweep_and_write", "train_and_write"]

# -- the commands ------------------------------------------------------------------------------
def list_command(args: argparse.Namespace) -> None:
    print_presets(make_console(sys.stdout),
                  [(name, PRESETS[name].get("description", "")) for name in preset_names()])


def run_command(args: argparse.Namespace) -> None:
    study = load_study(args.study).with_overrides(seeds=args.seeds, epochs=args.epochs)
    options = _options(args)  # a bad option fails before the output directory is made
    out = _output_dir(args.out)
    _run_studies([study], out, options=options, threads=_threads(args))
    _update_index(out)


def demo_command(args: argparse.Namespace) -> None:
    if args.jobs < 1:
        raise UsageError(f"--jobs: must be a positive integer, got {args.jobs}")
    # Every study is validated before the first one trains: a bad option fails at once.
    studies = [preset(name).with_overrides(seeds=args.seeds, epochs=args.epochs)
               for name in demo_names()]
    out = _output_dir(args.out)
    options = _options(args)
    if not args.fresh:  # a directory of another configuration fails before any study trains
        for study in studies:
            rundir.check_config(out / study.name, study.to_dict())
    _run_studies(studies, out, jobs=args.jobs, options=options)
    _update_index(out)  # over every run in out


def sweep_command(args: argparse.Namespace) -> None:
    base = load_study(args.study).with_overrides(seeds=args.seeds, epochs=args.epochs)
    apply = args.apply or default_apply(args.penalty)
    spec = SweepSpec(args.penalty, apply, l1_ratio=args.l1_ratio, groups=args.groups,
                     lambdas=None if args.lambdas is None else parse_lambdas(args.lambdas))
    torch.set_num_threads(_threads(args) or default_threads(base))
    out = _output_dir(args.out)
    report = sweep_and_write(base, spec, out, **_options(args))
    _print_report(make_console(sys.stdout), report)
    _update_index(out)


def report_command(args: argparse.Namespace) -> None:
    from regtorch.lab.present.report import regenerate  # matplotlib: see _write_report

    stdout = make_console(sys.stdout)
    try:
        written = _writing(lambda: regenerate(Path(args.directory)))
    except rundir.ReportError as error:
        raise UsageError(str(error)) from None
    for path in written:
        stdout.print(f"wrote {path}")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "list": list_command, "run": run_command, "demo": demo_command, "sweep": sweep_command,
    "report": report_command}
"""The handler of each subcommand."""


# -- one study ---------------------------------------------------------------------------------
def load_study(ref: str) -> Study:
    """The study ``ref`` names: a preset, or else a TOML study file.

    Raises:
        UsageError: neither a preset nor a file.
        StudyError: the file cannot be read, is not TOML, or is not a valid study.
    """
    names = preset_names()
    if ref in names:
        return preset(ref)
    path = Path(ref)
    if path.suffix == ".toml" or _exists(path) or "/" in ref or os.sep in ref:
        return parse_study(read_toml(path), source=ref, root=path.parent)
    raise UsageError(f"unknown preset {shown(ref)} (`regtorch list` shows the presets; or give a "
                     f".toml study file)")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long for the file system: not a file
        return False


def train_and_write(study: Study, out: Path,
                    on_epoch: Callable[[int, int], None] | None = None, *, fresh: bool = False,
                    checkpoint_every: float | None = None, report: bool = True,
                    memory: int | None = None) -> dict[str, Any]:
    """Train one study (continuing an interrupted run in ``out/<study>``), write its files and
    (unless ``report`` is false: the caller draws it) its report; return what the console shows
    of it."""
    check_study(study)  # a bad study fails before its directory is made
    directory = out / study.name
    with _holding(directory):
        config, checkpoints = _prepare(directory, study.to_dict(), fresh, checkpoint_every)
        start = time.perf_counter()
        with caught_warnings() as warned:  # one line each in the summary, not printed raw
            result = run_study(study, on_epoch=on_epoch, checkpoints=checkpoints,
                               memory=memory)
        seconds = time.perf_counter() - start
        summary = with_pruning(summarize(result, warned), result)
        config["run"]["groups"] = result.groups
        files = _writing(lambda: rundir.write_results(directory, config, result.records,
                                                      summary))
        if report:
            _write_report(directory)
    members = sum(group["members"] for group in result.groups)
    title = (f"{study.name}: {_count(study.seeds, 'seed')} × "
             f"{_count(study.train.epochs, 'epoch')}, {_count(members, 'member')}, "
             f"{seconds:.1f} s")
    return {"title": title, "summary": summary, "directory": str(directory),
            "resumed": result.resumed, "files": [*files, rundir.REPORT]}


def sweep_and_write(base: Study, spec: SweepSpec, out: Path, *, fresh: bool = False,
                    checkpoint_every: float | None = None, memory: int | None = None
                    ) -> dict[str, Any]:
    """Search λ_max when no grid is given, train the path, write its files and report; return
    what the console shows of it (see :mod:`regtorch.lab.analysis.sweep`)."""
    check_study(path_study(base, spec, (1.0,)))  # a bad study fails before its directory is made
    directory = out / sweep_name(base, spec)
    with _holding(directory):
        config, checkpoints = _prepare(directory, {**base.to_dict(), "sweep": spec.to_dict()},
                                       fresh, checkpoint_every)
        stderr = make_console(sys.stderr)
        resumed: list[str] = []

        def train(study: Study, phase: str) -> StudyResult:
            with progress(stderr, f"{directory.name}: {phase}") as on_epoch:
                result = run_study(study, on_epoch=on_epoch,
                                   checkpoints=checkpoints.child(f"{phase}-"),
                                   memory=memory)
            resumed.extend(f"{phase}-{line}" for line in result.resumed)  # the file names
            return result

        start = time.perf_counter()
        search = None
        lambdas = spec.lambdas
        with caught_warnings() as warned:  # one line each in the summary, not printed raw
            if lambdas is None:
                search = find_lambda_max(base, spec, train)
                lambdas = geometric_grid(search.lambda_max)
            result = train(path_study(base, spec, lambdas), "path")
        seconds = time.perf_counter() - start
        summary = with_pruning(summarize_sweep(result, spec, base, search, warned), result)
        config["run"]["groups"] = result.groups
        files = _writing(lambda: rundir.write_results(
            directory, config, result.records, summary,
            search=None if search is None else search.records))
        _write_report(directory)
    members = sum(group["members"] for group in result.groups)
    title = (f"{directory.name}: {len(lambdas)} λ × {_count(base.seeds, 'seed')} × "
             f"{_count(base.train.epochs, 'epoch')}, {_count(members, 'member')}, "
             f"{seconds:.1f} s")
    return {"title": title, "summary": summary, "directory": str(directory),
            "resumed": resumed, "files": [*files, rundir.REPORT]}


@contextlib.contextmanager
def _holding(directory: Path) -> Iterator[None]:
    """Hold the run directory for this run (:func:`regtorch.lab.present.rundir.locked`) and
    remove the temporary files a killed earlier run left there."""
    with contextlib.ExitStack() as stack:
        try:
            _writing(lambda: stack.enter_context(rundir.locked(directory)), directory)
        except rundir.DirectoryBusyError as error:
            raise UsageError(str(error)) from None
        _writing(lambda: rundir.remove_stale_temporaries(directory), directory)
        yield


def _prepare(directory: Path, config: dict[str, Any], fresh: bool,
             checkpoint_every: float | None) -> tuple[dict[str, Any], Checkpoints]:
    """Refuse another configuration, clear with ``fresh``, write config.json: the run's
    configuration (the first start's ``"run"`` metadata when resuming) and its checkpoints."""
    config = {**config, "run": {
        "torch": str(torch.__version__), "regtorch": regtorch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    config = _writing(lambda: rundir.prepare_directory(directory, config, fresh=fresh),
                      directory)
    every = rundir.CHECKPOINT_SECONDS if checkpoint_every is None else checkpoint_every
    _check_checkpoints(rundir.checkpoint_directory(directory))
    return config, Checkpoints(rundir.checkpoint_directory(directory), every)


def _check_checkpoints(directory: Path) -> None:
    """Every checkpoint loads (as the engine loads it), or one line: which, and the way out.

    A checkpoint is written atomically, so only an outside hand (a copy cut short, a full disk
    under another tool) truncates one; loading each here (milliseconds for the lab's models)
    keeps torch's traceback out of the console.
    """
    for path in sorted(directory.glob("*.pt")):
        try:
            torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
        except Exception:  # whatever torch.load raises, the file is unusable
            raise UsageError(f"checkpoint unreadable: {path}; --fresh starts over") from None


# -- several studies ---------------------------------------------------------------------------
def _run_studies(studies: list[Study], out: Path, jobs: int = 1,
                 options: dict[str, Any] | None = None, threads: int | None = None) -> None:
    """Train and write ``studies``: one after the other with ``threads`` torch threads each
    (None: :func:`~regtorch.lab.cli.threads.default_threads`), or in ``jobs`` processes that
    share the CPUs."""
    options = options or {}
    stdout, stderr = make_console(sys.stdout), make_console(sys.stderr)
    start = time.perf_counter()
    workers = min(jobs, len(studies))
    if workers <= 1:
        for study in studies:
            torch.set_num_threads(threads or default_threads(study))
            with progress(stderr, study.name) as on_epoch:
                report = train_and_write(study, out, on_epoch, **options)
            _print_report(stdout, report)
    else:
        jobs_args = [(study, str(out), options) for study in studies]
        for report in parallel.run_in_processes(
                _train_in_worker, jobs_args, workers, [s.name for s in studies],
                costs=[parallel.work(s) for s in studies], stderr=stderr,
                on_done=lambda report: _write_report(Path(report["directory"]))):
            _print_report(stdout, report)
    if len(studies) > 1:
        stdout.print(f"{len(studies)} studies in {time.perf_counter() - start:.1f} s; results "
                     f"in {out}{os.sep}", style="bold")


def _train_in_worker(on_epoch: Callable[[int, int], None], study: Study, out: str,
                     options: dict[str, Any]) -> dict[str, Any]:
    """A worker's job: train and write one study; the parent draws its report."""
    return train_and_write(study, Path(out), on_epoch, report=False, **options)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """How results are kept and groups sized: ``fresh``, ``checkpoint_every``, ``memory``
    (validated)."""
    every = args.checkpoint_every
    if not every >= 0 or every == float("inf"):
        raise UsageError(f"--checkpoint-every: must be a number of seconds >= 0, got {every}")
    try:
        memory = None if args.memory is None else parse_memory(args.memory)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return {"fresh": args.fresh, "checkpoint_every": every, "memory": memory}


def _threads(args: argparse.Namespace) -> int | None:
    """``--threads`` (validated); None: chosen for the study's size."""
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads: must be a positive integer, got {args.threads}")
    return args.threads


def _output_dir(out: str) -> Path:
    """``--out``, checked: an unusable directory fails before any training. It is made when a
    run directory inside it is (a command refused for a bad option leaves nothing behind)."""
    directory = Path(out)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {'the directory' if existing == directory else existing}"
                         f" is not writable")
    return directory


# -- printing ----------------------------------------------------------------------------------
def _print_report(stdout: Console, report: dict[str, Any]) -> None:
    _print_resumed(make_console(sys.stderr), report)
    if report["summary"].get("kind") == "sweep":
        headers, rows = path_rows(report["summary"])
        print_sweep(stdout, report["title"], headers, rows, choice_rows(report["summary"]),
                    report["summary"])
    else:
        headers, rows = table_rows(report["summary"])
        print_study(stdout, report["title"], headers, rows, report["summary"])
    print_pruning(stdout, report["summary"])
    print_written(stdout, Path(report["directory"]), report["files"])


def _print_resumed(stderr: Console, report: dict[str, Any]) -> None:
    if report.get("resumed"):
        name = Path(report["directory"]).name
        stderr.print(f"regtorch: {name}: continued an earlier run "
                     f"({'; '.join(report['resumed'])})")


def _update_index(out: Path) -> None:
    """Keep ``out/index.html``, the overview of the runs in ``out``, current after one run."""
    from regtorch.lab.present.report import update_index  # matplotlib: see _write_report

    index = _writing(lambda: update_index(out), out / rundir.INDEX)
    if index is not None:
        print_written(make_console(sys.stdout), out, [index.name])


def _write_report(directory: Path) -> None:
    # Imported at the first report, not with this module: ``demo``'s workers never draw, so the
    # parent starts them before it loads matplotlib (~0.3 s), then loads it while they train.
    from regtorch.lab.present.report import write_report

    _writing(lambda: write_report(directory), directory / rundir.REPORT)


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
