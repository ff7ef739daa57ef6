"""The run directory: one owner of its files, their names, how they are written and read.

A run directory (``DIR/<study>/``, or ``DIR/<study>-sweep-<penalty>/`` for a sweep) holds:

* ``config.json`` (:data:`CONFIG`), written before any training: the study in the file vocabulary
  and, under ``"run"``, how the run was made (versions, training groups, first start time);
* ``metrics.jsonl`` (:data:`METRICS`): one :class:`~regtorch.lab.schema.Record` per line;
* ``search.jsonl`` (:data:`SEARCH`, sweeps whose grid was searched): the λ_max search's records;
* ``summary.json`` (:data:`SUMMARY`): a :class:`~regtorch.lab.schema.StudySummary` or
  :class:`~regtorch.lab.schema.SweepSummary`;
* ``report.html`` (:data:`REPORT`) and its PNG plots (:mod:`regtorch.lab.present.report`);
* ``checkpoints/`` (:func:`checkpoint_directory`): the training state that lets an interrupted run
  continue (:class:`regtorch.lab.train.checkpoints.Checkpoints`).

Run again with the same configuration, training skips the finished groups and continues the one in
progress from its last saved epoch. A directory made with another configuration is refused
(:class:`ConfigMismatchError`) rather than mixed in; ``fresh=True`` clears it first. Every file is
written atomically (:mod:`regtorch.lab.atomic`). :func:`load_run` reads a directory back for the
reports, with an error naming the file when one is missing or malformed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regtorch.lab.atomic import write_json, write_jsonl
from regtorch.lab.schema import Record, StudySummary, SweepSummary

try:
    import fcntl
except ImportError:  # not POSIX: no lock (two runs into one directory are not detected)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CHECKPOINT_SECONDS",
    "CONFIG",
    "INDEX",
    "METRICS",
    "REPORT",
    "RESULT_FILES",
    "SEARCH",
    "SUMMARY",
    "ConfigMismatchError",
    "DirectoryBusyError",
    "ReportError",
    "Run",
    "check_config",
    "checkpoint_directory",
    "first_difference",
    "load_run",
    "locked",
    "prepare_directory",
    "read_records",
    "remove_stale_temporaries",
    "write_results",
]

CHECKPOINT_SECONDS = 10.0
"""Default time between checkpoints of a group in progress: at most this much training is redone
after an interruption (a save costs milliseconds for the lab's models)."""

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SEARCH = "search.jsonl"
SUMMARY = "summary.json"
REPORT = "report.html"
INDEX = "index.html"
"""``DIR/index.html``: the page over several run directories (``regtorch demo``, ``report``)."""
RESULT_FILES = (CONFIG, METRICS, SUMMARY)
"""What every finished run directory holds, and all a report is made from."""
_CHECKPOINTS = "checkpoints"
_LOCK = ".lock"  # held (flock) by the run writing the directory, removed when it is done
_OWN_RESULTS = (CONFIG, METRICS, SEARCH, SUMMARY, REPORT)
_OWN_PATTERNS = ("*.png",)  # the report's figures (regtorch.lab.present.report)
_TEMPORARIES = ".*.tmp"  # regtorch.lab.atomic's temporary files
_RUN_KEY = "run"  # how the run was made (versions, time): not part of the configuration


class ConfigMismatchError(ValueError):
    """The directory holds results of another configuration."""


class DirectoryBusyError(ValueError):
    """Another process is writing the run directory (it holds the directory's lock)."""


class ReportError(ValueError):
    """Nothing to report, or a run file is missing or malformed; the message names the path."""


def checkpoint_directory(directory: str | Path) -> Path:
    """Where a run directory keeps its checkpoints."""
    return Path(directory) / _CHECKPOINTS


def prepare_directory(directory: str | Path, config: dict[str, Any], *, fresh: bool = False
                      ) -> dict[str, Any]:
    """Make ``directory`` ready to run ``config``: new, cleared, or resumable.

    A directory holding a ``config.json`` of another configuration (compared without its
    ``"run"`` key) is refused. With ``fresh``, everything an earlier run wrote is removed first:
    the checkpoints, ``config.json``, the results (``metrics.jsonl``, ``search.jsonl``,
    ``summary.json``), the report and its figures — so that an interrupted fresh run never leaves
    a new configuration beside old results. ``config.json`` is written when absent. The caller
    holds the directory (:func:`locked`).

    Args:
        directory: the run directory (created if needed).
        config: the configuration to run, with its ``"run"`` metadata.
        fresh: start over, discarding what the directory holds.

    Returns:
        the configuration in force: the existing file's when resuming (its ``"run"`` key tells
        when the run was first started), else ``config``.

    Raises:
        ConfigMismatchError: the directory holds another configuration (the message names the first
            difference and the ways out), or an unreadable ``config.json``.
        OSError: the directory or the file cannot be written.
    """
    directory = Path(directory)
    path = directory / CONFIG
    if fresh:
        shutil.rmtree(checkpoint_directory(directory), ignore_errors=True)
        for name in _OWN_RESULTS:
            (directory / name).unlink(missing_ok=True)
        for pattern in _OWN_PATTERNS:
            for own in directory.glob(pattern):
                own.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    existing = check_config(directory, config)
    if existing is not None:
        return existing
    write_json(path, config)
    return config


def check_config(directory: str | Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The configuration ``directory`` holds (None: none yet), if it is ``config``'s.

    Raises:
        ConfigMismatchError: it holds another configuration (the first difference named), or an
            unreadable ``config.json``.
    """
    directory = Path(directory)
    path = directory / CONFIG
    if not path.exists():
        return None
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigMismatchError(f"{path} cannot be read ({error}); rerun with --fresh to "
                                  f"start over or choose another --out") from None
    if not isinstance(existing, dict):
        raise ConfigMismatchError(f"{path} is not a run configuration; rerun with --fresh to "
                                  f"start over or choose another --out")
    difference = first_difference(_without_run(existing), _without_run(config))
    if difference is not None:
        raise ConfigMismatchError(f"{directory} holds a run of another configuration "
                                  f"({difference}); rerun with --fresh to replace it, or choose "
                                  f"another --out")
    return existing


@contextlib.contextmanager
def locked(directory: str | Path) -> Iterator[Path]:
    """Hold ``directory`` (created if needed) for one run: an OS file lock (``flock``) on its
    ``.lock`` file, released when the block exits or the process dies.

    Raises:
        DirectoryBusyError: another process holds it (the message names the directory).
        OSError: the directory or its lock file cannot be created.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield directory
        return
    path = directory / _LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DirectoryBusyError(f"{directory} is in use by another regtorch run; wait for "
                                     f"it or choose another --out") from None
        # The holder removes the file when done: the lock is ours only if the file we locked is
        # still the one at `path` (else another run removed it meanwhile: take the new one).
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield directory
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still holding it: nothing is left behind
        os.close(fd)  # releases the lock


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Remove the temporary files (``.*.tmp``) a killed write left in ``directory`` and its
    checkpoints; return them. Only while holding the directory (:func:`locked`): then no other
    process is writing there."""
    directory = Path(directory)
    stale = [*directory.glob(_TEMPORARIES), *checkpoint_directory(directory).glob(_TEMPORARIES)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def first_difference(old: Any, new: Any, where: str = "") -> str | None:
    """``"key: old → new"`` for the first difference between two JSON values, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            if key not in old or key not in new:
                there = _short(old[key]) if key in old else "absent"
                now = _short(new[key]) if key in new else "absent"
                return f"{where}{key}: {there} there, {now} now"
            found = first_difference(old[key], new[key], f"{where}{key}.")
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = first_difference(a, b, f"{where}[{i}].")
            if found is not None:
                return found
        return None
    if old == new and type(old) is type(new):
        return None
    return f"{where.rstrip('.')}: {_short(old)} there, {_short(new)} now"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _without_run(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != _RUN_KEY}


# -- writing the results ---------------------------------------------------------------------
def write_results(directory: str | Path, config: dict[str, Any], records: Sequence[Record],
                  summary: StudySummary | SweepSummary,
                  search: Sequence[Record] | None = None) -> list[str]:
    """Write a finished run's files, each atomically; return their names in the order written.

    ``search``: a sweep's λ_max search records (``search.jsonl``), when its grid was searched.

    Raises:
        OSError: a file could not be written; its ``filename`` names it, and what was there
            before is kept.
    """
    directory = Path(directory)
    files: list[tuple[str, Any]] = [(CONFIG, config), (METRICS, records)]
    if search is not None:
        files.append((SEARCH, search))
    files.append((SUMMARY, summary))
    for name, content in files:
        write = write_jsonl if name.endswith(".jsonl") else write_json
        try:
            write(directory / name, content)
        except OSError as error:
            error.filename = str(directory / name)
            raise
    return [name for name, _ in files]


# -- reading them back -----------------------------------------------------------------------
_RECORD_KEYS = ("variant", "strength", "seed", "epoch", "diverged")


@dataclass
class Run:
    """What a run directory holds (``records`` are read only when asked for)."""

    directory: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    _records: list[Record] | None = None

    @property
    def sweep(self) -> bool:
        return self.summary.get("kind") == "sweep"

    @property
    def name(self) -> str:
        return str(self.summary.get("study") or self.directory.name)

    @property
    def records(self) -> list[Record]:
        if self._records is None:
            self._records = read_records(self.directory / METRICS)
        return self._records


def load_run(directory: Path) -> Run:
    """Read a run directory's configuration and summary.

    Raises:
        ReportError: the directory or one of :data:`RESULT_FILES` is missing, or malformed.
    """
    if not directory.is_dir():
        raise ReportError(f"{directory}: no such directory")
    for name in RESULT_FILES:
        if not (directory / name).is_file():
            raise ReportError(f"{directory}: no {name} (a run directory holds "
                              f"{', '.join(RESULT_FILES)})")
    config = _read_json(directory / CONFIG)
    summary = _read_json(directory / SUMMARY)
    _check_summary(directory / SUMMARY, summary)
    run = Run(directory, config, summary)
    _check_agreement(run)
    return run


def _check_agreement(run: Run) -> None:
    """The files tell one run: ``summary.json`` has the study, seeds and epochs of
    ``config.json``, and a study's ``metrics.jsonl`` the variants and seeds of ``summary.json``
    (files left by two runs — an interrupted one beside an older one's — are refused)."""
    config, summary = run.config, run.summary
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    # A sweep's config.json is its base study's (named so in summary.json's "base").
    name = summary.get("study")
    if run.sweep and config.get("name") == summary.get("base"):
        name = summary.get("base")
    told = {"study": (config.get("name"), name), "seeds": (config.get("seeds"),
            summary.get("seeds")), "epochs": (train.get("epochs"), summary.get("epochs"))}
    for key, (in_config, in_summary) in told.items():
        if in_config is not None and in_summary is not None and in_config != in_summary:
            raise ReportError(_disagree(run.directory, CONFIG, f"{key} {_short(in_config)}",
                                        f"{key} {_short(in_summary)}"))
    if run.sweep:
        return
    seeds = {record["seed"] for record in run.records}
    if isinstance(summary.get("seeds"), int) and len(seeds) != summary["seeds"]:
        raise ReportError(_disagree(run.directory, METRICS, f"{len(seeds)} seeds",
                                    f"seeds {summary['seeds']}"))
    variants = {record["variant"] for record in run.records}
    if variants != set(summary["variants"]):
        extra = sorted(variants ^ set(summary["variants"]))[0]
        raise ReportError(_disagree(run.directory, METRICS, "other variants",
                                    f"variants without {_short(extra)}"))


def _disagree(directory: Path, name: str, there: str, in_summary: str) -> str:
    return (f"{directory}: {name} ({there}) disagrees with {SUMMARY} ({in_summary}): the files "
            f"of two runs; run again (--fresh to start over)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ReportError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: malformed JSON: {error}") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path}: malformed: expected a JSON object, got "
                          f"{type(value).__name__}")
    return value


