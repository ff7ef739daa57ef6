"""Self-contained HTML reports of a study or a sweep, and the index page of a demo.

A run directory ``DIR/<study>/`` (written by ``regtorch run``, ``regtorch sweep`` or
``regtorch demo``) holds ``config.json``, ``metrics.jsonl`` and ``summary.json``. From those files
alone — no training, so ``regtorch report DIR`` can rebuild every report — :func:`write_report`
writes next to them, each atomically (:mod:`regtorch.lab.atomic`):

* the figures of :mod:`regtorch.lab.present.plots` as PNG files: ``loss.png``, ``weights.png``,
  for classification ``accuracy.png``, when the learning rate varies ``lr.png`` (a study);
  ``path_loss.png``, ``path_weights.png`` and ``path_accuracy.png`` (a sweep);
* ``report.html``: a title and what the run was, the warnings of the run (``summary.json``'s
  ``"warnings"``), the comparison table (a study: the console's table, from
  :func:`regtorch.lab.present.tables.table_rows`) and, for each tuned variant, the validation
  loss of every strength tried (the one that chose λ), or the path table with both choices of λ
  and the test loss at each and at λ = 0 (a sweep: :func:`regtorch.lab.present.tables.path_rows`),
  every verdict, the notes, the plots with their captions, and ``config.json`` in a
  ``<details>`` block.

:func:`write_index` writes ``DIR/index.html``, an overview of several run directories: one row
per run with its kind, size, headline finding (:func:`headline`) and a relative link to its
``report.html``. It reads only the summaries (no figure), so :func:`update_index` rewrites it
after every run into a directory that holds others. :func:`regenerate` is ``regtorch report DIR``.

**Fits the page.** No table is wider than the page: a mean and its spread share a cell on two
lines (the spread smaller) and headers wrap; the browser test checks it at 1280 px
(``tests/lab/test_browser.py``).

**Self-contained.** A page needs nothing but itself: images are ``data:image/png;base64`` URIs,
the style sheet is inline, there is no script and no reference to another host, so it opens
offline, from a mail attachment or an archive. The only links are the index's relative links to
the reports beside it and in-page anchors. Every text taken from the files — names,
descriptions, verdicts, notes, the config — is HTML-escaped. A page's bytes depend only on the
files it was made from (no time stamp; PNGs carry no software metadata).
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import regtorch
from regtorch.lab.atomic import atomic_writer, write_bytes
from regtorch.lab.present.plots import Plot, path_plots, png_bytes, study_plots
from regtorch.lab.present.pruning import pruning_figures, pruning_section
from regtorch.lab.present.rundir import (
    INDEX,
    REPORT,
    RESULT_FILES,
    SUMMARY,
    ReportError,
    Run,
    load_run,
)
from regtorch.lab.present.tables import choice_rows, mean_std_text, path_rows, table_rows
from regtorch.lab.schema import WARNINGS_KEY

try:
    import fcntl
except ImportError:  # not POSIX: index writes are not serialized (each is still atomic)
    fcntl = None  # type: ignore[assignment]

__all__ = ["ReportError", "headline", "regenerate", "run_directories", "update_index",
           "write_index", "write_report"]

_INDEX_LOCK = ".index.lock"  # serializes the index writes of runs into one directory

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b;
       max-width: 74rem; margin: 1.5rem auto; padding: 0 1rem; line-height: 1.45; }
p, dl, ul, figcaption { max-width: 60rem; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { margin-top: 1.4rem; }
.meta, figcaption, .hint { color: #555; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .4rem 0 1rem; }
th, td { padding: .25rem .55rem; border-bottom: 1px solid #e3e3e3; text-align: right;
         vertical-align: top; }
td { white-space: nowrap; }
td.text { white-space: normal; text-align: left; min-width: 12rem; }
table.overview th { text-align: left; }
th { font-weight: 600; }
.std { display: block; font-size: .8em; color: #555; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #999; }
tr.chosen td { background: #fff3c4; font-weight: 600; }
tr.zero td { color: #555; font-style: italic; }
dl.verdicts dt { font-weight: 600; margin-top: .5rem; }
dl.verdicts dd { margin-left: 1.5rem; }
figure { margin: 1.2rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: .8rem; overflow: auto; font-size: .85rem; }
ul.warnings li { color: #8a4b00; }
"""


