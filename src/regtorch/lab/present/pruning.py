"""How a channel penalty's compaction reads: a table (console and report), a figure and a report
section, from a summary's ``"pruning"`` key (:mod:`regtorch.lab.analysis.pruning`).

The table has one row per (variant, λ), the reference first: test accuracy (classification) or
test loss, the fraction of channels exactly zero, the channels kept, the parameters and MACs of the
compact model, and its measured latency next to the original's. The figure ``pruning`` plots
accuracy (or test loss) against the fraction of channels kept and against the compact model's
latency relative to the original's (``1 / speedup``, measured in pairs), the reference as a
star. Nothing here runs when the summary has no ``"pruning"`` key.
"""

from __future__ import annotations

import html
from typing import Any

from rich.console import Console

from regtorch.lab.present.console import print_study

__all__ = [
    "print_pruning",
    "pruning_figure_names",
    "pruning_figures",
    "pruning_rows",
    "pruning_section",
]

FIGURE = "pruning"


def _metric(pruning: dict[str, Any]) -> tuple[str, str]:
    """The quality column: test accuracy when the entries have it, else the test loss."""
    if all(e.get("test_acc") is not None for e in pruning["entries"]):
        return "test_acc", "test acc"
    return "test_loss", "test loss"


def _number(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _count(value: Any) -> str:
    return "—" if value is None else f"{value:,.0f}"


def pruning_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and one row of cell strings per (variant, λ) of ``summary["pruning"]``."""
    pruning = summary["pruning"]
    key, label = _metric(pruning)
    headers = ["variant", "λ", label, "channels zero", "channels kept", "parameters", "MACs",
               "latency ms", "speedup"]
    rows = []
    for e in pruning["entries"]:
        quality = _number(e.get(key), 4)
        if e.get(f"{key}_std"):
            quality += f" ± {e[f'{key}_std']:.2g}"
        zero = "—" if e.get("zero_fraction") is None else f"{e['zero_fraction']:.0%}"
        rows.append([
            e["variant"], "0 (reference)" if e["lambda"] is None else f"{e['lambda']:.3g}",
            quality, zero, f"{_number(e.get('channels_kept'))} / {e['channels']}",
            f"{_count(e.get('parameters_compact'))} / {_count(e.get('parameters'))}",
            f"{_count(e.get('macs_compact'))} / {_count(e.get('macs'))}",
            f"{_number(e.get('latency_compact_ms'))} / {_number(e.get('latency_ms'))}",
            "—" if e.get("speedup") is None else f"{e['speedup']:.2f}×"])
    return headers, rows


def _measured(pruning: dict[str, Any]) -> str:
    if not pruning.get("timed", True):
        return "latency not measured"
    return (f"latency: median of eval-mode calls on {pruning['latency_batch']} test rows, "
            f"{pruning['threads']} torch thread{'s' if pruning['threads'] != 1 else ''}, "
            f"compact / original")


def print_pruning(console: Console, summary: dict[str, Any]) -> None:
    """The compaction table of ``summary`` (nothing without a ``"pruning"`` key)."""
    if "pruning" not in summary:
        return
    headers, rows = pruning_rows(summary)
    title = (f"channels removed by compact (compact / original; {_measured(summary['pruning'])})")
    print_study(console, title, headers, rows, {})


def pruning_figure_names(summary: dict[str, Any]) -> tuple[str, ...]:
    """The names of the figures :func:`pruning_figures` draws for ``summary``."""
    return (FIGURE,) if "pruning" in summary else ()


def pruning_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """``{"pruning": Figure}``: quality vs channels kept and vs relative latency (none without
    a ``"pruning"`` key)."""
    if "pruning" not in summary:
        return {}
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    pruning = summary["pruning"]
    key, label = _metric(pruning)
    figure = Figure(figsize=(11.0, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    for e in pruning["entries"]:
        if e.get(key) is None or e.get("channels_kept") is None:
            continue
        kept = e["channels_kept"] / e["channels"] if e["channels"] else 1.0
        name = "λ = 0 (reference)" if e["lambda"] is None else f"λ = {e['lambda']:.3g}"
        style = {"marker": "*", "markersize": 13, "color": "black"} if e["reference"] else \
            {"marker": "o", "markersize": 6}
        left.plot([kept], [e[key]], linestyle="none", label=name, **style)
        if e.get("speedup"):  # paired per member: less noisy than the absolute times
            right.plot([1.0 / e["speedup"]], [e[key]], linestyle="none", label=name, **style)
    left.set_xlabel("channels kept (compact model)")
    left.xaxis.set_major_formatter(PercentFormatter(1.0))
    right.set_xlabel(f"measured latency, compact / original ({pruning.get('latency_batch')} "
                     f"rows)")
    right.xaxis.set_major_formatter(PercentFormatter(1.0))
    for ax in (left, right):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    left.legend(fontsize="small")
    figure.suptitle(f"{summary.get('study', '')}: {label} vs channels kept vs latency")
    return {FIGURE: figure}


def pruning_section(summary: dict[str, Any], sub: str) -> list[str]:
    """The report's HTML for ``summary["pruning"]``: a heading, how it was measured and the
    table (empty without the key)."""
    if "pruning" not in summary:
        return []
    headers, rows = pruning_rows(summary)
    e = html.escape
    parts = [f"<{sub}>Channels removed by compact</{sub}>",
             f"<p class=\"hint\">Every member compacted with regtorch.compact (outputs checked "
             f"against the member's); means over the seeds; compact / original; "
             f"{e(_measured(summary['pruning']))}. MACs per example, Linear and Conv layers."
             f"</p>", "<div class=\"scroll\"><table>", "<thead><tr>",
             *(f"<th>{e(h)}</th>" for h in headers), "</tr></thead>", "<tbody>"]
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{e(str(cell))}</td>" for cell in row) + "</tr>")
    parts += ["</tbody></table></div>"]
    return parts
