"""Warnings raised while the lab trains, caught and kept as one line each.

Python prints a warning with its file, line number and source line — noise in the middle of a
progress bar, and gone once the terminal scrolls. The lab catches the warnings of a study's
training instead (a group lasso with Adam's element-wise steps, a deprecated option…) and keeps
each as one line: the console prints it, ``summary.json`` lists it (``warnings``,
:class:`regtorch.lab.schema.StudySummary`) and the verdict of each variant it concerns ends with
it.

>>> import warnings
>>> with caught_warnings() as lines:
...     warnings.warn("a first\\nline", UserWarning)
...     warnings.warn("a first\\nline", UserWarning)  # the same line is kept once
>>> lines
['UserWarning: a first line']
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

__all__ = ["caught_warnings", "warning_line"]


def warning_line(warning: warnings.WarningMessage) -> str:
    """``"<Category>: <message>"`` on one line (whitespace folded)."""
    return f"{warning.category.__name__}: {' '.join(str(warning.message).split())}"


@contextlib.contextmanager
def caught_warnings() -> Iterator[list[str]]:
    """Catch every warning raised inside; yield the list that holds, once the block ends, each
    distinct one as :func:`warning_line`, in the order first raised. Nothing is printed."""
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")  # a warning seen before (another study) is seen again
        try:
            yield lines
        finally:
            for record in records:
                line = warning_line(record)
                if line not in lines:
                    lines.append(line)
