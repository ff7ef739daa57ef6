"""Run directories that survive interruption: the configuration guard and the checkpoints.

A run directory (``DIR/<study>/``) starts with ``config.json``, written before any training, and
keeps its training state under ``checkpoints/``:

* ``<prefix>group-<i>.pt`` once group ``i`` has finished: its records and final parameters;
* ``<prefix>group-<i>-partial.pt`` while it trains: everything its next epoch depends on — the
  parameters, the optimizer and scheduler state, the random-number state that draws dropout masks
  and the batch-order generator, and the records so far — saved after an epoch at most every
  :attr:`Checkpoints.interval` seconds.

Run again with the same configuration, training skips the finished groups and continues the one in
progress from its last saved epoch; the results are identical to an uninterrupted run's, because
nothing the remaining epochs read is left out of the state. Every file is written atomically
(:mod:`regtorch.lab.output`): a kill leaves the previous checkpoint, never half of one. A
directory made with another configuration is refused (:class:`ConfigMismatchError`) rather than
mixed in; ``fresh=True`` clears it first.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from regtorch.lab.output import write_bytes, write_json

__all__ = ["CHECKPOINT_SECONDS", "CONFIG", "Checkpoints", "ConfigMismatchError",
           "first_difference", "prepare_directory"]

CHECKPOINT_SECONDS = 10.0
"""Default time between checkpoints of a group in progress: at most this much training is redone
after an interruption (a save costs milliseconds for the lab's models)."""

CONFIG = "config.json"
_CHECKPOINTS = "checkpoints"
_RUN_KEY = "run"  # how the run was made (versions, time): not part of the configuration


class ConfigMismatchError(ValueError):
    """The directory holds results of another configuration."""


class Checkpoints:
    """Named training states under ``directory/checkpoints/`` (``torch.save`` files).

    Args:
        directory: the run directory.
        interval: seconds between checkpoints of a group in progress (0: after every epoch).
        prefix: prepended to every name (a sweep keeps its λ search apart from its path).
    """

    def __init__(self, directory: str | Path, interval: float = CHECKPOINT_SECONDS,
                 prefix: str = "") -> None:
        if not interval >= 0:  # also rejects NaN
            raise ValueError(f"Invalid checkpoint interval: {interval!r} (expected seconds >= 0)")
        self.directory = Path(directory) / _CHECKPOINTS
        self.interval = float(interval)
        self.prefix = prefix

    def child(self, prefix: str) -> Checkpoints:
        """The same directory and interval, names prefixed with ``prefix``."""
        return Checkpoints(self.directory.parent, self.interval, self.prefix + prefix)

    def _path(self, name: str) -> Path:
        return self.directory / f"{self.prefix}{name}.pt"

    def load(self, name: str) -> Any | None:
        """The state saved as ``name``, or None if there is none."""
        path = self._path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        # weights_only: tensors, numbers, strings, lists and dicts only — nothing is executed.
        return torch.load(io.BytesIO(data), weights_only=True)

    def save(self, name: str, state: Any) -> None:
        """Save ``state`` as ``name``, atomically."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_bytes(self._path(name), buffer.getvalue())

    def remove(self, name: str) -> None:
        """Forget ``name`` (nothing happens if it was never saved)."""
        self._path(name).unlink(missing_ok=True)


def prepare_directory(directory: str | Path, config: dict[str, Any], *, fresh: bool = False
                      ) -> dict[str, Any]:
    """Make ``directory`` ready to run ``config``: new, cleared, or resumable.

    A directory holding a ``config.json`` of another configuration (compared without its
    ``"run"`` key) is refused. With ``fresh``, the checkpoints and the files ``config.json`` names
    are removed first. ``config.json`` is written when absent.

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
        shutil.rmtree(directory / _CHECKPOINTS, ignore_errors=True)
        path.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    if path.exists():
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
    write_json(path, config)
    return config


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
