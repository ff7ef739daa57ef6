"""Plots and HTML reports: the figures carry the expected series, the pages are self-contained.

Expected values come from the records themselves, averaged here with NumPy, and from the
summary's own table functions (the page must show what the console shows). Figures are inspected
as objects (lines, labels, data, scales) and, for what a reader can see (every legend entry in
its axes), as rendered pixels (:mod:`figure_pixels`).
"""

from __future__ import annotations

import base64
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from figure_pixels import hidden_entries
from matplotlib.collections import PolyCollection

from regtorch.lab import atomic as output
from regtorch.lab.atomic import write_bytes
from regtorch.lab.cli import main
from regtorch.lab.present.plots import (
    LOG_BAND_FLOOR,
    REFERENCE_STRETCH,
    ZOOM_WINDOW,
    path_figures,
    path_plots,
    png_bytes,
    study_figures,
    study_plots,
)
from regtorch.lab.present.report import (
    ReportError,
    headline,
    regenerate,
    update_index,
    write_index,
    write_report,
)
from regtorch.lab.present.tables import path_rows, table_rows

RTOL = 1e-12  # the figure holds the same float64 means, up to summation order
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEEDS, EPOCHS = 3, 4
# name → strengths in the records; "l2" is tuned (the summary keeps 1.0), one "l1" member and
# every "huge" member diverge at epoch 2.
PLAN = {"none": [None], "l2": [0.1, 1.0], "l1": [0.5], "huge": [100.0]}
KEPT = {"none": None, "l2": 1.0, "l1": 0.5, "huge": 100.0}
FORBIDDEN = ("http:", "https:", 'src="//', "href=\"//", "<script", "<link", "url(")


# -- hand-made runs -------------------------------------------------------------------------------
def _diverged(name: str, seed: int, epoch: int) -> bool:
    return epoch >= 2 and (name == "huge" or (name == "l1" and seed == 2))


def make_records(classification: bool = False) -> list[dict]:
    """Records in the metrics.jsonl schema, with spread between seeds (bands) and divergence."""
    rng = np.random.default_rng(0)
    rows = []
    for name, strengths in PLAN.items():
        for lam in strengths:
            for seed in range(SEEDS):
                for epoch in range(EPOCHS + 1):
                    gone = _diverged(name, seed, epoch)
                    base = float(rng.uniform(0.5, 2.0)) / (epoch + 1)
                    # "none"'s test loss spreads over two decades: its band must be clipped.
                    spread = (0.01, 1.0, 10.0)[seed] if name == "none" else 1.5
                    row = {"variant": name, "strength": lam, "seed": seed, "epoch": epoch,
                           "train_loss": base, "val_loss": base * 1.2,
                           "test_loss": base * spread, "penalty": 0.0,
                           "weight_norm": float(rng.uniform(1, 3)),
                           "sparsity": float(rng.uniform(0, 1)), "lr": 0.1,
                           "diverged": gone}
                    if classification:
                        row["train_acc"] = float(rng.uniform(0.5, 1))
                        row["test_acc"] = float(rng.uniform(0.5, 1))
                        row["val_acc"] = float(rng.uniform(0.5, 1))
                    if gone:
                        for key in row:
                            if key.endswith(("_loss", "_acc")) or key in ("weight_norm",
                                                                          "sparsity"):
                                row[key] = None
                    rows.append(row)
    return rows


def make_entry(strength, verdict: str, classification: bool = False, **values) -> dict:
    """A variant of a study summary, with every key table_rows reads."""
    entry = {"train_loss": 1.0, "train_loss_std": 0.1, "val_loss": 1.2, "val_loss_std": 0.1,
             "test_loss": 1.5, "test_loss_std": 0.2, "test_train_ratio": 1.5,
             "weight_norm": 2.0, "weight_norm_std": 0.3, "sparsity": 0.25, "diverged": 0,
             "strength": strength, "verdict": verdict}
    if classification:
        entry.update(test_acc=0.9, test_acc_std=0.01)
    entry.update(values)
    return entry


def make_summary(classification: bool = False, verdict: str = "fine.") -> dict:
    variants = {name: make_entry(KEPT[name], f"{name}: {verdict}", classification)
                for name in PLAN}
    variants["l1"]["diverged"] = 1
    variants["huge"].update(diverged=3, train_loss=None, val_loss=None, test_loss=None,
                            test_train_ratio=None, weight_norm=None, sparsity=None)
    return {"study": "handmade", "seeds": SEEDS, "epochs": EPOCHS, "baseline": "none",
            "variants": variants, "notes": ["l2 and none differ <a lot> & more."]}


