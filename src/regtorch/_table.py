"""Plain-text tables for ``str(Regularizer)`` and friends: which tensor got which rule (private)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

__all__ = ["Row", "binding_summary", "binding_table", "count_summary", "format_table"]

# (parameter name, tensor, rule label, what the rule applies)
Row = tuple[str, Tensor, str, object]


def count_summary(chosen: Sequence[Tensor], rest: Sequence[Tensor], verb: str) -> str:
    """``"3 tensors (16 elements) penalized, 3 tensors (9 elements) not"``."""
    return (f"{len(chosen)} tensors ({sum(t.numel() for t in chosen)} elements) {verb}, "
            f"{len(rest)} tensors ({sum(t.numel() for t in rest)} elements) not")


def format_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], *,
                 left_out: Sequence[str] = (), left_out_label: str = "") -> str:
    """``title``, then the rows under ``header`` in aligned columns, then
    ``"  <left_out_label>: a, b, ..."`` when ``left_out`` is not empty."""
    table = [tuple(header), *map(tuple, rows)]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = [title]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
              for row in table]
    if left_out:
        lines.append(f"  {left_out_label}: " + ", ".join(left_out))
    return "\n".join(lines)


def _left_out(rows: Sequence[Row], every: Sequence[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    chosen = {name for name, *_ in rows}
    return [(name, t) for name, t in every if name not in chosen]


def binding_summary(rows: Sequence[Row], every: Sequence[tuple[str, Tensor]], verb: str) -> str:
    """:func:`count_summary` of the bound tensors against the rest of ``every``."""
    return count_summary([t for _, t, *_ in rows], [t for _, t in _left_out(rows, every)], verb)


def binding_table(owner: str, verb: str, column: str, rows: Sequence[Row],
                  every: Sequence[tuple[str, Tensor]]) -> str:
    """The table of a Regularizer-like object: a summary line, then parameter, shape, rule and
    ``column`` per bound tensor, then the trainable parameters left out."""
    left_out = _left_out(rows, every)
    return format_table(f"{owner}: {binding_summary(rows, every, verb)}",
                        ("parameter", "shape", "rule", column),
                        [(name, str(tuple(t.shape)), label, repr(value))
                         for name, t, label, value in rows],
                        left_out=[name for name, _ in left_out], left_out_label=f"not {verb}")
