"""Atomic result files: a reader sees the old file or the new one, never half of one.

Every file is written to a temporary file in the same directory (so the final rename stays on one
file system), flushed and ``fsync``-ed, then renamed over the target with :func:`os.replace`,
which is atomic on POSIX and Windows. If anything fails before the rename — a value JSON cannot
hold, a full disk, Ctrl-C — the temporary file is removed and the old target is left untouched.

JSON is written with ``allow_nan=False``: JSON has no NaN or infinity, so a stray non-finite number
is an error here rather than an unreadable file later (the lab records non-finite values as
``null``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_writer", "write_bytes", "write_json", "write_jsonl"]


def atomic_writer(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[IO[str]]:
    """Open a UTF-8 text stream whose content replaces ``path`` when the block exits cleanly.

    The temporary file ``.<name>.<random>.tmp`` is created next to ``path`` with the mode a new
    file would get (``0o666`` minus the umask). On an exception inside the block it is removed and
    ``path`` keeps its old content (or stays absent); the exception propagates.

    Args:
        path: the file to write; its directory must exist.

    Returns:
        a context manager yielding the text stream to write to.
    """
    return _replacing(path, "w", encoding="utf-8", newline="\n")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` as the whole content of ``path`` (a binary file), atomically: the
    mechanism of :func:`atomic_writer`, in binary."""
    with _replacing(path, "wb") as stream:
        stream.write(data)


@contextlib.contextmanager
def _replacing(path: str | os.PathLike[str], mode: str, **options: Any) -> Iterator[IO[Any]]:
    """A stream on a temporary file next to ``path``, flushed, fsync-ed and renamed over
    ``path`` when the block exits cleanly; removed on any exception."""
    target = Path(path)
    tmp, fd = _create_temp(target)
    try:
        with os.fdopen(fd, mode, **options) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _sync_directory(target.parent)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON (one trailing newline), atomically.

    Raises:
        TypeError: a value JSON cannot hold (the old file is kept).
        ValueError: a NaN or infinite float (the old file is kept).
    """
    with atomic_writer(path) as stream:
        json.dump(obj, stream, indent=2, allow_nan=False)
        stream.write("\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> None:
    """Write one compact JSON document per line (JSON Lines), atomically.

    Raises:
        TypeError: a value JSON cannot hold (the old file is kept).
        ValueError: a NaN or infinite float (the old file is kept).
    """
    with atomic_writer(path) as stream:
        for row in rows:
            stream.write(json.dumps(row, allow_nan=False))
            stream.write("\n")


def _create_temp(target: Path) -> tuple[Path, int]:
    # os.open with O_EXCL and mode 0o666 lets the umask set the permissions, as for any new file
    # (tempfile.mkstemp would leave the result readable by its owner only).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue


def _sync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is. Best effort: POSIX only (Windows
    # cannot open a directory this way), and some file systems refuse to fsync a directory; the
    # new content is already in place either way.
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
