"""Self-contained HTML reports of a study or a sweep, and the index page of a demo.

A run directory ``DIR/<study>/`` (written by ``regtorch run``, ``regtorch sweep`` or
``regtorch demo``) holds ``config.json``, ``metrics.jsonl`` and ``summary.json``. From those files
alone — no training, so ``regtorch report DIR`` can rebuild every report — :func:`write_report`
writes next to them, each atomically (:mod:`regtorch.lab.atomic`):

* the figures of :mod:`regtorch.lab.present.plots` as PNG files: ``loss.png``, ``weights.png``
  and, for classification, ``accuracy.png`` (a study); ``path_loss.png``, ``path_weights.png``
  and ``path_accuracy.png`` (a sweep);
* ``report.html``: a title and what the run was, the comparison table (a study: the console's
  table, from :func:`regtorch.lab.present.tables.table_rows`) or the path table with both
  choices of λ and the test loss at each and at λ = 0 (a sweep:
  :func:`regtorch.lab.present.tables.path_rows`), every verdict, the notes, the plots, and
  ``config.json`` in a ``<details>`` block.

:func:`write_index` writes ``DIR/index.html`` over several run directories (one section per run,
with a relative link to its ``report.html``); :func:`regenerate` is ``regtorch report DIR``.

**Self-contained.** A page needs nothing but itself: images are ``data:image/png;base64`` URIs,
the style sheet is inline, there is no script and no reference to another host, so it opens
offline, from a mail attachment or an archive. The only links are the index's relative links to
the reports beside it and in-page anchors. Every text taken from the files — names,
descriptions, verdicts, notes, the config — is HTML-escaped. A page's bytes depend only on the
files it was made from (no time stamp; PNGs carry no software metadata).
"""

from __future__ import annotations

import base64
import html
import json
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import regtorch
from regtorch.lab.atomic import atomic_writer, write_bytes
from regtorch.lab.present.plots import figure_names, path_figures, png_bytes, study_figures
from regtorch.lab.present.pruning import pruning_figure_names, pruning_figures, pruning_section
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

__all__ = ["ReportError", "regenerate", "write_index", "write_report"]

_CAPTIONS = {
    "loss": "Train (solid) and test (dashed) data loss per epoch, log scale: the mean over the "
            "seeds that did not diverge, with a ±1 std band. Epoch 0 is before training.",
    "weights": "‖w‖₂ of the penalized weights and their fraction of exact zeros, per epoch.",
    "accuracy": "Train (solid) and test (dashed) accuracy per epoch.",
    "path_loss": "Final train, validation and test loss vs λ (log–log), mean ± std over the "
                 "seeds. Vertical lines: best λ (dashed) and λ_1se (dash-dotted); dotted "
                 "horizontal lines: the unregularized model (λ = 0).",
    "path_weights": "Final ‖w‖₂ of the penalized weights and their fraction of exact zeros vs λ.",
    "path_accuracy": "Final train, validation and test accuracy vs λ.",
}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b;
       max-width: 74rem; margin: 1.5rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { margin-top: 1.4rem; }
