"""The pictures of the lab: train/test curves of a study and the regularization path of a sweep.

Every function returns :class:`matplotlib.figure.Figure` objects drawn on their own
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`: no pyplot, no global state, no backend
switching, so importing this module changes nothing for a program that uses matplotlib itself.
:func:`study_plots` and :func:`path_plots` pair each figure with its caption (:class:`Plot`);
:func:`png_bytes` renders a figure; :mod:`regtorch.lab.present.report` writes and embeds the result.

**What a curve is.** Over the members (seeds) of one variant at one strength that did not diverge
— a member with any record marked ``diverged`` is left out entirely, as the summary leaves it out
— each point is the mean of the finite values at that epoch, with a band of ±1 standard
deviation (``ddof=1``, as in :mod:`regtorch.lab.analysis.summary`; none with one seed). A
``null`` value is skipped; an epoch or λ with no value at all has no point. On a log axis a band
whose lower edge would reach 0 is clipped at :data:`LOG_BAND_FLOOR` times the mean: an std as large
as the mean would otherwise stretch the axis down to nothing.

**Every legend entry shows.** Two variants whose curves coincide — within
:data:`COINCIDENT_FRACTION` of the axes' height at every point, on the axes' own scale — would hide
one another (``l2-3`` under ``wd-3``, two collapsed models at chance). Such a group is drawn so
that each member shows: the first widest, each next one narrower on top of it, each with its own
marker at staggered epochs; the legend repeats the marker, and the caption names the group.

**What is left out, and scaled.** A sparsity panel when no value of the run is non-zero (no
exact zeros anywhere: a flat 0 % line says nothing); accuracy axes span the data, not 0–1, and a
second panel zooms on the test accuracy of the last epochs among the variants within
:data:`ZOOM_WINDOW` of the best; a learning-rate figure is drawn only when the learning rate
varies; on a path, a λ = 0 reference that would stretch the axes by more than
:data:`REFERENCE_STRETCH` is not drawn as a line but as a marker at the edge of the axes, its
value in the legend.

**Line labels** identify the series for a reader of the figure object (tests, other tools):
``"<variant>: train"`` / ``"<variant>: validation"`` / ``"<variant>: test"`` (loss, accuracy),
``"<variant>: test (zoomed)"``, ``"<variant>: weight norm"`` / ``"<variant>: sparsity"`` /
``"<variant>: lr"``; on a path ``"train"``, ``"validation"``, ``"test"``, ``"weight norm"``,
``"sparsity"``, ``"<series> at λ = 0"`` (a horizontal line) or ``"<series> at λ = 0: <value>
(below|above the axes)"`` (a marker at the edge), the two choices as vertical lines labelled
``"best λ = <value> (...)"`` and ``"λ_1se = <value> (...)"``, and ``"λ where members diverged
(×)"`` (crosses at the foot of the axes). Legends show the variants' and the choices' labels.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter

__all__ = ["COINCIDENT_FRACTION", "LOG_BAND_FLOOR", "REFERENCE_STRETCH", "ZOOM_WINDOW", "Plot",
           "path_figures", "path_plots", "png_bytes", "study_figures", "study_plots"]

LOG_BAND_FLOOR = 0.1
"""On a log axis, a ±std band reaches down to at most this fraction of its mean (one decade)."""
COINCIDENT_FRACTION = 0.01
"""Two curves closer than this fraction of the axes' data span at every point (on the axes' own
scale: log10 on a log axis) coincide: a few pixels, one would hide the other."""
ZOOM_WINDOW = 0.05
"""The zoomed accuracy panel shows the variants whose final test accuracy is within this of the
best one (absolute accuracy)."""
ZOOM_EPOCHS = 0.25
"""The zoomed accuracy panel shows this last fraction of the epochs (at least two epochs)."""
REFERENCE_STRETCH = 1.5
"""A path's λ = 0 reference is a line only if it stretches the axes' span by at most this factor;
farther away it is a marker at the edge, so the path keeps the axes' range."""

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
_LINE_WIDTH = 1.5
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # one per member of a coincident group
_MARKS_PER_LINE = 8     # markers along a coincident curve
_SPLITS = (("train", "train"), ("val", "validation"), ("test", "test"))
# A study's lines per split: train solid, validation dotted, test dashed.
_STUDY_SPLITS = (("train", "train", "-"), ("val", "validation", ":"), ("test", "test", "--"))
_STYLE_WORDS = {"-": "solid", ":": "dotted", "--": "dashed"}
# On a path: best_lambda and lambda_1se as vertical lines, λ = 0 as horizontal ones.
_BEST_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}
_ONE_SE_STYLE = {"color": "dimgray", "linestyle": "-.", "linewidth": 1.2}
_ZERO_STYLE = {"linestyle": (0, (1, 3)), "linewidth": 1.2, "alpha": 0.9}
_BEST_WORDS = "best λ = {:.3g} (lowest mean validation loss)"
_ONE_SE_WORDS = "λ_1se = {:.3g} (largest λ within one SE of the best)"
_DIVERGED_WORDS = "λ where members diverged (×)"
_COINCIDE_WORDS = ("Curves that coincide are drawn on top of one another, the first widest and "
                   "each with its own markers: {}.")