# -- the public functions -----------------------------------------------------------------------
def write_report(directory: str | os.PathLike[str]) -> Path:
    """Write the figures (PNG) and ``report.html`` of one study or sweep directory.

    Args:
        directory: a run directory holding ``config.json``, ``metrics.jsonl`` and
            ``summary.json``.

    Returns:
        the path of ``report.html``.

    Raises:
        ReportError: the directory or one of its files is missing, or a file is malformed.
        OSError: a file could not be written (what was there before is kept).
    """
    run = load_run(Path(directory))
    images = _draw(run)
    path = run.directory / REPORT
    _write_page(path, f"{run.name}{_kind(run).suffix}",
                [*_run_body(run, images, level=1), _config_block(run), _footer()])
    return path


def write_index(out: str | os.PathLike[str],
                directories: Sequence[str | os.PathLike[str]]) -> Path:
    """Write ``out/index.html``: an overview, one table row per run directory in the given order.

    A row gives the run's name, linked to its ``report.html`` with a path relative to ``out``,
    what it is (study or regularization path, seeds × epochs) and its :func:`headline`. The page
    reads only each run's ``config.json`` and ``summary.json``: it stays small and cheap, and
    never goes stale with a report's figures.

    Returns:
        the path of ``index.html``.

    Raises:
        ReportError: no directory given, or a run's file is missing or malformed.
        OSError: a file could not be written.
    """
    out = Path(out)
    if not directories:
        raise ReportError(f"{out}: no run directory to index")
    return _write_index(out, [load_run(Path(d)) for d in directories])


def _write_index(out: Path, runs: list[Run]) -> Path:
    rows = []
    for run in runs:
        link = urllib.parse.quote(Path(os.path.relpath(run.directory / REPORT, out)).as_posix())
        rows.append([f"<a href=\"{_e(link)}\">{_e(run.name)}</a>", _e(_size(run)),
                     _e(headline(run.summary))])
    parts = [f"<h1>regtorch lab: {_count(len(runs), 'run')}</h1>",
             "<p class=\"hint\">One row per run directory; each name links to its full report "
             "(table, verdicts, plots, configuration). The headline compares final-epoch means "
             "over the seeds; λ is chosen on validation, the test loss only reported.</p>",
             _html_table(["run", "what", "headline"], rows, text_columns=(1, 2),
                         css="overview"), _footer()]
    path = out / INDEX
    _write_page(path, "regtorch lab", parts)
    return path


def run_directories(out: str | os.PathLike[str]) -> list[Path]:
    """The run directories directly under ``out`` (those holding every one of
    :data:`~regtorch.lab.present.rundir.RESULT_FILES`), in name order."""
    out = Path(out)
    try:
        return sorted(d for d in out.iterdir()
                      if d.is_dir() and all((d / name).is_file() for name in RESULT_FILES))
    except OSError:
        return []


def update_index(out: str | os.PathLike[str]) -> Path | None:
    """Rewrite ``out/index.html`` over every run directory in ``out`` — after one run into a
    directory that holds others (``regtorch run X --out runs``), so the overview stays current.

    Nothing is written when ``out`` holds a single run and no index yet. A run directory whose
    files cannot be read (another run's, in progress or broken) is left out, not an error: the
    run that just finished is not failed by its neighbours. Concurrent runs into ``out`` take
    turns (an OS file lock), so the last index written sees every finished run; each write is
    atomic.

    Returns:
        the path written, or None.

    Raises:
        OSError: the file could not be written.
    """
    out = Path(out)
    with _index_lock(out):
        runs = []
        for directory in run_directories(out):
            with contextlib.suppress(ReportError):
                runs.append(load_run(directory))
        if not runs or (len(runs) == 1 and not (out / INDEX).exists()):
            return None
        return _write_index(out, runs)