LAMBDAS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]


def make_sweep_summary(classification: bool = False) -> dict:
    """A sweep summary in the documented schema: a U-shaped validation loss, λ = 10 diverged."""
    def entry(lam: float | None, diverged: int = 0) -> dict:
        gone = diverged == SEEDS
        x = 0.0 if lam is None else np.log10(lam)
        losses = {"train_loss": 0.1 + 0.1 * (x + 3), "val_loss": 0.5 + 0.1 * (x + 1) ** 2,
                  "test_loss": 0.55 + 0.1 * (x + 1) ** 2}
        if lam is None:
            losses = {"train_loss": 0.05, "val_loss": 2.0, "test_loss": 2.2}
        out = {"diverged": diverged, "members": SEEDS}
        for key, value in losses.items():
            out[key] = None if gone else value
            out[f"{key}_std"] = None if gone else 0.1 * value
        out["val_loss_se"] = None if gone else 0.1 * losses["val_loss"] / np.sqrt(SEEDS)
        out.update(weight_norm=None if gone else 5.0 / (1 + (lam or 0)),
                   weight_norm_std=None if gone else 0.1,
                   sparsity=None if gone else min(1.0, (lam or 0) / 3),
                   sparsity_std=None if gone else 0.0)
        if classification:
            for key in ("train_acc", "val_acc", "test_acc"):
                out[key] = None if gone else 0.9 - 0.05 * x
                out[f"{key}_std"] = None if gone else 0.01
        return out

    path = [{"lambda": lam, **entry(lam, SEEDS if lam == 10.0 else 0)} for lam in LAMBDAS]
    return {"kind": "sweep", "study": "handmade-sweep-l1", "base": "handmade", "penalty": "l1",
            "apply": "prox", "params": "weights", "l1_ratio": None, "groups": None,
            "seeds": SEEDS, "epochs": EPOCHS, "grid": "searched", "lambda_max": 10.0,
            "lambda_max_rule": "weights ~0", "search": [
                {"lambda": 100.0, "val_loss": None, "weight_norm": None, "sparsity": None,
                 "diverged": True},
                {"lambda": 10.0, "val_loss": 0.9, "weight_norm": 0.0, "sparsity": 1.0,
                 "diverged": False}],
            "path": path, "unregularized": entry(None), "best_lambda": 0.1, "lambda_1se": 0.3,
            "best": path[4], "one_se": path[5], "notes": ["λ = 10: all 3 members diverged."]}


def write_run(directory: Path, config: dict, records: list[dict], summary: dict) -> Path:
    directory.mkdir(parents=True)
    output.write_json(directory / "config.json", config)
    output.write_jsonl(directory / "metrics.jsonl", records)
    output.write_json(directory / "summary.json", summary)
    return directory


def write_handmade_study(directory: Path, **summary_args) -> Path:
    config = {"name": "handmade", "description": "a <hand-made> study & its \"config\"",
              "seeds": SEEDS, "run": {"torch": "x", "regtorch": "y"}}
    return write_run(directory, config, make_records(), make_summary(**summary_args))


def write_handmade_sweep(directory: Path, classification: bool = False) -> Path:
    config = {"name": "handmade-sweep-l1", "seeds": SEEDS,
              "sweep": {"penalty": "l1", "lambdas": None}, "run": {"torch": "x"}}
    records = [{"variant": "unregularized", "strength": None, "seed": 0, "epoch": 0,
                "train_loss": 1.0, "val_loss": 1.0, "test_loss": 1.0, "penalty": 0.0,
                "weight_norm": 1.0, "sparsity": 0.0, "lr": 0.1, "diverged": False}]
    return write_run(directory, config, records, make_sweep_summary(classification))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real run directory: d2l-highdim, 2 seeds × 3 epochs (the console output is dropped)."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "d2l-highdim", "--seeds", "2", "--epochs", "3", "--out", str(out)]) == 0
    return out / "d2l-highdim"


# -- reading figures and pages -------------------------------------------------------------------
def mean_by_epoch(records, name, key, strength) -> tuple[np.ndarray, np.ndarray]:
    """The reference: per-epoch mean over the members of ``name`` at ``strength`` that never
    diverged."""
    seeds = {r["seed"] for r in records if r["variant"] == name and r["strength"] == strength}
    alive = [s for s in sorted(seeds) if not any(
        r["diverged"] for r in records
        if r["variant"] == name and r["strength"] == strength and r["seed"] == s)]
    table = np.array([[r[key] for r in sorted(
        (r for r in records if r["variant"] == name and r["strength"] == strength
         and r["seed"] == s), key=lambda r: r["epoch"])] for s in alive], dtype=float)
    return np.arange(table.shape[1], dtype=float), table.mean(axis=0)


