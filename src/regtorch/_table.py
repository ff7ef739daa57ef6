"""Plain-text tables for ``str(Regularizer)`` and friends: which tensor got which rule (private).

Large models stay readable: counts get thousands separators; past :data:`MAX_ROWS` rows, rows that
differ only in the first integer component of their names (the layers of a stack: ``h.0.attn``,
``h.1.attn``, ...) and agree on shape, rule and value collapse into one ``h.*.attn.weight ×12``
row; the list of parameters left out collapses the same way past :data:`MAX_LEFT_OUT` names and
is wrapped at :data:`WIDTH` columns.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from torch import Tensor

__all__ = ["Row", "binding_summary", "binding_table", "count_summary", "format_table"]

# (parameter name, tensor, rule label, what the rule applies)
Row = tuple[str, Tensor, str, object]

MAX_ROWS = 24  # rows shown one per tensor; more collapse by name pattern
MAX_LEFT_OUT = 12  # names listed one by one; more collapse by name pattern
WIDTH = 100  # the wrapped list of left-out names


def count_summary(chosen: Sequence[Tensor], rest: Sequence[Tensor], verb: str) -> str:
    """``"3 tensors (16 elements) penalized, 3 tensors (9 elements) not"``."""
    return (f"{len(chosen):,} tensors ({sum(t.numel() for t in chosen):,} elements) {verb}, "
            f"{len(rest):,} tensors ({sum(t.numel() for t in rest):,} elements) not")


def format_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], *,
                 left_out: Sequence[str] = (), left_out_label: str = "") -> str:
    """``title``, then the rows under ``header`` in aligned columns, then
    ``"  <left_out_label>: a, b, ..."`` (wrapped) when ``left_out`` is not empty."""
    table = [tuple(header), *map(tuple, rows)]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = [title]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
              for row in table]
    if left_out:
        lines += textwrap.wrap(f"{left_out_label}: " + ", ".join(left_out), WIDTH,
                               initial_indent="  ", subsequent_indent="    ",
                               break_on_hyphens=False, break_long_words=False)
    return "\n".join(lines)


def _pattern(name: str) -> str:
    """The name with its first integer component replaced by ``*`` (``h.3.mlp.c_fc.weight`` →
    ``h.*.mlp.c_fc.weight``; ``block.0.layer.1.wi.weight`` → ``block.*.layer.1.wi.weight``: the
    later indices, e.g. sublayers of a block, stay apart)."""
    parts = name.split(".")
    for index, part in enumerate(parts):
        if part.isdigit():
            parts[index] = "*"
            break
    return ".".join(parts)


def _collapse(keys: Sequence[tuple[str, tuple]]) -> list[tuple[str, tuple, int]]:
    """Group ``(name, rest)`` pairs by ``(pattern(name), rest)`` in order of first appearance:
    ``(shown name, rest, count)``, the name itself for a group of one."""
    groups: dict[tuple[str, tuple], list[str]] = {}
    for name, rest in keys:
        groups.setdefault((_pattern(name), rest), []).append(name)
    return [(pattern if len(names) > 1 else names[0], rest, len(names))
            for (pattern, rest), names in groups.items()]


def _left_out(rows: Sequence[Row], every: Sequence[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    chosen = {name for name, *_ in rows}
    return [(name, t) for name, t in every if name not in chosen]


def binding_summary(rows: Sequence[Row], every: Sequence[tuple[str, Tensor]], verb: str) -> str:
    """:func:`count_summary` of the bound tensors against the rest of ``every``."""
    return count_summary([t for _, t, *_ in rows], [t for _, t in _left_out(rows, every)], verb)


def binding_table(owner: str, verb: str, column: str, rows: Sequence[Row],
                  every: Sequence[tuple[str, Tensor]]) -> str:
    """The table of a Regularizer-like object: a summary line, then parameter, shape, rule and
    ``column`` per bound tensor (collapsed by name pattern past :data:`MAX_ROWS`), then the
    trainable parameters left out."""
    left_out = [name for name, _ in _left_out(rows, every)]
    cells = [(name, (str(tuple(t.shape)), label, repr(value))) for name, t, label, value in rows]
    if len(cells) > MAX_ROWS:
        cells = [(name if count == 1 else f"{name} ×{count}", rest)
                 for name, rest, count in _collapse(cells)]
    if len(left_out) > MAX_LEFT_OUT:
        # A no-break space: the wrapped list never separates a name from its count.
        left_out = [name if count == 1 else f"{name}\u00a0×{count}"
                    for name, _, count in _collapse([(n, ()) for n in left_out])]
    return format_table(f"{owner}: {binding_summary(rows, every, verb)}",
                        ("parameter", "shape", "rule", column),
                        [(name, *rest) for name, rest in cells],
                        left_out=left_out, left_out_label=f"not {verb}")