@contextlib.contextmanager
def _index_lock(out: Path):
    if fcntl is None:
        yield
        return
    fd = os.open(out / _INDEX_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks: another run's index write is milliseconds
        yield
    finally:
        os.close(fd)


def headline(summary: dict[str, Any]) -> str:
    """The finding of a run in one line, from its summary alone.

    A study: the variant with the best final test accuracy (classification) or the lowest
    final test loss, next to the baseline's (the change in percent, or as a factor when it is
    more than tenfold), and the variants with diverged members. A sweep: the best
    λ (chosen on validation), its test loss next to the unregularized model's, and the
    sparsity there.
    """
    if summary.get("kind") == "sweep":
        return _sweep_headline(summary)
    variants = summary.get("variants", {})
    base = summary.get("baseline")
    classification = any(v.get("test_acc") is not None for v in variants.values())
    key, words, better = (("test_acc", "best test accuracy", max) if classification else
                          ("test_loss", "lowest test loss", min))
    scored = {n: v[key] for n, v in variants.items() if v.get(key) is not None}
    parts = []
    if scored:
        best = better(scored, key=scored.__getitem__)
        text = f"{words}: {best} ({scored[best]:.4g})"
        if base in scored and base != best:
            change = ""
            if not classification and scored[best] > 0:
                ratio = scored[best] / scored[base]  # below a tenth, a percentage says -100 %
                factor = f"{1 / ratio:.0f}" if ratio < 0.01 else f"{1 / ratio:.3g}"
                change = f", {(ratio - 1):+.0%}" if ratio >= 0.1 else f", {factor}× lower"
            text += f" vs the baseline {base} ({scored[base]:.4g}{change})"
        elif base == best:
            text += " — the baseline itself"
        parts.append(text)
    else:
        parts.append("no variant has a test value (every member diverged)")
    gone = [n for n, v in variants.items() if v.get("diverged")]
    if gone:
        parts.append(f"diverged: {', '.join(gone)}")
    return "; ".join(parts)


def _sweep_headline(summary: dict[str, Any]) -> str:
    lam, best, zero = summary.get("best_lambda"), summary.get("best") or {}, \
        summary.get("unregularized") or {}
    if lam is None:
        return f"{summary.get('penalty', '?')} path: no λ could be chosen (every member diverged)"
    text = f"{summary.get('penalty', '?')}: best λ = {lam:.3g} (on validation)"
    if best.get("test_loss") is not None:
        text += f", test loss {best['test_loss']:.4g}"
        if zero.get("test_loss") is not None:
            text += f" vs {zero['test_loss']:.4g} at λ = 0"
    if best.get("sparsity"):
        text += f", {best['sparsity']:.0%} exact zeros"
    return text


def _size(run: Run) -> str:
    s = run.summary
    if run.sweep:
        return (f"regularization path: {_count(len(s.get('path', [])), 'λ')} × "
                f"{_count(s.get('seeds', 0), 'seed')} × {_count(s.get('epochs', 0), 'epoch')}")
    size = f"study: {_count(len(s.get('variants', {})), 'variant')} × {_count(s['seeds'], 'seed')}"
    return size + (f" × {_count(s['epochs'], 'epoch')}" if s.get("epochs") else "")


def regenerate(path: str | os.PathLike[str]) -> list[Path]:
    """Rebuild reports from the files (``regtorch report DIR``); no training.

    If ``path`` holds ``summary.json`` it is one run directory: its report is written. Otherwise
    every subdirectory holding ``config.json``, ``metrics.jsonl`` and ``summary.json`` gets its
    report (in name order) and ``path/index.html`` is written over them.

    Returns:
        the pages written: the reports, then ``index.html`` when ``path`` is not a run directory.

    Raises:
        ReportError: ``path`` is not a directory, there is nothing to report, or a run's file is
            missing or malformed.
        OSError: a file could not be written.
    """
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory")
    if (path / SUMMARY).exists():
        return [write_report(path)]
    runs = run_directories(path)
    if not runs:
        raise ReportError(f"{path}: nothing to report (no summary.json, and no subdirectory "
                          f"holding {', '.join(RESULT_FILES)})")
    reports = [write_report(d) for d in runs]
    return [*reports, write_index(path, runs)]


# -- the two kinds of run -------------------------------------------------------------------
class _StudyKind:
    """How a study's page reads: its comparison table, verdicts, and curves per epoch."""

    noun, suffix = "study", ""

    @staticmethod
    def rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        return table_rows(summary)

    @staticmethod
    def figures(run: Run) -> dict[str, Plot]:
        return study_plots(run.records, run.summary)

    @staticmethod
    def meta(run: Run) -> str:
        return _study_meta(run)

    @staticmethod
    def sections(run: Run, sub: str, headers: list[str], rows: list[list[str]]) -> list[str]:
        return [f"<{sub}>Comparison</{sub}>",
                "<p class=\"hint\">Final epoch, mean ± std over the seeds that did not "
                "diverge.</p>",
                _table(headers, rows), *_candidates(run.summary, sub),
                f"<{sub}>Verdicts</{sub}>", _verdicts(run.summary),
                *_lasso_sections(run.summary, sub)]


class _SweepKind:
    """How a sweep's page reads: the choices of λ, the path table, the λ_max search, the path."""

    noun, suffix = "regularization path", ": regularization path"

    @staticmethod
    def rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        return path_rows(summary)

    @staticmethod
    def figures(run: Run) -> dict[str, Plot]:
        return path_plots(run.summary)

    @staticmethod
    def meta(run: Run) -> str:
        return _sweep_meta(run)

    @staticmethod
    def sections(run: Run, sub: str, headers: list[str], rows: list[list[str]]) -> list[str]:
        return [f"<{sub}>Choice of λ</{sub}>", *_choices(run.summary),
                f"<{sub}>Path</{sub}>", _table(headers, rows, _path_row_classes(rows)),
                *_search(run.summary, sub)]


def _kind(run: Run) -> type[_StudyKind] | type[_SweepKind]:
    """The page kind of a run: the one place a study and a sweep are told apart."""
    return _SweepKind if run.sweep else _StudyKind


def _table_of(run: Run) -> tuple[list[str], list[list[str]]]:
    """The run's table, as the console prints it; a summary missing a value fails by name."""
    try:
        return _kind(run).rows(run.summary)
    except (KeyError, TypeError, ValueError) as error:
        raise ReportError(f"{run.directory / SUMMARY}: malformed: cannot make its "
                          f"table ({type(error).__name__}: {error})") from None


# -- figures ------------------------------------------------------------------------------------
def _draw(run: Run) -> dict[str, tuple[bytes, str]]:
    """Draw the run's figures, write them as PNG files, and return their bytes and captions by
    name."""
    plots = {**_kind(run).figures(run),  # and a channel penalty's figure, if any (its caption
             **{name: Plot(figure, "") for name, figure in  # is in its own section)
                pruning_figures(run.summary).items()}}
    images = {}
    for name, plot in plots.items():
        data = png_bytes(plot.figure)
        write_bytes(run.directory / f"{name}.png", data)
        images[name] = (data, plot.caption)
    return images


# -- HTML ---------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _write_page(path: Path, title: str, body: list[str]) -> None:
    page = "\n".join([
        "<!DOCTYPE html>",
        "<html lang=\"en\">",
        "<head>",
        "<meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{_e(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        *body,
        "</body>",
        "</html>",
        ""])
    with atomic_writer(path) as stream:
        stream.write(page)


def _run_body(run: Run, images: dict[str, tuple[bytes, str]], level: int) -> list[str]:
    """A run's title, what it was, its table, its words and its plots; headings from ``level``."""
    h, sub = f"h{level}", f"h{level + 1}"
    headers, rows = _table_of(run)
    kind = _kind(run)
    parts = [f"<{h}>{_e(run.name)}{kind.suffix}</{h}>"]
    description = run.config.get("description")
    if description:
        parts.append(f"<p class=\"description\">{_e(description)}</p>")
    parts.append(f"<p class=\"meta\">{_e(kind.meta(run))}</p>")
    warnings = run.summary.get(WARNINGS_KEY) or []  # one line each (regtorch.lab.caught)
    if warnings:
        parts += [f"<{sub}>Warnings</{sub}>", "<ul class=\"warnings\">",
                  *(f"<li>{_e(line)}</li>" for line in warnings), "</ul>"]
    parts += kind.sections(run, sub, headers, rows)
    parts += pruning_section(run.summary, sub)  # a channel penalty's compaction, if any
    notes = run.summary.get("notes") or []
    if notes:
        parts += [f"<{sub}>Notes</{sub}>", "<ul class=\"notes\">",
                  *(f"<li>{_e(note)}</li>" for note in notes), "</ul>"]
    parts.append(f"<{sub}>Plots</{sub}>")
    parts += [_figure(run, name, data, caption) for name, (data, caption) in images.items()]
    return parts


def _study_meta(run: Run) -> str:
    summary, info = run.summary, run.config.get("run") or {}
    words = [_count(summary["seeds"], "seed")
             + (f" × {_count(summary['epochs'], 'epoch')}" if summary.get("epochs") else "")]
    if summary.get("baseline"):
        words.append(f"baseline: {summary['baseline']}")
    groups = info.get("groups")
    if isinstance(groups, list) and groups:
        members = sum(g.get("members", 0) for g in groups if isinstance(g, dict))
        words.append(f"{_count(members, 'member')} trained in "
                     f"{_count(len(groups), 'group')}")
    return " · ".join(words + _versions(info))


def _sweep_meta(run: Run) -> str:
    s, info = run.summary, run.config.get("run") or {}
    penalty = f"{s.get('penalty')} penalty ({s.get('apply')}"
    penalty += f", on the {s['params']}" if s.get("params") else ""
    penalty += f", l1_ratio {s['l1_ratio']:g}" if s.get("l1_ratio") is not None else ""
    penalty += f", groups: {s['groups']}" if s.get("groups") else ""
    words = [f"{penalty}) on {s.get('base', '?')}"]
    if s.get("seeds") and s.get("epochs"):
        words.append(f"{_count(s['seeds'], 'seed')} × {_count(s['epochs'], 'epoch')} per λ")
    if s.get("grid") == "searched" and s.get("lambda_max") is not None:
        rule = f" ({s['lambda_max_rule']})" if s.get("lambda_max_rule") else ""
        words.append(f"grid searched down from λ_max = {s['lambda_max']:.4g}{rule}")
    elif s.get("grid"):
        words.append(f"grid: {s['grid']}")
    return " · ".join(words + _versions(info))


def _versions(info: dict[str, Any]) -> list[str]:
    words = []
    if info.get("regtorch") or info.get("torch"):
        words.append(f"regtorch {info.get('regtorch', '?')}, torch {info.get('torch', '?')}")
    if info.get("created"):
        words.append(f"created {info['created']}")
    return words


def _lasso_sections(summary: dict[str, Any], sub: str) -> list[str]:
    """For each variant compared with scikit-learn's lasso: its path next to ``lasso_path`` and
    ``LassoCV`` on the same split, and the coefficients at the chosen λ."""
    parts: list[str] = []
    for name, variant in summary.get("variants", {}).items():
        lasso = variant.get("sklearn_lasso")
        if not lasso:
            continue
        chosen = lasso["best_lambda"]
        rows = [[f"{r['lambda']:g}", f"{r['alpha']:g}", f"{r['val_loss']:.6g}",
                 f"{r['sklearn_val_mse']:.6g}", f"{r['max_coef_diff']:.1e}",
                 f"{r['zeros']}", f"{r['sklearn_zeros']}",
                 " ".join(who for who, lam in (("lab", chosen),
                                               ("sklearn", lasso["sklearn_best_lambda"]))
                          if r["lambda"] == lam)]
                for r in lasso["rows"]]
        coef = lasso["coefficients"]
        parts += [f"<{sub}>{_e(name)}: next to scikit-learn's lasso</{sub}>",
                  f"<p class=\"hint\">The same train / validation split; scikit-learn's "
                  f"Lasso(α) is the lab's L1(λ) at the α shown. The lab chooses λ = "
                  f"{chosen:g}, LassoCV λ = {lasso['sklearn_best_lambda']:g}.</p>",
                  _table(["λ", "α", "val loss (lab)", "val MSE (sklearn)", "max |Δ coef|",
                          "zeros (lab)", "zeros (sklearn)", "chosen by"], rows,
                         ["chosen" if row[-1] else "" for row in rows]),
                  f"<p class=\"hint\">Coefficients at λ = {coef['lambda']:g} (mean over "
                  f"seeds).</p>",
                  _table(["feature", "lab", "scikit-learn"],
                         [[f, f"{a:.6g}", f"{b:.6g}"] for f, a, b in
                          zip(coef["features"], coef["lab"], coef["sklearn"])])]
    return parts


def _table(headers: list[str], rows: list[list[str]],
           classes: list[str] | None = None) -> str:
    """A table of plain texts; a ``"mean ± std"`` cell shows its spread on a second, smaller
    line (so that the widest tables fit the page)."""
    return _html_table(headers, [[_cell(cell) for cell in row] for row in rows], classes)


def _cell(text: str) -> str:
    mean, sep, spread = text.partition(" ± ")
    if not sep:
        return _e(text)
    return f"{_e(mean)} <span class=\"std\">± {_e(spread)}</span>"


def _html_table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None,
                text_columns: tuple[int, ...] = (), css: str = "") -> str:
    """A table whose cells are HTML already (escaped by the caller); ``text_columns`` wrap."""
    table = f"<table class=\"{css}\">" if css else "<table>"
    lines = [f"<div class=\"scroll\">{table}", "<thead><tr>",
             *(f"<th>{_e(h)}</th>" for h in headers), "</tr></thead>", "<tbody>"]
    for i, row in enumerate(rows):
        css = classes[i] if classes else ""
        lines.append(f"<tr class=\"{css}\">" if css else "<tr>")
        lines += [f"<td class=\"text\">{cell}</td>" if j in text_columns else f"<td>{cell}</td>"
                  for j, cell in enumerate(row)]
        lines.append("</tr>")
    lines.append("</tbody></table></div>")
    return "\n".join(lines)


