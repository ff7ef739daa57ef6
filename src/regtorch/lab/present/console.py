"""What the ``regtorch`` command shows: a progress bar on stderr, tables and verdicts on stdout.

Results go to stdout (``regtorch run d2l-highdim > result.txt`` keeps them); progress goes to
stderr and only when stderr is a terminal, where it is erased once a study finishes. Off a
terminal (a pipe, a CI log, a test) the output is plain text with no colour, laid out
:data:`PLAIN_WIDTH` columns wide unless ``COLUMNS`` says otherwise, so tables do not fold. Text
coming from studies and summaries is never read as rich markup: a ``[`` in a verdict prints as is.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from regtorch.lab.schema import WARNINGS_KEY

__all__ = [
    "PLAIN_WIDTH",
    "make_console",
    "print_presets",
    "print_study",
    "print_sweep",
    "print_written",
    "progress",
    "study_progress",
]

PLAIN_WIDTH = 160
"""Columns of output off a terminal: wide enough for the comparison table of every preset."""


def make_console(stream: IO[str]) -> Console:
    """A console writing to ``stream`` (``sys.stdout`` or ``sys.stderr``), plain off a terminal."""
    console = Console(file=stream, highlight=False, emoji=False, markup=False)
    if not console.is_terminal:
        console.file = _TrimmedLines(stream)
        if "COLUMNS" not in os.environ:
            console.width = PLAIN_WIDTH
    return console


class _TrimmedLines(io.TextIOBase):
    """A text stream that drops the spaces rich pads table rows with, at the end of each line.

    Only for output off a terminal (logs, files, tests), where trailing blanks are noise.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self._stream = stream
        self._pending = ""

    @property
    def encoding(self) -> str | None:  # rich picks box characters by the encoding
        return getattr(self._stream, "encoding", None)

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._stream.write(line.rstrip(" ") + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()


@contextlib.contextmanager
def progress(console: Console, label: str) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar for one study; yields the engine's ``on_epoch(done, total)``.

    The bar counts member-epochs (one member trained for one epoch). It is drawn only when
    ``console`` is a terminal: in a log, a bar is noise.
    """
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("member-epochs"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=None)

        def on_epoch(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield on_epoch


@contextlib.contextmanager
def study_progress(console: Console, labels: Sequence[str]
                   ) -> Iterator[Callable[[int, int, int], None]]:
    """Transient progress bars for studies trained at once; yields ``update(index, done,
    total)`` (study ``index`` has done ``done`` of ``total`` member-epochs). Drawn only when
    ``console`` is a terminal."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("member-epochs"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        tasks = [bar.add_task(label, total=None) for label in labels]

        def update(index: int, done: int, total: int) -> None:
            bar.update(tasks[index], completed=done, total=total)

        yield update


def print_presets(console: Console, presets: Sequence[tuple[str, str]]) -> None:
    """One line per preset: its name, then its description."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for name, description in presets:
        grid.add_row(Text(name, style="bold"), Text(description))
    console.print(grid)


def print_study(console: Console, title: str, headers: Sequence[str],
                rows: Sequence[Sequence[str]], summary: Mapping[str, Any]) -> None:
    """The comparison table, then each variant's verdict, then the summary's notes.

    Args:
        console: where to print (stdout's console).
        title: the table's title (study name, seeds, epochs, time).
        headers: column names, from :func:`regtorch.lab.present.tables.table_rows`.
        rows: one row of cell strings per variant, from the same function.
        summary: the ``summary.json`` dict: ``variants`` (name → {"verdict": ...}) and ``notes``.
    """
    for table in _fitted_tables(console, title, headers, rows):
        console.print(table)

    verdicts = Table.grid(padding=(0, 2))
    verdicts.add_column(no_wrap=True)
    verdicts.add_column()
    for name, variant in summary.get("variants", {}).items():
        verdict = variant.get("verdict")
        if verdict:
            verdicts.add_row(Text(name, style="bold"), Text(str(verdict)))
    if verdicts.row_count:
        console.print(verdicts)
    _print_notes(console, summary.get("notes") or [], summary.get(WARNINGS_KEY) or [])


_STD = " ± "  # how a cell of tables.mean_std_text separates the mean from the spread
_MEANS_ONLY = "means over the seeds; ± std in the report and summary.json"


def _fitted_tables(console: Console, title: str, headers: Sequence[str],
                   rows: Sequence[Sequence[str]]) -> list[Table]:
    """The table in the console's width, no cell ever cut: as it is if it fits; else with the
    means only (the spreads are in the report); else its columns split over several tables,
    each led by the first column (the variant, or λ)."""
    width = console.width
    table = _table(title, headers, rows)
    if _width(console, table) <= width:
        return [table]
    rows = [[str(cell).split(_STD)[0] for cell in row] for row in rows]
    title = f"{title} ({_MEANS_ONLY})"
    table = _table(title, headers, rows)
    if _width(console, table) <= width:
        return [table]
    tables: list[Table] = []
    columns: list[int] = []
    for i in range(1, len(headers)):
        candidate = _table("", [headers[c] for c in (0, *columns, i)],
                           [[row[c] for c in (0, *columns, i)] for row in rows])
        if columns and _width(console, candidate) > width:
            tables.append(_part(title if not tables else "", headers, rows, columns))
            columns = []
        columns.append(i)
    tables.append(_part(title if not tables else "", headers, rows, columns))
    return tables


def _part(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]],
          columns: list[int]) -> Table:
    keep = (0, *columns)
    return _table(title, [headers[c] for c in keep], [[row[c] for c in keep] for row in rows])


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=Text(title, style="bold") if title else None, title_justify="left",
                  box=box.SIMPLE_HEAD)
    for i, header in enumerate(headers):
        table.add_column(Text(header), justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    return table


def _width(console: Console, table: Table) -> int:
    """The columns ``table`` needs to show every cell whole (its title may wrap)."""
    title, table.title = table.title, None
    try:
        return Measurement.get(console, console.options.update(width=10**6), table).maximum
    finally:
        table.title = title


def _print_notes(console: Console, notes: Sequence[str], warned: Sequence[str] = ()) -> None:
    """The summary's notes, then the warnings raised while training, one line each."""
    if notes or warned:
        console.print()
        for note in notes:
            console.print(Text.assemble(("note: ", "dim"), str(note)))
        for line in warned:
            console.print(Text.assemble(("warning: ", "bold yellow"), str(line)))


def print_sweep(console: Console, title: str, headers: Sequence[str],
                rows: Sequence[Sequence[str]], choices: Sequence[Sequence[str]],
                summary: Mapping[str, Any]) -> None:
    """The path table, λ_max, the two choices of λ with their losses, then the notes.

    Args:
        console: where to print (stdout's console).
        title: the table's title (sweep name, grid, seeds, epochs, time).
        headers: column names, from :func:`regtorch.lab.present.tables.path_rows`.
        rows: one row of cell strings per λ, from the same function.
        choices: ``[name, λ, validation loss, test loss]`` rows, from
            :func:`regtorch.lab.present.tables.choice_rows`.
        summary: the sweep's ``summary.json`` dict (see :mod:`regtorch.lab.analysis.sweep`).
    """
    print_study(console, title, headers, rows, {})
    lines = Table.grid(padding=(0, 2))
    lines.add_column(no_wrap=True)
    lines.add_column()
    if summary.get("lambda_max") is not None:
        lines.add_row(Text("λ_max", style="bold"),
                      Text(f"{summary['lambda_max']:.4g}: {summary['lambda_max_rule']}; grid "
                           f"λ_max/100 … λ_max"))
    for name, lam, validation, test in choices:
        lines.add_row(Text(name, style="bold"),
                      Text(f"{lam}: validation {validation}, test {test}"))
    console.print(lines)
    _print_notes(console, summary.get("notes") or [], summary.get(WARNINGS_KEY) or [])


def print_written(console: Console, directory: Path, files: Sequence[str]) -> None:
    """Where the results went: ``wrote runs/d2l-highdim/ (config.json, ...)``."""
    console.print(Text(f"wrote {directory}{os.sep} ({', '.join(files)})", style="dim"))
    console.print()