def lines_by_label(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def legend_texts(figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


class Page(HTMLParser):
    """Tables (rows of (class, cells)), image sources, every URL-valued attribute, and text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[list[tuple[str, list[str]]]] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [value for key, value in attrs.items() if key in ("src", "href", "action")]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append((attrs.get("class") or "", []))
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1][1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table: int) -> tuple[list[str], list[list[str]]]:
        header, *body = self.tables[table]
        return header[1], [cells for _, cells in body]


def assert_self_contained(text: str) -> Page:
    for needle in FORBIDDEN:
        assert needle not in text.lower(), needle
    page = Page(text)
    assert page.images
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    for url in page.urls:  # only data URIs, in-page anchors and relative paths
        relative = ":" not in url and not url.startswith("/")
        assert url.startswith(("data:", "#")) or relative, url
    return page


def embedded_pngs(page: Page) -> list[bytes]:
    return [base64.b64decode(source.split(",", 1)[1]) for source in page.images]


# -- study figures ------------------------------------------------------------------------------
def test_loss_figure_has_a_solid_train_and_dashed_test_line_per_variant_at_the_mean():
    records, summary = make_records(), make_summary()
    figure = study_figures(records, summary)["loss"]
    ax, = figure.axes
    lines = lines_by_label(ax)
    assert set(lines) == {f"{name}: {split}" for name in ("none", "l2", "l1")
                          for split in ("train", "validation", "test")}  # "huge" diverged
    for name in ("none", "l2", "l1"):
        train, val, test = (lines[f"{name}: {split}"] for split in ("train", "validation",
                                                                    "test"))
        assert (train.get_linestyle(), val.get_linestyle(), test.get_linestyle()) == (
            "-", ":", "--")
        assert train.get_color() == val.get_color() == test.get_color()
        for line, key in ((train, "train_loss"), (val, "val_loss"), (test, "test_loss")):
            epochs, means = mean_by_epoch(records, name, key, KEPT[name])
            np.testing.assert_array_equal(line.get_xdata(), epochs)
            np.testing.assert_allclose(line.get_ydata(), means, rtol=RTOL)
    colours = {lines[f"{name}: train"].get_color() for name in ("none", "l2", "l1")}
    assert len(colours) == 3
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "epoch" and "loss" in ax.get_ylabel()
    assert "handmade" in ax.get_title() and f"{SEEDS} seeds" in ax.get_title()
    texts = legend_texts(figure)
    assert {"train (solid)", "validation (dotted)", "test (dashed)"} <= set(texts)
    assert "l2 (λ = 1)" in texts  # the tuned variant, at the strength the summary kept
    assert "l1 (1 of 3 diverged, not shown)" in texts
    assert "huge: all 3 diverged" in texts


def test_tuned_variant_is_drawn_at_the_kept_strength_only():
    records, summary = make_records(), make_summary()
    line = lines_by_label(study_figures(records, summary)["loss"].axes[0])["l2: train"]
    _, kept = mean_by_epoch(records, "l2", "train_loss", 1.0)
    _, other = mean_by_epoch(records, "l2", "train_loss", 0.1)
    np.testing.assert_allclose(line.get_ydata(), kept, rtol=RTOL)
    assert not np.allclose(line.get_ydata(), other)
    summary["variants"]["l2"]["strength"] = 0.1
    line = lines_by_label(study_figures(records, summary)["loss"].axes[0])["l2: train"]
    np.testing.assert_allclose(line.get_ydata(), other, rtol=RTOL)


def test_std_bands_stay_positive_on_the_log_axis():
    records = make_records()
    ax = study_figures(records, make_summary())["loss"].axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 9  # one per line: 3 seeds (or 2) give a non-zero std
    lowest = min(path.vertices[:, 1].min() for band in bands for path in band.get_paths())
    assert lowest > 0
    # "none"'s test loss spreads over two decades (std > mean): its band stops one decade down.
    _, means = mean_by_epoch(records, "none", "test_loss", None)
    assert lowest == pytest.approx(LOG_BAND_FLOOR * means.min(), rel=RTOL)


def test_weights_figure_has_norm_and_sparsity_per_variant():
    records = make_records()
    figure = study_figures(records, make_summary())["weights"]
    norm_ax, sparsity_ax = figure.axes
    for ax, key, label in ((norm_ax, "weight_norm", "weight norm"),
                           (sparsity_ax, "sparsity", "sparsity")):
        lines = lines_by_label(ax)
        assert set(lines) == {f"{name}: {label}" for name in ("none", "l2", "l1")}
        for name in ("none", "l2", "l1"):
            epochs, means = mean_by_epoch(records, name, key, KEPT[name])
            np.testing.assert_array_equal(lines[f"{name}: {label}"].get_xdata(), epochs)
            np.testing.assert_allclose(lines[f"{name}: {label}"].get_ydata(), means, rtol=RTOL)
        assert ax.get_xlabel() == "epoch"
    assert sparsity_ax.get_ylim()[0] < 0 and sparsity_ax.get_ylim()[1] > 1
    assert "handmade" in figure.get_suptitle() and f"{SEEDS} seeds" in figure.get_suptitle()
    assert {"none", "l2 (λ = 1)"} <= set(legend_texts(figure))


def test_accuracy_figure_only_for_classification():
    assert list(study_figures(make_records(), make_summary())) == ["loss", "weights"]
    records, summary = make_records(classification=True), make_summary(classification=True)
    figures = study_figures(records, summary)
    assert list(figures) == ["loss", "weights", "accuracy"]
    ax, _ = figures["accuracy"].axes
    lines = lines_by_label(ax)
    for name in ("none", "l2", "l1"):
        for split, style in (("train", "-"), ("test", "--")):
            _, means = mean_by_epoch(records, name, f"{split}_acc", KEPT[name])
            assert lines[f"{name}: {split}"].get_linestyle() == style
            np.testing.assert_allclose(lines[f"{name}: {split}"].get_ydata(), means, rtol=RTOL)
    assert f"{SEEDS} seeds" in figures["accuracy"].get_suptitle()


# -- path figures -------------------------------------------------------------------------------
def test_path_loss_figure_marks_both_choices_and_lambda_zero():
    summary = make_sweep_summary()
    figure = path_figures(summary)["path_loss"]
    ax, = figure.axes
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    lines = lines_by_label(ax)
    alive = [p for p in summary["path"] if p["train_loss"] is not None]
    assert len(alive) == len(LAMBDAS) - 1  # λ = 10 diverged: no point, no crash
    for key, label in (("train_loss", "train"), ("val_loss", "validation"),
                       ("test_loss", "test")):
        np.testing.assert_array_equal(lines[label].get_xdata(), [p["lambda"] for p in alive])
        np.testing.assert_allclose(lines[label].get_ydata(), [p[key] for p in alive], rtol=RTOL)
        zero = lines[f"{label} at λ = 0"]
        np.testing.assert_array_equal(zero.get_ydata(), [summary["unregularized"][key]] * 2)
    best = lines["best λ = 0.1 (lowest mean validation loss)"]
    one_se = lines["λ_1se = 0.3 (largest λ within one SE of the best)"]
    np.testing.assert_array_equal(best.get_xdata(), [0.1, 0.1])
    np.testing.assert_array_equal(one_se.get_xdata(), [0.3, 0.3])
    assert best.get_linestyle() != one_se.get_linestyle()
    texts = legend_texts(figure)
    assert best.get_label() in texts and one_se.get_label() in texts
    crosses = lines["λ where members diverged (×)"]  # marked, not fatal
    assert list(crosses.get_xdata()) == [10.0] and crosses.get_marker() == "x"
    assert crosses.get_label() in texts
    title = ax.get_title()
    assert "handmade-sweep-l1" in title and "l1" in title and f"{SEEDS} seeds" in title


def test_path_weights_figure_and_accuracy_for_classification():
    summary = make_sweep_summary()
    figures = path_figures(summary)
    assert list(figures) == ["path_loss", "path_weights"]
    norm_ax, sparsity_ax = figures["path_weights"].axes
    alive = [p for p in summary["path"] if p["weight_norm"] is not None]
    for ax, key, label in ((norm_ax, "weight_norm", "weight norm"),
                           (sparsity_ax, "sparsity", "sparsity")):
        assert ax.get_xscale() == "log"
        lines = lines_by_label(ax)
        np.testing.assert_allclose(lines[label].get_ydata(), [p[key] for p in alive], rtol=RTOL)
        marks = sorted(line.get_xdata()[0] for name, line in lines.items()
                       if name.startswith(("best λ", "λ_1se")))
        assert marks == [0.1, 0.3]
    summary = make_sweep_summary(classification=True)
    figures = path_figures(summary)
    assert list(figures) == ["path_loss", "path_weights", "path_accuracy"]
    lines = lines_by_label(figures["path_accuracy"].axes[0])
    alive = [p for p in summary["path"] if p["test_acc"] is not None]
    np.testing.assert_allclose(lines["test"].get_ydata(), [p["test_acc"] for p in alive],
                               rtol=RTOL)


def test_path_without_a_choice_draws_no_marker():
    summary = make_sweep_summary()
    for entry in summary["path"]:
        for key in list(entry):
            if key not in ("lambda", "diverged", "members"):
                entry[key] = None
    summary.update(best_lambda=None, lambda_1se=None, best=None, one_se=None)
    ax = path_figures(summary)["path_loss"].axes[0]
    assert set(lines_by_label(ax)) == {"train at λ = 0", "validation at λ = 0", "test at λ = 0",
                                       "λ where members diverged (×)"}


# -- what a reader can see ----------------------------------------------------------------------
def with_twin(records: list[dict], summary: dict, of: str = "none", twin: str = "twin"
              ) -> tuple[list[dict], dict]:
    """A variant ``twin`` whose records are ``of``'s: its curves coincide exactly."""
    records = records + [{**r, "variant": twin} for r in records if r["variant"] == of]
    summary = {**summary, "variants": {**summary["variants"],
                                       twin: dict(summary["variants"][of])}}
    return records, summary


@pytest.mark.parametrize("classification", [False, True], ids=["regression", "classification"])
def test_coincident_variants_both_show_and_the_caption_says_so(classification):
    records, summary = with_twin(make_records(classification), make_summary(classification))
    plots = study_plots(records, summary)
    for name, plot in plots.items():
        assert hidden_entries(plot.figure) == [], name  # every legend colour is in the axes
        assert "none = twin" in plot.caption, name
        for ax in plot.figure.axes:
            lines = lines_by_label(ax)
            pairs = [(lines[label], lines[label.replace("none", "twin", 1)])
                     for label in lines if label.startswith("none:")]
            if not pairs and "zoomed" in ax.get_title():
                continue  # none's random accuracy is too far below the best to be zoomed on
            assert pairs, (name, list(lines))
            for none, twin in pairs:  # the same data, drawn apart: width and marker differ
                np.testing.assert_array_equal(none.get_ydata(), twin.get_ydata())
                assert none.get_linewidth() > twin.get_linewidth()
                assert {none.get_marker(), twin.get_marker()} & {"None", None} == set()
                assert none.get_marker() != twin.get_marker()
                assert none.get_markevery() != twin.get_markevery()  # markers at other epochs
    # Variants apart keep a plain line, and no caption speaks of coincidence.
    for plot in study_plots(make_records(), make_summary()).values():
        assert "coincide" not in plot.caption
        assert all(line.get_marker() in ("None", None) for ax in plot.figure.axes
                   for line in ax.get_lines())


def test_without_exact_zeros_there_is_no_sparsity_panel():
    records = [{**r, "sparsity": None if r["sparsity"] is None else 0.0} for r in make_records()]
    plot = study_plots(records, make_summary())["weights"]
    norm_ax, = plot.figure.axes
    assert set(lines_by_label(norm_ax)) == {f"{n}: weight norm" for n in ("none", "l2", "l1")}
    assert "no sparsity panel" in plot.caption
    assert len(study_plots(make_records(), make_summary())["weights"].figure.axes) == 2
    summary = make_sweep_summary()
    for entry in [*summary["path"], summary["unregularized"]]:
        entry["sparsity"] = None if entry["sparsity"] is None else 0.0
    plot = path_plots(summary)["path_weights"]
    assert len(plot.figure.axes) == 1 and "no sparsity panel" in plot.caption


def test_accuracy_is_scaled_to_the_data_and_zoomed_on_the_best_variants():
    records, summary = make_records(classification=True), make_summary(classification=True)
    finals = {"none": 0.934, "l2": 0.937, "l1": 0.1, "huge": 0.5}  # l1 at chance
    for row in records:
        if row["test_acc"] is not None:
            row["test_acc"] = finals[row["variant"]] + 0.001 * row["seed"]
    plot = study_plots(records, summary)["accuracy"]
    full, zoom = plot.figure.axes
    low, high = full.get_ylim()
    assert low > 0.05 and high < 1.1  # the data's range, not a fixed 0–1
    low, high = zoom.get_ylim()
    assert high - low < 0.02 and low < 0.934 + 0.001 < 0.937 + 0.001 < high
    zoomed = lines_by_label(zoom)
    assert set(zoomed) == {"none: test (zoomed)", "l2: test (zoomed)"}
    assert zoomed["l2: test (zoomed)"].get_xdata()[-1] == EPOCHS
    assert f"within {ZOOM_WINDOW:g}" in plot.caption and "l1 below" in plot.caption


def test_a_learning_rate_figure_only_when_the_lr_varies():
    assert "lr" not in study_plots(make_records(), make_summary())  # lr 0.1 throughout
    records = [{**r, "lr": 0.1 * 0.5 ** r["epoch"] if r["variant"] == "l2" else r["lr"]}
               for r in make_records()]
    plot = study_plots(records, make_summary())["lr"]
    ax, = plot.figure.axes
    lines = lines_by_label(ax)
    np.testing.assert_allclose(lines["l2: lr"].get_ydata(), 0.1 * 0.5 ** np.arange(EPOCHS + 1),
                               rtol=RTOL)
    np.testing.assert_allclose(lines["none: lr"].get_ydata(), [0.1] * (EPOCHS + 1), rtol=RTOL)
    assert ax.get_yscale() == "log" and "learning rate" in plot.caption.lower()
    assert hidden_entries(plot.figure) == []


def test_a_far_reference_is_marked_at_the_edge_and_the_path_keeps_its_range():
    summary = make_sweep_summary()
    summary["unregularized"]["train_loss"] = 1e-9  # nine decades below the path
    plot = path_plots(summary)["path_loss"]
    ax, = plot.figure.axes
    lines = lines_by_label(ax)
    assert "train at λ = 0" not in lines  # no line squeezing the path
    words = "train at λ = 0: 1e-09 (below the axes)"
    mark = lines[words]
    assert mark.get_marker() == "v" and mark.get_transform() == ax.transAxes
    assert words in legend_texts(plot.figure) and words in plot.caption
    low, high = ax.get_ylim()
    path = [v for p in summary["path"] for k in ("train_loss", "val_loss", "test_loss")
            if (v := p[k]) is not None]
    assert np.log10(high / low) <= REFERENCE_STRETCH * np.log10(max(path) / min(path)) + 0.2
    assert low > 1e-3
    assert "validation at λ = 0" in lines and "test at λ = 0" in lines  # near ones stay lines
    assert "(below the axes)" not in path_plots(make_sweep_summary())["path_loss"].caption


def test_the_report_shows_the_validation_loss_that_chose_lambda(tmp_path):
    directory = tmp_path / "handmade"
    summary = make_summary()
    summary["variants"]["l2"]["candidates"] = [
        {"strength": 0.1, "val_loss": 1.6, "val_loss_std": 0.2, "test_loss": 1.7, "diverged": 0},
        {"strength": 1.0, "val_loss": 1.2, "val_loss_std": 0.1, "test_loss": 1.5, "diverged": 0}]
    config = {"name": "handmade", "seeds": SEEDS}
    write_run(directory, config, make_records(), summary)
    page = Page(write_report(directory).read_text(encoding="utf-8"))
    headers, rows = page.rows(1)  # after the comparison table
    assert headers == ["variant", "λ", "val loss", "test loss", "diverged", ""]
    assert rows == [["l2", "0.1", "1.6 ± 0.2", "1.7", "0/3", ""],
                    ["l2", "1", "1.2 ± 0.1", "1.5", "0/3", "chosen"]]
    assert [css for css, _ in page.tables[1][1:]] == ["", "chosen"]
    assert "Choice of λ on validation" in "".join(page.text)


def test_the_report_shows_the_run_s_warnings(tmp_path):
    summary = make_summary()
    summary["warnings"] = ["group lasso with Adam: <the prox> uses lr/(√v̂+ε) per element"]
    write_run(tmp_path / "handmade", {"name": "handmade", "seeds": SEEDS}, make_records(),
              summary)
    text = write_report(tmp_path / "handmade").read_text(encoding="utf-8")
    assert "<h2>Warnings</h2>" in text and "&lt;the prox&gt;" in text
    assert summary["warnings"][0] in "".join(Page(text).text)
    directory = write_handmade_study(tmp_path / "quiet")
    assert "Warnings" not in write_report(directory).read_text(encoding="utf-8")


def test_png_bytes_are_a_reproducible_png_without_software_metadata():
    figure = study_figures(make_records(), make_summary())["loss"]
    data = png_bytes(figure)
    assert data.startswith(PNG_SIGNATURE)
    assert b"Software" not in data and b"matplotlib" not in data.lower()
    assert png_bytes(study_figures(make_records(), make_summary())["loss"]) == data


# -- pages --------------------------------------------------------------------------------------
def test_study_report_is_self_contained_and_shows_the_console_table(trained):
    path = write_report(trained)
    assert path == trained / "report.html"
    text = path.read_text(encoding="utf-8")
    page = assert_self_contained(text)
    summary = json.loads((trained / "summary.json").read_text())
    headers, rows = table_rows(summary)
    assert page.rows(0) == (headers, rows)
    assert [row[0] for row in rows] == list(summary["variants"])  # every variant
    body = "".join(page.text)
    for entry in summary["variants"].values():
        assert entry["verdict"] in body
    for note in summary["notes"]:
        assert note in body
    config = json.loads((trained / "config.json").read_text())
    assert config["description"] in body and json.dumps(config, indent=2) in body
    assert "<details>" in text
    files = [(trained / f"{name}.png").read_bytes() for name in ("loss", "weights")]
    assert embedded_pngs(page) == files
    assert write_report(trained).read_text(encoding="utf-8") == text  # reproducible


def test_sweep_report_lists_every_lambda_and_marks_both_choices(tmp_path):
    directory = write_handmade_sweep(tmp_path / "handmade-sweep-l1")
    text = write_report(directory).read_text(encoding="utf-8")
    page = assert_self_contained(text)
    summary = make_sweep_summary()
    choices_headers, choices = page.rows(0)
    assert choices_headers == ["choice", "λ", "validation loss", "test loss"]
    assert [row[1] for row in choices] == ["0.1", "0.3", "0"]
    assert [row[3] for row in choices] == [
        f"{e['test_loss']:.4g} ± {e['test_loss_std']:.2g}"
        for e in (summary["best"], summary["one_se"], summary["unregularized"])]
    headers, rows = path_rows(summary)
    assert page.rows(1) == (headers, rows)
    assert [row[0] for row in rows] == [f"{lam:.4g}" for lam in LAMBDAS] + ["0"]
    classes = {cells[0]: css for css, cells in page.tables[1][1:]}
    assert classes["0.1"] == classes["0.3"] == "chosen"
    assert [css for css, _ in page.tables[1][1:]].count("chosen") == 2
    assert {row[-1] for row in rows if row[0] in ("0.1", "0.3")} == {"best", "1se"}
    assert "λ = 10: all 3 members diverged." in "".join(page.text)
    assert len(page.images) == 2
    assert sorted(p.name for p in directory.glob("*.png")) == ["path_loss.png",
                                                               "path_weights.png"]


def test_every_text_is_escaped(tmp_path):
    hostile = "<script>alert('x')</script> & λ < 1"
    directory = write_handmade_study(tmp_path / "handmade", verdict=hostile)
    text = write_report(directory).read_text(encoding="utf-8")
    assert "<script" not in text and "<hand-made>" not in text and "<a lot>" not in text
    assert "&lt;script&gt;" in text and "&lt;hand-made&gt;" in text
    body = "".join(Page(text).text)  # what a browser shows: the original characters
    assert f"none: {hostile}" in body
    assert "a <hand-made> study & its \"config\"" in body
    assert "l2 and none differ <a lot> & more." in body


def test_regenerate_an_out_directory_writes_every_report_then_the_index(trained, tmp_path):
    out = trained.parent
    write_handmade_sweep(out / "handmade-sweep-l1")
    write_handmade_study(out / "handmade")
    (out / "stray").mkdir()  # not a run directory: ignored
    (out / "stray" / "config.json").write_text("{}")
    written = regenerate(out)
    names = ["d2l-highdim", "handmade", "handmade-sweep-l1"]
    assert written == [out / name / "report.html" for name in names] + [out / "index.html"]
    assert_index(out, names)
    assert regenerate(trained) == [trained / "report.html"]  # one run directory


def assert_index(out: Path, names: list[str]) -> Page:
    """The index is an overview: one row per run, a link to its report, its headline; no
    figure, no report body (a few kB, not the reports concatenated)."""
    text = (out / "index.html").read_text(encoding="utf-8")
    assert len(text.encode()) < 20_000
    for needle in FORBIDDEN:
        assert needle not in text.lower(), needle
    page = Page(text)
    assert page.images == []
    headers, rows = page.rows(0)
    assert headers == ["run", "what", "headline"]
    assert [row[0] for row in rows] == names
    for name, row in zip(names, rows):
        assert f'href="{name}/report.html"' in text
        summary = json.loads((out / name / "summary.json").read_text())
        assert row[2] == headline(summary)
    return page


def test_headline_names_the_best_variant_against_the_baseline():
    summary = make_summary()
    summary["variants"]["l2"]["test_loss"] = 0.75  # half the baseline's 1.5
    assert headline(summary) == ("lowest test loss: l2 (0.75) vs the baseline none (1.5, "
                                 "-50%); diverged: l1, huge")
    summary["variants"]["l2"]["test_loss"] = 0.015
    assert headline(summary).startswith("lowest test loss: l2 (0.015) vs the baseline none "
                                        "(1.5, 100× lower)")
    summary["variants"]["l2"]["test_loss"] = 1.5
    assert headline(summary).startswith("lowest test loss: none (1.5) — the baseline itself")
    classification = make_summary(classification=True)
    classification["variants"]["l1"]["test_acc"] = 0.95
    assert headline(classification).startswith(
        "best test accuracy: l1 (0.95) vs the baseline none (0.9)")
    sweep = make_sweep_summary()
    best, zero = sweep["best"], sweep["unregularized"]
    assert headline(sweep) == (f"l1: best λ = 0.1 (on validation), test loss "
                               f"{best['test_loss']:.4g} vs {zero['test_loss']:.4g} at λ = 0, "
                               f"{best['sparsity']:.0%} exact zeros")


def test_write_index_in_the_order_given(tmp_path):
    write_handmade_study(tmp_path / "b")
    write_handmade_sweep(tmp_path / "a")
    assert write_index(tmp_path, [tmp_path / "b", tmp_path / "a"]) == tmp_path / "index.html"
    rows = Page((tmp_path / "index.html").read_text(encoding="utf-8")).rows(0)[1]
    assert [row[0] for row in rows] == ["handmade", "handmade-sweep-l1"]
    assert rows[1][1] == f"regularization path: {len(LAMBDAS)} λs × 3 seeds × 4 epochs"
    with pytest.raises(ReportError, match="no run directory"):
        write_index(tmp_path, [])


def test_a_single_run_into_a_directory_of_others_updates_the_index(tmp_path, capsys):
    out = tmp_path / "runs"
    write_handmade_study(out / "handmade")
    assert update_index(out) is None  # one run, no index yet: nothing to overview
    write_handmade_sweep(out / "handmade-sweep-l1")
    (out / "broken").mkdir()  # a neighbour being written: left out, not fatal
    (out / "broken" / "config.json").write_text("{}")
    (out / "broken" / "metrics.jsonl").write_text("")
    (out / "broken" / "summary.json").write_text("{not json")
    assert main(["run", "linear-1d", "--seeds", "1", "--epochs", "2", "--out", str(out)]) == 0
    assert_index(out, ["handmade", "handmade-sweep-l1", "linear-1d"])
    assert f"wrote {out}{os.sep} (index.html)" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob(".*.tmp")) == []  # written atomically
    before = (out / "index.html").read_text(encoding="utf-8")
    summary = json.loads((out / "handmade" / "summary.json").read_text())
    summary["variants"]["l2"]["test_loss"] = 0.75
    output.write_json(out / "handmade" / "summary.json", summary)
    assert update_index(out) == out / "index.html"
    assert (out / "index.html").read_text(encoding="utf-8") != before
    assert "l2 (0.75)" in (out / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("case", ["empty", "missing-dir", "no-summary", "bad-json",
                                  "not-a-summary", "bad-record"])
def test_report_error_names_the_path(tmp_path, case):
    target = tmp_path / "run"
    if case != "missing-dir":
        write_handmade_study(target)
    culprit = target
    if case == "empty":
        target = culprit = tmp_path / "empty"
        target.mkdir()
    elif case == "no-summary":
        (target / "summary.json").unlink()
        culprit = target / "summary.json"
    elif case == "bad-json":
        (target / "summary.json").write_text("{not json")
        culprit = target / "summary.json"
    elif case == "not-a-summary":
        (target / "summary.json").write_text('{"study": "x"}')
        culprit = target / "summary.json"
    elif case == "bad-record":
        with (target / "metrics.jsonl").open("a") as stream:
            stream.write('{"variant": "none"}\n')
        culprit = target / "metrics.jsonl"
    function = regenerate if case in ("empty", "missing-dir") else write_report
    with pytest.raises(ReportError) as raised:
        function(target)
    message = str(raised.value)
    assert str(culprit if case != "no-summary" else target) in message
    assert "\n" not in message
    assert isinstance(raised.value, ValueError)
    if case == "no-summary":
        assert "summary.json" in message
        with pytest.raises(ReportError, match="nothing to report"):
            regenerate(target)  # no summary.json, no run below: nothing to report
    assert not (target / "report.html").exists()


def test_write_bytes_is_atomic(tmp_path):
    path = tmp_path / "figure.png"
    write_bytes(path, b"first")
    write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    with pytest.raises(TypeError):
        write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]  # no temporary file left