def _candidates(summary: dict[str, Any], sub: str) -> list[str]:
    """For each tuned variant, every strength tried with the validation loss that chose it."""
    tuned = {name: v["candidates"] for name, v in summary["variants"].items()
             if len(v.get("candidates") or []) > 1}
    if not tuned:
        return []
    parts = [f"<{sub}>Choice of λ on validation</{sub}>",
             "<p class=\"hint\">Each tuned variant keeps the strength with the lowest mean "
             "validation loss (final epoch); the test loss is reported, never used to "
             "choose.</p>"]
    for name, candidates in tuned.items():
        kept = summary["variants"][name].get("strength")
        rows = [[f"{name}", "—" if c.get("strength") is None else f"{c['strength']:g}",
                 mean_std_text(c.get("val_loss"), c.get("val_loss_std")),
                 mean_std_text(c.get("test_loss"), None),
                 f"{c.get('diverged', 0)}/{summary['seeds']}",
                 "chosen" if c.get("strength") == kept else ""] for c in candidates]
        parts.append(_table(["variant", "λ", "val loss", "test loss", "diverged", ""], rows,
                            ["chosen" if row[-1] else "" for row in rows]))
    return parts


def _path_row_classes(rows: list[list[str]]) -> list[str]:
    """Highlight the chosen λ (the table's last column) and set λ = 0 apart."""
    classes = []
    for i, row in enumerate(rows):
        if i == len(rows) - 1:
            classes.append("zero")  # path_rows ends with the unregularized model
        else:
            classes.append("chosen" if row[-1] else "")
    return classes


