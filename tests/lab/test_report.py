"""Plots and HTML reports: the figures carry the expected series, the pages are self-contained.

Expected values come from the records themselves, averaged here with NumPy, and from the
summary's own table functions (the page must show what the console shows). Figures are inspected
as objects (lines, labels, data, scales), never as pixels.
"""

from __future__ import annotations

import base64
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from regtorch.lab import atomic as output
from regtorch.lab.atomic import write_bytes
from regtorch.lab.cli import main
from regtorch.lab.present.plots import (
    LOG_BAND_FLOOR,
    figure_names,
    path_figures,
    png_bytes,
    study_figures,
)
from regtorch.lab.present.report import ReportError, regenerate, write_index, write_report
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
                          for split in ("train", "test")}  # "huge" diverged entirely
    for name in ("none", "l2", "l1"):
        train, test = lines[f"{name}: train"], lines[f"{name}: test"]
        assert (train.get_linestyle(), test.get_linestyle()) == ("-", "--")
        assert train.get_color() == test.get_color()
        for line, key in ((train, "train_loss"), (test, "test_loss")):
            epochs, means = mean_by_epoch(records, name, key, KEPT[name])
            np.testing.assert_array_equal(line.get_xdata(), epochs)
            np.testing.assert_allclose(line.get_ydata(), means, rtol=RTOL)
    colours = {lines[f"{name}: train"].get_color() for name in ("none", "l2", "l1")}
    assert len(colours) == 3
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "epoch" and "loss" in ax.get_ylabel()
    assert "handmade" in ax.get_title() and f"{SEEDS} seeds" in ax.get_title()
    texts = legend_texts(figure)
    assert "train (solid)" in texts and "test (dashed)" in texts
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
    assert len(bands) == 6  # one per line: 3 seeds (or 2) give a non-zero std
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
    assert list(figures) == ["loss", "weights", "accuracy"] == list(figure_names(summary))
    ax, = figures["accuracy"].axes
    lines = lines_by_label(ax)
    for name in ("none", "l2", "l1"):
        for split, style in (("train", "-"), ("test", "--")):
            _, means = mean_by_epoch(records, name, f"{split}_acc", KEPT[name])
            assert lines[f"{name}: {split}"].get_linestyle() == style
            np.testing.assert_allclose(lines[f"{name}: {split}"].get_ydata(), means, rtol=RTOL)
    assert f"{SEEDS} seeds" in ax.get_title()


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
    assert list(figures) == ["path_loss", "path_weights"] == list(figure_names(summary))
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
    text = written[-1].read_text(encoding="utf-8")
    page = assert_self_contained(text)
    for name in names:
        assert f'href="{name}/report.html"' in text
        assert f'id="{name}"' in text
    summary = json.loads((trained / "summary.json").read_text())
    assert page.rows(0) == table_rows(summary)
    body = "".join(page.text)
    for entry in summary["variants"].values():
        assert entry["verdict"] in body
    # The index embeds the PNG files the reports wrote.
    pngs = [(out / name / f"{figure}.png").read_bytes()
            for name, figures in (("d2l-highdim", ("loss", "weights")),
                                  ("handmade", ("loss", "weights")),
                                  ("handmade-sweep-l1", ("path_loss", "path_weights")))
            for figure in figures]
    assert embedded_pngs(page) == pngs
    assert regenerate(trained) == [trained / "report.html"]  # one run directory


def test_index_draws_missing_or_stale_figures_again(tmp_path):
    directory = write_handmade_study(tmp_path / "handmade")
    (directory / "loss.png").write_bytes(b"stale")
    os.utime(directory / "loss.png", ns=(0, 0))  # older than the run's files
    index = write_index(tmp_path, [directory])
    assert index == tmp_path / "index.html"
    page = assert_self_contained(index.read_text(encoding="utf-8"))
    assert len(page.images) == 2
    assert (directory / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (directory / "weights.png").exists()


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