@dataclass(frozen=True)
class Plot:
    """A figure and its caption (what the figure shows, and what it had to do to show it)."""

    figure: Figure
    caption: str


def study_figures(records: Sequence[dict[str, Any]], summary: dict[str, Any]
                  ) -> dict[str, Figure]:
    """The figures of :func:`study_plots`, without their captions."""
    return {name: plot.figure for name, plot in study_plots(records, summary).items()}


def path_figures(summary: dict[str, Any]) -> dict[str, Figure]:
    """The figures of :func:`path_plots`, without their captions."""
    return {name: plot.figure for name, plot in path_plots(summary).items()}


def study_plots(records: Sequence[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Plot]:
    """The figures of a study with their captions, by name, in display order.

    * ``"loss"``: train (solid), validation (dotted) and test (dashed) data loss vs epoch, log
      y-axis, one colour per variant (the same for its lines), mean ± std over the seeds that
      did not diverge;
    * ``"weights"``: ‖w‖₂ vs epoch and, when some weight of the run is exactly 0, sparsity
      (fraction of exact zeros) vs epoch beside it;
    * ``"accuracy"``: train (solid) and test (dashed) accuracy vs epoch, and the test accuracy
      of the last epochs zoomed on the best variants — only when the records carry
      ``test_acc`` (classification);
    * ``"lr"``: the learning rate vs epoch (log) — only when it varies.

    A tuned variant (several strengths in the records) is drawn at the strength the summary kept
    (``summary["variants"][name]["strength"]``); variants are drawn in the summary's order.

    Args:
        records: the rows of ``metrics.jsonl`` (see :mod:`regtorch.lab.schema`).
        summary: the study's ``summary.json`` (see :mod:`regtorch.lab.analysis.summary`).
    """
    series = _study_series(records, summary)
    seeds = summary.get("seeds") or len({r["seed"] for r in records})
    study = summary.get("study", "study")
    plots = {"loss": _loss_figure(series, study, seeds),
             "weights": _weights_figure(series, study, seeds,
                                        any(r.get("sparsity") for r in records))}
    if any(r.get("test_acc") is not None for r in records):
        plots["accuracy"] = _accuracy_figure(series, study, seeds)
    if _varies(r.get("lr") for r in records):
        plots["lr"] = _lr_figure(series, study)
    return plots


def path_plots(summary: dict[str, Any]) -> dict[str, Plot]:
    """The figures of a sweep's regularization path with their captions, by name, in order.

    * ``"path_loss"``: mean train / validation / test loss vs λ (log x, log y) with ±std bands;
    * ``"path_weights"``: ‖w‖₂ vs λ and, when some weight is exactly 0, sparsity vs λ (log x);
    * ``"path_accuracy"``: train / validation / test accuracy vs λ — classification only (the
      path entries carry ``test_acc``).

    Every axes marks ``best_lambda`` (dashed) and ``lambda_1se`` (dash-dotted) with vertical lines
    whose legend entries give their values, and the unregularized model's value (λ = 0, trained
    alongside) with a dotted horizontal line in the series' colour (a marker at the edge when it
    lies far off the path: :data:`REFERENCE_STRETCH`). A λ whose members all diverged (``null``
    means) has no point; every λ at which a member diverged gets a red cross at the foot of the
    axes.

    Args:
        summary: a sweep's ``summary.json`` (``"kind": "sweep"``; see
            :mod:`regtorch.lab.analysis.sweep`).
    """
    title = (f"{summary.get('study', 'sweep')}: {summary.get('penalty', '?')} penalty "
             f"({summary.get('apply', '?')}), mean ± std over {summary.get('seeds', '?')} seeds")
    plots = {"path_loss": _path_loss_figure(summary, title),
             "path_weights": _path_weights_figure(summary, title)}
    if _path_has(summary, "test_acc"):
        plots["path_accuracy"] = _path_accuracy_figure(summary, title)
    return plots


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes, reproducibly: no ``Software`` or other metadata is embedded."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


# -- a study: curves over epochs ----------------------------------------------------------------
_Curve = tuple[list[float], list[float], list[float]]


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
        self._curves: dict[str, _Curve] = {}

    def curve(self, key: str) -> _Curve:
        """Epochs, mean and std of ``key`` over the members that did not diverge."""
        if key not in self._curves:
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for rows in self.alive:
                for row in rows:
                    value = row.get(key)
                    if value is not None:
                        by_epoch[row["epoch"]].append(value)
            epochs = sorted(by_epoch)
            stats = [_mean_std(by_epoch[e]) for e in epochs]
            self._curves[key] = ([float(e) for e in epochs], [m for m, _ in stats],
                                 [s for _, s in stats])
        return self._curves[key]


@dataclass(frozen=True)
class _Look:
    """How a variant's lines are drawn in one figure: plain, or as a member of a group of
    coincident curves (a width and a marker at staggered epochs)."""

    width: float = _LINE_WIDTH
    marker: str | None = None
    rank: int = 0    # its place in the group (markers start at staggered epochs)
    size: int = 1    # how many the group holds

    def marks(self, points: int) -> tuple[int, int] | None:
        if self.marker is None:
            return None
        step = max(self.size, points // _MARKS_PER_LINE)  # each member its own epochs
        return (self.rank * step) // self.size, step


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


def _varies(values: Any) -> bool:
    """Whether the non-null values differ (by more than rounding)."""
    finite = [v for v in values if v is not None]
    return bool(finite) and max(finite) - min(finite) > 1e-12 * max(abs(v) for v in finite)


# Coincident curves ------------------------------------------------------------------------
def _transform(values: list[float], log: bool) -> list[float]:
    return [math.log10(v) for v in values] if log else list(values)


def _coincide(a: _Curve, b: _Curve, tolerance: float, log: bool) -> bool:
    """Same epochs, and every mean within ``tolerance`` on the axes' scale (an empty curve
    coincides with nothing: it draws nothing)."""
    if not a[0] or a[0] != b[0]:
        return False
    if log and (min(a[1]) <= 0 or min(b[1]) <= 0):
        return False
    ta, tb = _transform(a[1], log), _transform(b[1], log)
    return max(abs(x - y) for x, y in zip(ta, tb)) <= tolerance


def _looks(series: list[_Series], panels: list[tuple[list[str], bool]]
           ) -> tuple[dict[str, _Look], str]:
    """How each variant is drawn in a figure whose ``panels`` are (keys drawn, log scale), and
    the caption's sentence on the groups of coincident variants (empty when none coincide).

    Two variants are in one group when, on some panel, every key's curves coincide
    (:data:`COINCIDENT_FRACTION` of that panel's data span)."""
    parent = list(range(len(series)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for keys, log in panels:
        values = [t for s in series for key in keys
                  for t in _transform([m for m in s.curve(key)[1] if m > 0 or not log], log)]
        if not values:
            continue
        tolerance = COINCIDENT_FRACTION * max(max(values) - min(values), 1e-12)
        for i in range(len(series)):
            for j in range(i + 1, len(series)):
                if all(_coincide(series[i].curve(k), series[j].curve(k), tolerance, log)
                       for k in keys):
                    parent[root(j)] = root(i)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(series)):
        groups[root(i)].append(i)
    looks, words = {}, []
    for members in groups.values():
        if len(members) == 1:
            continue
        for rank, i in enumerate(members):
            looks[series[i].name] = _Look(width=_LINE_WIDTH * (len(members) - rank),
                                          marker=_MARKERS[rank % len(_MARKERS)], rank=rank,
                                          size=len(members))
        words.append(" = ".join(series[i].name for i in members))
    return looks, (_COINCIDE_WORDS.format("; ".join(words)) if words else "")


def _caption(*sentences: str) -> str:
    return " ".join(s for s in sentences if s)


# Figures ------------------------------------------------------------------------------------
def _loss_figure(series: list[_Series], study: str, seeds: int) -> Plot:
    figure, ax = _figure(_SINGLE)
    splits = [(split, label, style) for split, label, style in _STUDY_SPLITS
              if any(s.curve(f"{split}_loss")[0] for s in series)]
    looks, coincide = _looks(series, [([f"{split}_loss" for split, _, _ in splits], True)])
    for s in series:
        look = looks.get(s.name, _Look())
        for split, label, style in splits:
            _draw(ax, s.curve(f"{split}_loss"), f"{s.name}: {label}", s.colour, style,
                  log=True, look=look)
    ax.set_yscale("log")
    _epoch_axis(ax)
    ax.set_ylabel("data loss (without the penalty)")
    words = _split_words(splits)
    ax.set_title(f"{study}: {words} loss, mean ± std over {_count(seeds, 'seed')}")
    _variant_legend(figure, series, looks, [(label, style) for _, label, style in splits])
    caption = (f"Data loss per epoch, {words}, log scale: the mean over the seeds that did not "
               f"diverge, with a ±1 std band. Epoch 0 is before training; the validation loss "
               f"is the one that chose λ.")
    return Plot(figure, _caption(caption, coincide))


def _split_words(splits: list[tuple[str, str, str]]) -> str:
    words = [f"{label} ({_STYLE_WORDS[style]})" for _, label, style in splits]
    return ", ".join(words[:-1]) + f" and {words[-1]}" if len(words) > 1 else "".join(words)


def _weights_figure(series: list[_Series], study: str, seeds: int, sparse: bool) -> Plot:
    if sparse:
        figure, (norm_ax, sparsity_ax) = _figure(_WIDE, columns=2)
    else:
        figure, norm_ax = _figure(_SINGLE)
        sparsity_ax = None
    panels = [(["weight_norm"], False)] + ([(["sparsity"], False)] if sparse else [])
    looks, coincide = _looks(series, panels)
    for s in series:
        look = looks.get(s.name, _Look())
        _draw(norm_ax, s.curve("weight_norm"), f"{s.name}: weight norm", s.colour, "-",
              look=look)
        if sparsity_ax is not None:
            _draw(sparsity_ax, s.curve("sparsity"), f"{s.name}: sparsity", s.colour, "-",
                  look=look)
    norm_ax.set(ylabel=r"$\|w\|_2$ of the penalized weights", title="weight norm")
    _epoch_axis(norm_ax)
    if sparsity_ax is not None:
        sparsity_ax.set(ylabel="exact zeros (fraction of the weights)", title="sparsity")
        _epoch_axis(sparsity_ax)
        _sparsity_axis(sparsity_ax)
        caption = "‖w‖₂ of the penalized weights and their fraction of exact zeros, per epoch."
    else:
        caption = ("‖w‖₂ of the penalized weights per epoch. No weight of this run is exactly 0 "
                   "(no proximal step): there is no sparsity panel.")
    figure.suptitle(f"{study}: weights, mean ± std over {_count(seeds, 'seed')}")
    _variant_legend(figure, series, looks, [], title_lines=2)
    return Plot(figure, _caption(caption, coincide))


def _accuracy_figure(series: list[_Series], study: str, seeds: int) -> Plot:
    figure, (ax, zoom_ax) = _figure(_WIDE, columns=2)
    looks, coincide = _looks(series, [(["train_acc", "test_acc"], False)])
    for s in series:
        look = looks.get(s.name, _Look())
        for split, style in (("train", "-"), ("test", "--")):
            _draw(ax, s.curve(f"{split}_acc"), f"{s.name}: {split}", s.colour, style,
                  look=look)
    _epoch_axis(ax)
    ax.set(ylabel="accuracy", title="train (solid) and test (dashed) accuracy")
    below = _zoom(zoom_ax, series, looks)
    figure.suptitle(f"{study}: accuracy, mean ± std over {_count(seeds, 'seed')}")
    _variant_legend(figure, series, looks, [("train", "-"), ("test", "--")], title_lines=2)
    caption = ("Train (solid) and test (dashed) accuracy per epoch, the axis scaled to the data; "
               f"right: the test accuracy of the last epochs, zoomed on the variants within "
               f"{ZOOM_WINDOW:g} of the best final test accuracy")
    caption += f" ({', '.join(below)} below, not shown)." if below else "."
    return Plot(figure, _caption(caption, coincide))


def _zoom(ax: Axes, series: list[_Series], looks: dict[str, _Look]) -> list[str]:
    """The test accuracy of the last epochs of the variants near the best; return the names of
    the variants left out (too far below)."""
    finals = {s.name: s.curve("test_acc")[1][-1] for s in series if s.curve("test_acc")[1]}
    best = max(finals.values(), default=None)
    shown = [s for s in series if s.name in finals and finals[s.name] >= best - ZOOM_WINDOW]
    last = max((s.curve("test_acc")[0][-1] for s in shown), default=0.0)
    first = last - max(2.0, round(ZOOM_EPOCHS * last))
    zoomed = [_Zoomed(s, first) for s in shown]
    # Curves apart at full scale may still coincide here: this panel's own groups.
    own, _ = _looks(zoomed, [(["test_acc"], False)])  # type: ignore[arg-type]
    for z in zoomed:
        look = own.get(z.name, _Look())
        if look.marker is not None and z.name in looks:  # the marker the legend shows
            look = replace(look, marker=looks[z.name].marker)
        _draw(ax, z.curve("test_acc"), f"{z.name}: test (zoomed)", z.colour, "--", look=look,
              band=False)
    _epoch_axis(ax)
    ax.set(ylabel="test accuracy", title="test accuracy, last epochs (zoomed)")
    return [s.name for s in series if s.name in finals and s not in shown]


class _Zoomed:
    """A series' test accuracy from epoch ``first`` on (what the zoomed panel draws)."""

    def __init__(self, series: _Series, first: float) -> None:
        self.name, self.colour = series.name, series.colour
        xs, means, stds = series.curve("test_acc")
        keep = [i for i, x in enumerate(xs) if x >= first]
        self._curve = ([xs[i] for i in keep], [means[i] for i in keep], [stds[i] for i in keep])

    def curve(self, key: str) -> _Curve:
        return self._curve


def _lr_figure(series: list[_Series], study: str) -> Plot:
    figure, ax = _figure(_SINGLE)
    looks, coincide = _looks(series, [(["lr"], True)])
    for s in series:
        _draw(ax, s.curve("lr"), f"{s.name}: lr", s.colour, "-", log=True,
              look=looks.get(s.name, _Look()))
    ax.set_yscale("log")
    _epoch_axis(ax)
    ax.set(ylabel="learning rate (log scale)")
    ax.set_title(f"{study}: learning rate per epoch")
    _variant_legend(figure, series, looks, [])
    caption = "The learning rate of each variant per epoch (log scale), the mean over its seeds."
    return Plot(figure, _caption(caption, coincide))


def _variant_legend(figure: Figure, series: list[_Series], looks: dict[str, _Look],
                    styles: list[tuple[str, str]], title_lines: int = 1) -> None:
    """One entry per variant (its colour, and its marker in a coincident group), then one per
    line style (in black)."""
    handles = []
    for s in series:
        if not s.alive:  # nothing drawn: a cross, not a line the axes would not show
            handles.append(Line2D([], [], color=s.colour, linestyle="none", marker="x"))
            continue
        look = looks.get(s.name, _Look())
        handles.append(Line2D([], [], color=s.colour, linewidth=2, marker=look.marker))
    labels = [s.legend for s in series]
    for split, style in styles:
        handles.append(Line2D([], [], color="black", linestyle=style))
        labels.append(f"{split} ({_STYLE_WORDS[style]})")
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


def _path_curve(summary: dict[str, Any], key: str) -> _Curve:
    """λ, mean and std of ``key`` along the path, λ with a ``null`` mean left out."""
    points = [(p["lambda"], p[key], p.get(f"{key}_std") or 0.0)
              for p in summary.get("path", []) if p.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def _path_loss_figure(summary: dict[str, Any], title: str) -> Plot:
    figure, ax = _figure(_SINGLE)
    keys = [(f"{key}_loss", label, f"C{i}") for i, (key, label) in enumerate(_SPLITS)]
    off = _path_axes(ax, summary, keys, log_y=True)
    ax.set(xlabel="λ (log scale)", ylabel="final data loss (log scale)")
    ax.set_title(f"{title}\nloss vs λ")
    _legend(figure, *_legend_entries(ax), title_lines=2)
    caption = ("Final train, validation and test loss vs λ (log–log), mean ± std over the "
               "seeds. Vertical lines: best λ (dashed) and λ_1se (dash-dotted); dotted "
               "horizontal lines: the unregularized model (λ = 0).")
    return Plot(figure, _caption(caption, _off_words(off)))


def _off_words(off: list[str]) -> str:
    if not off:
        return ""
    return (f"{'; '.join(off)}: so far from the path that a line would squeeze it, so a "
            f"triangle at the edge of the axes marks it, with its value in the legend.")


def _path_weights_figure(summary: dict[str, Any], title: str) -> Plot:
    sparse = any(p.get("sparsity") for p in [*summary.get("path", []),
                                               summary.get("unregularized") or {}])
    if sparse:
        figure, (norm_ax, sparsity_ax) = _figure(_WIDE, columns=2)
    else:
        figure, norm_ax = _figure(_SINGLE)
        sparsity_ax = None
    off = _path_axes(norm_ax, summary, [("weight_norm", "weight norm", "C0")])
    norm_ax.set(xlabel="λ (log scale)", ylabel=r"final $\|w\|_2$ of the penalized weights",
                title="weight norm vs λ")
    handles, labels = _legend_entries(norm_ax)
    if sparsity_ax is not None:
        off += _path_axes(sparsity_ax, summary, [("sparsity", "sparsity", "C3")])
        sparsity_ax.set(xlabel="λ (log scale)", ylabel="exact zeros (fraction of the weights)",
                        title="sparsity vs λ")
        _sparsity_axis(sparsity_ax)
        for handle, label in zip(*_legend_entries(sparsity_ax)):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
        caption = "Final ‖w‖₂ of the penalized weights and their fraction of exact zeros vs λ."
    else:
        caption = ("Final ‖w‖₂ of the penalized weights vs λ. No weight of the path is exactly "
                   "0 (no proximal step): there is no sparsity panel.")
    figure.suptitle(title)
    _legend(figure, handles, labels, title_lines=2)
    return Plot(figure, _caption(caption, _off_words(off)))


def _path_accuracy_figure(summary: dict[str, Any], title: str) -> Plot:
    figure, ax = _figure(_SINGLE)
    keys = [(f"{key}_acc", label, f"C{i}") for i, (key, label) in enumerate(_SPLITS)]
    off = _path_axes(ax, summary, keys)
    ax.set(xlabel="λ (log scale)", ylabel="final accuracy")
    ax.set_title(f"{title}\naccuracy vs λ")
    _legend(figure, *_legend_entries(ax), title_lines=2)
    caption = "Final train, validation and test accuracy vs λ, the axis scaled to the data."
    return Plot(figure, _caption(caption, _off_words(off)))


def _path_axes(ax: Axes, summary: dict[str, Any], keys: list[tuple[str, str, str]],
               log_y: bool = False) -> list[str]:
    """Draw ``keys`` (record key, label, colour) vs λ, the λ = 0 references and both choices;
    return the labels of the references drawn at the edge (too far off the path)."""
    zero = summary.get("unregularized") or {}
    span = _path_span([_path_curve(summary, key) for key, _, _ in keys], log_y)
    off, edge = [], 0
    for key, label, colour in keys:
        _draw(ax, _path_curve(summary, key), label, colour, "-", log=log_y, marker="o")
        value = zero.get(key)
        if value is None or (log_y and value <= 0):
            continue
        place = _reference_place(value, span, log_y)
        if place == "line":
            ax.axhline(value, color=colour, label=f"{label} at λ = 0", **_ZERO_STYLE)
            continue
        words = f"{label} at λ = 0: {value:.3g} ({place} the axes)"
        ax.plot([0.97 - 0.035 * edge], [0.03 if place == "below" else 0.97],
                transform=ax.transAxes, linestyle="none",
                marker="v" if place == "below" else "^", markersize=9, color=colour,
                clip_on=False, label=words)
        off.append(words)
        edge += 1
    if off and span is not None:  # the path keeps its range: the references do not stretch it
        low, high = span
        ax.set_ylim(*((10 ** low, 10 ** high) if log_y else (low, high)))
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
    return off


def _path_span(curves: list[_Curve], log: bool) -> tuple[float, float] | None:
    """The y range the path's means and bands take, padded by 5 % (log10 on a log axis)."""
    values = []
    for _, means, stds in curves:
        for m, s in zip(means, stds):
            values += [m - s if not log else max(m - s, LOG_BAND_FLOOR * m), m + s]
    values = [v for v in values if v > 0 or not log]
    if not values:
        return None
    t = _transform(values, log)
    low, high = min(t), max(t)
    pad = 0.05 * (high - low) if high > low else (0.05 if log else 0.05 * abs(high) or 0.05)
    return low - pad, high + pad


def _reference_place(value: float, span: tuple[float, float] | None, log: bool) -> str:
    """``"line"`` if a horizontal line at ``value`` keeps the path's range (stretches the span
    by at most :data:`REFERENCE_STRETCH`), else where it lies: ``"below"`` or ``"above"``."""
    if span is None:
        return "line"
    t = math.log10(value) if log else value
    low, high = span
    if (max(high, t) - min(low, t)) <= REFERENCE_STRETCH * (high - low):
        return "line"
    return "below" if t < low else "above"


def _legend_entries(ax: Axes) -> tuple[list[Any], list[str]]:
    """The axes' labelled lines (bands and unlabelled artists left out)."""
    handles = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    return handles, [line.get_label() for line in handles]


# -- shared pieces ------------------------------------------------------------------------------
def _figure(size: tuple[float, float], columns: int = 1) -> tuple[Figure, Any]:
    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)  # this figure renders with Agg, whatever pyplot's backend is
    axes = figure.subplots(1, columns)
    for ax in figure.axes:
        # A title placed at the top of the axes, not above whatever might stick out there (no
        # axes here has a top axis): finding that measures every tick, a third of the drawing.
        ax.set_title("", y=1.0)
    return figure, axes


def _draw(ax: Axes, curve: _Curve, label: str, colour: Any, style: str, log: bool = False,
          marker: str | None = None, look: _Look | None = None, band: bool = True) -> None:
    """A mean line and its ±std band; on a log axis only positive means, the band clipped.
    ``look``: the width and staggered markers of a member of a coincident group."""
    xs, means, stds = curve
    if log:
        keep = [i for i, m in enumerate(means) if m > 0]
        xs, means, stds = ([v[i] for i in keep] for v in (xs, means, stds))
    if not xs:
        return
    look = look or _Look()
    ax.plot(xs, means, color=colour, linestyle=style, label=label,
            marker=look.marker or marker, markevery=look.marks(len(xs)),
            markersize=6.0 if look.marker else 3.5, linewidth=look.width)
    if band and any(stds):
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