.meta, figcaption, .hint { color: #555; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .4rem 0 1rem; }
th, td { padding: .25rem .7rem; border-bottom: 1px solid #e3e3e3; text-align: right;
         white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #999; }
tr.chosen td { background: #fff3c4; font-weight: 600; }
tr.zero td { color: #555; font-style: italic; }
dl.verdicts dt { font-weight: 600; margin-top: .5rem; }
dl.verdicts dd { margin-left: 1.5rem; }
figure { margin: 1.2rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: .8rem; overflow: auto; font-size: .85rem; }
section.run { margin-bottom: 3rem; }
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
    """Write ``out/index.html``: one section per run directory, in the given order.

    Each section shows the run's title, table, verdicts (a sweep: its choices of λ), notes and
    plots, and links to its ``report.html`` with a path relative to ``out``. The plots are the
    PNG files :func:`write_report` wrote; those missing or older than the run's files are drawn
    (and written) again.

    Returns:
        the path of ``index.html``.

    Raises:
        ReportError: no directory given, or a run's file is missing or malformed.
        OSError: a file could not be written.
    """
    out = Path(out)
    if not directories:
        raise ReportError(f"{out}: no run directory to index")
    runs = [load_run(Path(d)) for d in directories]
    parts = [f"<h1>regtorch lab: {_count(len(runs), 'run')}</h1>", "<ul class=\"contents\">"]
    for run in runs:
        parts.append(f"<li><a href=\"#{_e(_anchor(run))}\">{_e(run.name)}</a> "
                     f"<span class=\"meta\">({_kind(run).noun})</span></li>")
    parts.append("</ul>")
    for run in runs:
        link = urllib.parse.quote(Path(os.path.relpath(run.directory / REPORT, out)).as_posix())
        parts += [f"<section class=\"run\" id=\"{_e(_anchor(run))}\">",
                  *_run_body(run, _reuse(run) or _draw(run), level=2),
                  f"<p><a href=\"{_e(link)}\">The full report of {_e(run.name)}</a> "
                  f"(with its configuration).</p>", "</section>"]
    parts.append(_footer())
    path = out / INDEX
    _write_page(path, "regtorch lab", parts)
    return path


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
    runs = sorted(d for d in path.iterdir()
                  if d.is_dir() and all((d / name).is_file() for name in RESULT_FILES))
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
    def figures(run: Run) -> dict[str, Any]:
        return study_figures(run.records, run.summary)

    @staticmethod
    def meta(run: Run) -> str:
        return _study_meta(run)

    @staticmethod
    def sections(run: Run, sub: str, headers: list[str], rows: list[list[str]]) -> list[str]:
        return [f"<{sub}>Comparison</{sub}>",
                "<p class=\"hint\">Final epoch, mean ± std over the seeds that did not "
                "diverge.</p>",
                _table(headers, rows), f"<{sub}>Verdicts</{sub}>", _verdicts(run.summary),
                *_lasso_sections(run.summary, sub)]


class _SweepKind:
    """How a sweep's page reads: the choices of λ, the path table, the λ_max search, the path."""

    noun, suffix = "regularization path", ": regularization path"

    @staticmethod
    def rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        return path_rows(summary)

    @staticmethod
    def figures(run: Run) -> dict[str, Any]:
        return path_figures(run.summary)

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
def _draw(run: Run) -> dict[str, bytes]:
    """Draw the run's figures, write them as PNG files, and return their bytes by name."""
    figures = {**_kind(run).figures(run), **pruning_figures(run.summary)}
    images = {}
    for name, figure in figures.items():
        images[name] = png_bytes(figure)
        write_bytes(run.directory / f"{name}.png", images[name])
    return images


def _reuse(run: Run) -> dict[str, bytes] | None:
    """The PNG files already written for this run, or None if one is missing or out of date."""
    newest = max((run.directory / name).stat().st_mtime_ns for name in RESULT_FILES)
    images = {}
    for name in (*figure_names(run.summary), *pruning_figure_names(run.summary)):
        path = run.directory / f"{name}.png"
        try:
            if path.stat().st_mtime_ns < newest:
                return None
            images[name] = path.read_bytes()
        except OSError:
            return None
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


def _run_body(run: Run, images: dict[str, bytes], level: int) -> list[str]:
    """A run's title, what it was, its table, its words and its plots; headings from ``level``."""
    h, sub = f"h{level}", f"h{level + 1}"
    headers, rows = _table_of(run)
    kind = _kind(run)
    parts = [f"<{h}>{_e(run.name)}{kind.suffix}</{h}>"]
    description = run.config.get("description")
    if description:
        parts.append(f"<p class=\"description\">{_e(description)}</p>")
    parts.append(f"<p class=\"meta\">{_e(kind.meta(run))}</p>")
    parts += kind.sections(run, sub, headers, rows)
    parts += pruning_section(run.summary, sub)  # a channel penalty's compaction, if any
    notes = run.summary.get("notes") or []
    if notes:
        parts += [f"<{sub}>Notes</{sub}>", "<ul class=\"notes\">",
                  *(f"<li>{_e(note)}</li>" for note in notes), "</ul>"]
    parts.append(f"<{sub}>Plots</{sub}>")
    parts += [_figure(run, name, data) for name, data in images.items()]
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
    lines = ["<div class=\"scroll\"><table>", "<thead><tr>",
             *(f"<th>{_e(h)}</th>" for h in headers), "</tr></thead>", "<tbody>"]
    for i, row in enumerate(rows):
        css = classes[i] if classes else ""
        lines.append(f"<tr class=\"{css}\">" if css else "<tr>")
        lines += [f"<td>{_e(cell)}</td>" for cell in row]
        lines.append("</tr>")
    lines.append("</tbody></table></div>")
    return "\n".join(lines)


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


def _figure(run: Run, name: str, data: bytes) -> str:
    source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    caption = _CAPTIONS.get(name, "")
    return (f"<figure><img src=\"{source}\" alt=\"{_e(run.name)}: {_e(name)} plot\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _config_block(run: Run) -> str:
    text = json.dumps(run.config, indent=2, ensure_ascii=False)
    return (f"<details><summary>Configuration (config.json)</summary><pre>{_e(text)}</pre>"
            f"</details>")


def _footer() -> str:
    return (f"<p class=\"meta\">Written by regtorch {_e(regtorch.__version__)} from "
            f"{', '.join(RESULT_FILES)}; <code>regtorch report DIR</code> writes it again.</p>")


def _anchor(run: Run) -> str:
    return run.directory.name


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
