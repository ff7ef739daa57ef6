"""The pictures of the lab: train/test curves of a study and the regularization path of a sweep.

Every function returns :class:`matplotlib.figure.Figure` objects drawn on their own
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`: no pyplot, no global state, no backend
switching, so importing this module changes nothing for a program that uses matplotlib itself.
:func:`png_bytes` renders a figure; :mod:`regtorch.lab.present.report` writes and embeds the result.

**What a curve is.** Over the members (seeds) of one variant at one strength that did not diverge
— a member with any record marked ``diverged`` is left out entirely, as the summary leaves it out
— each point is the mean of the finite values at that epoch, with a band of ±1 standard
deviation (``ddof=1``, as in :mod:`regtorch.lab.analysis.summary`; none with one seed). A
``null`` value is skipped; an epoch or λ with no value at all has no point. On a log axis a band
whose lower edge would reach 0 is clipped at :data:`LOG_BAND_FLOOR` times the mean: an std as large
as the mean would otherwise stretch the axis down to nothing.

**Line labels** identify the series for a reader of the figure object (tests, other tools):
``"<variant>: train"`` / ``"<variant>: test"`` (loss and accuracy), ``"<variant>: weight norm"`` /
``"<variant>: sparsity"``; on a path ``"train"``, ``"validation"``, ``"test"``, ``"weight norm"``,
``"sparsity"``, ``"<series> at λ = 0"`` (a horizontal line), the two choices as vertical lines
labelled ``"best λ = <value> (...)"`` and ``"λ_1se = <value> (...)"``, and ``"λ where members
diverged (×)"`` (crosses at the foot of the axes). Legends show the variants'
and the choices' labels.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter

__all__ = ["LOG_BAND_FLOOR", "figure_names", "path_figures", "png_bytes", "study_figures"]

LOG_BAND_FLOOR = 0.1
"""On a log axis, a ±std band reaches down to at most this fraction of its mean (one decade)."""

DPI = 100
_WIDE = (11.0, 5.4)     # figure size in inches: two axes side by side, the legend below
_SINGLE = (9.5, 6.4)    # one axes, the legend below
_LEGEND_CHARS_PER_INCH = 13  # characters of a small legend label per inch of figure width
_LEGEND_PADDING = 7          # the handle and the gaps, in characters
# Margins in inches, set once per figure (matplotlib's constrained layout measures every text
# and costs a third of a report's drawing time; these figures have a fixed shape).
_LEFT, _RIGHT, _GAP = 0.85, 0.2, 0.95   # left of the first axes, right of the last, between
_BELOW_AXES = 0.52                      # tick labels and the x label
_LEGEND_ROW, _LEGEND_PAD = 0.21, 0.12   # one row of a small legend; its frame
_TITLE_LINE, _TOP_PAD = 0.27, 0.12      # one line of title
_BAND_ALPHA = 0.12
_SPLITS = (("train", "train"), ("val", "validation"), ("test", "test"))
# On a path: best_lambda and lambda_1se as vertical lines, λ = 0 as horizontal ones.
_BEST_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}
_ONE_SE_STYLE = {"color": "dimgray", "linestyle": "-.", "linewidth": 1.2}
_ZERO_STYLE = {"linestyle": (0, (1, 3)), "linewidth": 1.2, "alpha": 0.9}
_BEST_WORDS = "best λ = {:.3g} (lowest mean validation loss)"
_ONE_SE_WORDS = "λ_1se = {:.3g} (largest λ within one SE of the best)"
_DIVERGED_WORDS = "λ where members diverged (×)"


def study_figures(records: Sequence[dict[str, Any]], summary: dict[str, Any]
                  ) -> dict[str, Figure]:
    """The figures of a study, by name, in display order.

    * ``"loss"``: train (solid) and test (dashed) data loss vs epoch, log y-axis, one colour per
      variant (the same for its two lines), mean ± std over the seeds that did not diverge;
    * ``"weights"``: ‖w‖₂ vs epoch and sparsity (fraction of exact zeros) vs epoch, side by side;
    * ``"accuracy"``: train (solid) and test (dashed) accuracy vs epoch — only when the records
      carry ``test_acc`` (classification).

    A tuned variant (several strengths in the records) is drawn at the strength the summary kept
    (``summary["variants"][name]["strength"]``); variants are drawn in the summary's order.

    Args:
        records: the rows of ``metrics.jsonl`` (see :mod:`regtorch.lab.schema`).
        summary: the study's ``summary.json`` (see :mod:`regtorch.lab.analysis.summary`).

    Returns:
        ``{"loss": ..., "weights": ..., ["accuracy": ...]}``.
    """
    series = _study_series(records, summary)
    seeds = summary.get("seeds") or len({r["seed"] for r in records})
    study = summary.get("study", "study")
    figures = {"loss": _loss_figure(series, study, seeds),
               "weights": _weights_figure(series, study, seeds)}
    if any(r.get("test_acc") is not None for r in records):
        figures["accuracy"] = _accuracy_figure(series, study, seeds)
    return figures


def path_figures(summary: dict[str, Any]) -> dict[str, Figure]:
    """The figures of a sweep's regularization path, by name, in display order.

    * ``"path_loss"``: mean train / validation / test loss vs λ (log x, log y) with ±std bands;
    * ``"path_weights"``: ‖w‖₂ vs λ and sparsity vs λ (log x), side by side;
    * ``"path_accuracy"``: train / validation / test accuracy vs λ — classification only (the
      path entries carry ``test_acc``).

    Every axes marks ``best_lambda`` (dashed) and ``lambda_1se`` (dash-dotted) with vertical lines
    whose legend entries give their values, and the unregularized model's value (λ = 0, trained
    alongside) with a dotted horizontal line in the series' colour. A λ whose members all
    diverged (``null`` means) has no point; every λ at which a member diverged gets a red cross
    at the foot of the axes.

    Args:
        summary: a sweep's ``summary.json`` (``"kind": "sweep"``; see
            :mod:`regtorch.lab.analysis.sweep`).
    """
    title = (f"{summary.get('study', 'sweep')}: {summary.get('penalty', '?')} penalty "
             f"({summary.get('apply', '?')}), mean ± std over {summary.get('seeds', '?')} seeds")
    figures = {"path_loss": _path_loss_figure(summary, title),
               "path_weights": _path_weights_figure(summary, title)}
    if _path_has(summary, "test_acc"):
        figures["path_accuracy"] = _path_accuracy_figure(summary, title)
    return figures


def figure_names(summary: dict[str, Any]) -> tuple[str, ...]:
    """The names :func:`study_figures` or :func:`path_figures` give for this summary's run.

    Decided from the summary alone: a classification study's variants carry ``test_acc``.
    """
    if summary.get("kind") == "sweep":
        return ("path_loss", "path_weights",
                *(("path_accuracy",) if _path_has(summary, "test_acc") else ()))
    variants = summary.get("variants", {}).values()
    return ("loss", "weights", *(("accuracy",) if any("test_acc" in v for v in variants)
                                 else ()))


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes, reproducibly: no ``Software`` or other metadata is embedded."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


# -- a study: curves over epochs ----------------------------------------------------------------
class _Series:
    """One variant at its kept strength: its members' rows, by seed, split by divergence."""

    def __init__(self, name: str, strength: float | None, tuned: bool, colour: Any,
                 members: dict[Any, list[dict[str, Any]]]) -> None:
        self.name = name
        self.colour = colour
        self.alive = [rows for rows in members.values() if not any(r["diverged"] for r in rows)]
        self.diverged = len(members) - len(self.alive)
        self.legend = name if not tuned or strength is None else f"{name} (λ = {strength:g})"
        if self.diverged:
            self.legend += (f": all {self.diverged} diverged" if not self.alive else
                            f" ({self.diverged} of {len(members)} diverged, not shown)")

    def curve(self, key: str) -> tuple[list[float], list[float], list[float]]:
        """Epochs, mean and std of ``key`` over the members that did not diverge."""
        by_epoch: dict[int, list[float]] = defaultdict(list)
        for rows in self.alive:
            for row in rows:
                value = row.get(key)
                if value is not None:
                    by_epoch[row["epoch"]].append(value)
        epochs = sorted(by_epoch)
        stats = [_mean_std(by_epoch[e]) for e in epochs]
        return [float(e) for e in epochs], [m for m, _ in stats], [s for _, s in stats]


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and standard deviation (``ddof=1``; 0 for one value), two-pass in floats: exact to
    rounding for a handful of seeds (``statistics.stdev`` computes in fractions, 10× slower)."""
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _study_series(records: Sequence[dict[str, Any]], summary: dict[str, Any]) -> list[_Series]:
    members: dict[tuple[str, Any], dict[Any, list[dict]]] = defaultdict(lambda: defaultdict(list))
    strengths: dict[str, set] = defaultdict(set)
    for row in records:
        members[(row["variant"], row["strength"])][row["seed"]].append(row)
        strengths[row["variant"]].add(row["strength"])
    variants = summary.get("variants", {})
    colours = _colours(len(variants))
    series = []
    for i, (name, entry) in enumerate(variants.items()):
        kept = entry.get("strength")
        if (name, kept) not in members:
            continue
        series.append(_Series(name, kept, len(strengths[name]) > 1, colours[i],
                              members[(name, kept)]))
    return series


def _colours(n: int) -> list[Any]:
    palette = colormaps["tab10" if n <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(n)]


def _loss_figure(series: list[_Series], study: str, seeds: int) -> Figure:
    figure, ax = _figure(_SINGLE)
    for s in series:
        for key, split, style in (("train_loss", "train", "-"), ("test_loss", "test", "--")):
            _draw(ax, s.curve(key), f"{s.name}: {split}", s.colour, style, log=True)
    ax.set_yscale("log")
    _epoch_axis(ax)
    ax.set_ylabel("data loss (without the penalty)")
    ax.set_title(f"{study}: train (solid) vs test (dashed) loss, mean ± std over "
                 f"{_count(seeds, 'seed')}")
    _variant_legend(figure, series, [("train", "-"), ("test", "--")])
    return figure


def _weights_figure(series: list[_Series], study: str, seeds: int) -> Figure:
    figure, (norm_ax, sparsity_ax) = _figure(_WIDE, columns=2)
    for s in series:
        _draw(norm_ax, s.curve("weight_norm"), f"{s.name}: weight norm", s.colour, "-")
        _draw(sparsity_ax, s.curve("sparsity"), f"{s.name}: sparsity", s.colour, "-")
    norm_ax.set(ylabel=r"$\|w\|_2$ of the penalized weights", title="weight norm")
    sparsity_ax.set(ylabel="exact zeros (fraction of the weights)", title="sparsity")
    _epoch_axis(norm_ax)
    _epoch_axis(sparsity_ax)
    _sparsity_axis(sparsity_ax)
    figure.suptitle(f"{study}: weights, mean ± std over {_count(seeds, 'seed')}")
    _variant_legend(figure, series, [], title_lines=2)
    return figure


def _accuracy_figure(series: list[_Series], study: str, seeds: int) -> Figure:
    figure, ax = _figure(_SINGLE)
    for s in series:
        for key, split, style in (("train_acc", "train", "-"), ("test_acc", "test", "--")):
            _draw(ax, s.curve(key), f"{s.name}: {split}", s.colour, style)
    _epoch_axis(ax)
    ax.set(ylabel="accuracy", ylim=(0.0, 1.02))
    ax.set_title(f"{study}: train (solid) vs test (dashed) accuracy, mean ± std over "
                 f"{_count(seeds, 'seed')}")
    _variant_legend(figure, series, [("train", "-"), ("test", "--")])
    return figure


def _variant_legend(figure: Figure, series: list[_Series],
                    styles: list[tuple[str, str]], title_lines: int = 1) -> None:
    """One entry per variant (its colour), then one per line style (in black)."""
    handles = [Line2D([], [], color=s.colour, linewidth=2) for s in series]
    labels = [s.legend for s in series]
    for split, style in styles:
        handles.append(Line2D([], [], color="black", linestyle=style))
        labels.append(f"{split} ({'solid' if style == '-' else 'dashed'})")
    _legend(figure, handles, labels, title_lines)


def _legend(figure: Figure, handles: list[Any], labels: list[str], title_lines: int) -> None:
    """Below the axes, in as many columns as the figure's width holds (a legend beside the
    axes would collide with a long title); then the margins, for ``title_lines`` of title."""
    width = max((len(label) for label in labels), default=1) + _LEGEND_PADDING
    columns = max(1, min(len(labels), int(figure.get_figwidth() * _LEGEND_CHARS_PER_INCH
                                          // width)))
    figure.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0),
                  fontsize="small", ncols=columns)
    rows = -(-len(labels) // columns)
    width, height = figure.get_size_inches()
    bottom = _BELOW_AXES + rows * _LEGEND_ROW + 2 * _LEGEND_PAD
    top = title_lines * _TITLE_LINE + _TOP_PAD
    axes_width = (width - _LEFT - _RIGHT - _GAP) / 2  # of each of two axes side by side
    figure.subplots_adjust(left=_LEFT / width, right=1 - _RIGHT / width, bottom=bottom / height,
                           top=1 - top / height, wspace=_GAP / axes_width)


def _epoch_axis(ax: Axes) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# -- a sweep: values vs λ -----------------------------------------------------------------------
def _path_has(summary: dict[str, Any], key: str) -> bool:
    entries = [*summary.get("path", []), summary.get("unregularized") or {}]
    return any(key in entry for entry in entries)


def _path_curve(summary: dict[str, Any], key: str
                ) -> tuple[list[float], list[float], list[float]]:
    """λ, mean and std of ``key`` along the path, λ with a ``null`` mean left out."""
    points = [(p["lambda"], p[key], p.get(f"{key}_std") or 0.0)
              for p in summary.get("path", []) if p.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def _path_loss_figure(summary: dict[str, Any], title: str) -> Figure:
    figure, ax = _figure(_SINGLE)
    keys = [(f"{key}_loss", label, f"C{i}") for i, (key, label) in enumerate(_SPLITS)]
    _path_axes(ax, summary, keys, log_y=True)
    ax.set(xlabel="λ (log scale)", ylabel="final data loss (log scale)")
    ax.set_title(f"{title}\nloss vs λ")
    _legend(figure, *_legend_entries(ax), title_lines=2)
    return figure


def _path_weights_figure(summary: dict[str, Any], title: str) -> Figure:
    figure, (norm_ax, sparsity_ax) = _figure(_WIDE, columns=2)
    _path_axes(norm_ax, summary, [("weight_norm", "weight norm", "C0")])
    _path_axes(sparsity_ax, summary, [("sparsity", "sparsity", "C3")])
    norm_ax.set(xlabel="λ (log scale)", ylabel=r"final $\|w\|_2$ of the penalized weights",
                title="weight norm vs λ")
    sparsity_ax.set(xlabel="λ (log scale)", ylabel="exact zeros (fraction of the weights)",
                    title="sparsity vs λ")
    _sparsity_axis(sparsity_ax)
    figure.suptitle(title)
    handles, labels = _legend_entries(norm_ax)
    more_handles, more_labels = _legend_entries(sparsity_ax)
    for handle, label in zip(more_handles, more_labels):
        if label not in labels:
            handles.append(handle)
            labels.append(label)
    _legend(figure, handles, labels, title_lines=2)
    return figure


def _path_accuracy_figure(summary: dict[str, Any], title: str) -> Figure:
    figure, ax = _figure(_SINGLE)
    keys = [(f"{key}_acc", label, f"C{i}") for i, (key, label) in enumerate(_SPLITS)]
    _path_axes(ax, summary, keys)
    ax.set(xlabel="λ (log scale)", ylabel="final accuracy", ylim=(0.0, 1.02))
    ax.set_title(f"{title}\naccuracy vs λ")
    _legend(figure, *_legend_entries(ax), title_lines=2)
    return figure


def _path_axes(ax: Axes, summary: dict[str, Any], keys: list[tuple[str, str, str]],
               log_y: bool = False) -> None:
    """Draw ``keys`` (record key, label, colour) vs λ, the λ = 0 references and both choices."""
    zero = summary.get("unregularized") or {}
    for key, label, colour in keys:
        _draw(ax, _path_curve(summary, key), label, colour, "-", log=log_y, marker="o")
        value = zero.get(key)
        if value is not None and (value > 0 or not log_y):
            ax.axhline(value, color=colour, label=f"{label} at λ = 0", **_ZERO_STYLE)
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    diverged = [p["lambda"] for p in summary.get("path", []) if p.get("diverged")]
    if diverged:  # at the foot of the axes, whatever the y scale
        ax.plot(diverged, [0.03] * len(diverged), linestyle="none", marker="x",
                color="crimson", transform=ax.get_xaxis_transform(), clip_on=False,
                label=_DIVERGED_WORDS)
    for key, style, words in (("best_lambda", _BEST_STYLE, _BEST_WORDS),
                              ("lambda_1se", _ONE_SE_STYLE, _ONE_SE_WORDS)):
        lam = summary.get(key)
        if lam is not None and lam > 0:
            ax.axvline(lam, label=words.format(lam), **style)


def _legend_entries(ax: Axes) -> tuple[list[Any], list[str]]:
    """The axes' labelled lines (bands and unlabelled artists left out)."""
    handles = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    return handles, [line.get_label() for line in handles]