def _verdicts(summary: dict[str, Any]) -> str:
    lines = ["<dl class=\"verdicts\">"]
    for name, entry in summary["variants"].items():
        lines.append(f"<dt>{_e(name)}</dt><dd>{_e(entry.get('verdict') or '—')}</dd>")
    lines.append("</dl>")
    return "\n".join(lines)


def _choices(summary: dict[str, Any]) -> list[str]:
    """Both choices of λ with their validation and test losses, and λ = 0 for reference."""
    words = {"best_lambda": "best λ: lowest mean validation loss",
             "lambda_1se": "λ_1se: the largest λ within one standard error of the best",
             "λ = 0": "λ = 0: no penalty, trained alongside"}
    rows = [[words[name], *values] for name, *values in choice_rows(summary)]
    parts = [_table(["choice", "λ", "validation loss", "test loss"], rows,
                    ["chosen", "chosen", "zero"])]
    if summary.get("best_lambda") is None:
        parts.append("<p>No λ could be chosen: no λ of the path has a validation loss (every "
                     "member diverged).</p>")
    parts.append("<p class=\"hint\">λ is chosen on the validation loss; the test loss is "
                 "reported, never used to choose.</p>")
    return parts


def _search(summary: dict[str, Any], level: str) -> list[str]:
    search = summary.get("search") or []
    if not search:
        return []
    rows = [["—" if p.get("lambda") is None else f"{p['lambda']:.4g}",
             mean_std_text(p.get("val_loss"), None), mean_std_text(p.get("weight_norm"), None),
             "—" if p.get("sparsity") is None else f"{p['sparsity']:.1%}",
             "yes" if p.get("diverged") else "no"] for p in search]
    table = _table(["λ", "val loss", "‖w‖", "sparsity", "diverged"], rows)
    return [f"<details><summary>The search for λ_max ({_count(len(search), 'point')})"
            f"</summary>", table, "</details>"]


def _figure(run: Run, name: str, data: bytes, caption: str) -> str:
    source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f"<figure><img src=\"{source}\" alt=\"{_e(run.name)}: {_e(name)} plot\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _config_block(run: Run) -> str:
    text = json.dumps(run.config, indent=2, ensure_ascii=False)
    return (f"<details><summary>Configuration (config.json)</summary><pre>{_e(text)}</pre>"
            f"</details>")


def _footer() -> str:
    return (f"<p class=\"meta\">Written by regtorch {_e(regtorch.__version__)} from "
            f"{', '.join(RESULT_FILES)}; <code>regtorch report DIR</code> writes it again.</p>")


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
