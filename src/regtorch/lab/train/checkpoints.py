"""Checkpoints: the training state that lets an interrupted study continue exactly.

Under the directory given (a run directory's ``checkpoints/``,
:func:`regtorch.lab.present.rundir.checkpoint_directory`):

* ``<prefix>group-<i>.pt`` once group ``i`` has finished: its records and final parameters;
* ``<prefix>group-<i>-partial.pt`` while it trains: everything its next epoch depends on — the
  parameters, the optimizer and scheduler state, the random-number state that draws dropout masks
  and the batch-order generator, and the records so far — saved after an epoch at most every
  :attr:`Checkpoints.interval` seconds.

Every file is written atomically (:mod:`regtorch.lab.atomic`): a kill leaves the previous
checkpoint, never half of one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from regtorch.lab.atomic import write_bytes

__all__ = ["Checkpoints"]


class Checkpoints:
    """Named training states in ``directory`` (``torch.save`` files).

    Args:
        directory: where the files go (created on the first save).
        interval: seconds between checkpoints of a group in progress (0: after every epoch).
        prefix: prepended to every name (a sweep keeps its λ search apart from its path).
    """

    def __init__(self, directory: str | Path, interval: float, prefix: str = "") -> None:
        if not interval >= 0:  # also rejects NaN
            raise ValueError(f"Invalid checkpoint interval: {interval!r} (expected seconds >= 0)")
        self.directory = Path(directory)
        self.interval = float(interval)
        self.prefix = prefix

    def child(self, prefix: str) -> Checkpoints:
        """The same directory and interval, names prefixed with ``prefix``."""
        return Checkpoints(self.directory, self.interval, self.prefix + prefix)

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