# -- shared pieces ------------------------------------------------------------------------------
def _figure(size: tuple[float, float], columns: int = 1) -> tuple[Figure, Any]:
    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)  # this figure renders with Agg, whatever pyplot's backend is
    axes = figure.subplots(1, columns)
    return figure, axes


def _draw(ax: Axes, curve: tuple[list[float], list[float], list[float]], label: str,
          colour: Any, style: str, log: bool = False, marker: str | None = None) -> None:
    """A mean line and its ±std band; on a log axis only positive means, the band clipped."""
    xs, means, stds = curve
    if log:
        keep = [i for i, m in enumerate(means) if m > 0]
        xs, means, stds = ([v[i] for i in keep] for v in (xs, means, stds))
    if not xs:
        return
    ax.plot(xs, means, color=colour, linestyle=style, label=label, marker=marker,
            markersize=3.5)
    if any(stds):
        lower = [m - s for m, s in zip(means, stds)]
        if log:
            lower = [max(low, LOG_BAND_FLOOR * m) for low, m in zip(lower, means)]
        upper = [m + s for m, s in zip(means, stds)]
        ax.fill_between(xs, lower, upper, color=colour, alpha=_BAND_ALPHA, linewidth=0,
                        label=f"_{label} ± std")


def _sparsity_axis(ax: Axes) -> None:
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