def read_records(path: Path) -> list[Record]:
    """The records of a ``metrics.jsonl`` file.

    Raises:
        ReportError: the file cannot be read, or a line is not a record (naming the line).
    """
    records = []
    try:
        with path.open(encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ReportError(f"{path}:{number}: malformed JSON: {error}") from None
                missing = ([k for k in _RECORD_KEYS if k not in row] if isinstance(row, dict)
                           else list(_RECORD_KEYS))
                if missing:
                    raise ReportError(f"{path}:{number}: malformed record: no "
                                      f"{', '.join(missing)}")
                records.append(row)
    except OSError as error:
        raise ReportError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ReportError(f"{path}: not UTF-8 text: {error}") from None
    return records


def _check_summary(path: Path, summary: dict[str, Any]) -> None:
    """The keys the pages rely on, so that a foreign JSON file fails here with its name."""
    if summary.get("kind") == "sweep":
        ok = (isinstance(summary.get("path"), list)
              and all(isinstance(p, dict) and "lambda" in p for p in summary["path"])
              and isinstance(summary.get("unregularized"), dict))
        expected = "a sweep summary (a 'path' list of λ entries and 'unregularized')"
    else:
        ok = (isinstance(summary.get("variants"), dict) and "seeds" in summary
              and all(isinstance(v, dict) for v in summary["variants"].values()))
        expected = "a study summary ('seeds' and a 'variants' object)"
    if not ok:
        raise ReportError(f"{path}: malformed: not {expected}")
