"""The HTML reports in a real browser: Debian's headless Chromium, driven by Playwright.

Two real studies are trained (a regression and a classification, a few epochs) and a sweep,
their reports and the index over them are written, and each page is opened from ``file://`` in an
offline browser context 1280 px wide. A page passes when it logs no console error and raises no
page error, requests nothing but itself and ``data:`` URIs, decodes every image, shows every
variant, has no horizontal scroll (the page's nor a table's: no table is wider than the page),
and every legend entry of every plot shows in its axes: the browser draws each image on a canvas
and counts, in each axes, the pixels of each legend entry's colour (:mod:`figure_pixels`; the
colours and the axes' boxes come from the same figures drawn again from the run's files).

Nothing here downloads a browser: the test uses ``/usr/bin/chromium`` (Debian's ``chromium``
package, which ``.ci/run`` installs). Without it, or without Playwright, the test is skipped —
unless ``REGTORCH_REQUIRE_BROWSER=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from figure_pixels import MIN_PIXELS, TOLERANCE, legend_probes

from regtorch.lab.cli import main
from regtorch.lab.present.plots import path_plots, png_bytes, study_plots
from regtorch.lab.present.report import regenerate
from regtorch.lab.present.rundir import load_run

CHROMIUM = Path("/usr/bin/chromium")
# Headless and quiet: this machine has no internet, and without these flags Chromium tries to
# reach out (component updates, sync, first-run pings) on its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# d2l-highdim holds l2-3 and wd-3, whose curves coincide; digits wd-10 and wd-10000 (chance).
STUDIES = {"d2l-highdim": ["--seeds", "2", "--epochs", "3"],
           "digits": ["--seeds", "2", "--epochs", "2"]}
SWEEP = "d2l-highdim-sweep-l1"
SWEEP_ARGS = ["sweep", "d2l-highdim", "--penalty", "l1", "--lambdas", "0.01:1:5", "--seeds", "2",
              "--epochs", "3"]
# loss, weights (and accuracy: classification); a sweep's path_loss and path_weights
FIGURES = {"d2l-highdim": 2, "digits": 3, SWEEP: 2}
TIMEOUT_MS = 15_000
WIDTH, HEIGHT = 1280, 900  # a laptop's browser window
# Every pixel of an image's axes boxes whose colour is within TOLERANCE of a probe's, counted.
COUNT_PIXELS = """([alt, boxes, colours, tolerance]) => {
  const image = Array.from(document.images).find(i => i.alt === alt);
  if (!image) return null;
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const counts = colours.map(() => 0);
  for (const [x0, y0, x1, y1] of boxes) {
    const data = context.getImageData(x0, y0, x1 - x0, y1 - y0).data;
    for (let i = 0; i < data.length; i += 4) {
      colours.forEach((c, k) => {
        if (Math.abs(data[i] - c[0]) <= tolerance && Math.abs(data[i + 1] - c[1]) <= tolerance
            && Math.abs(data[i + 2] - c[2]) <= tolerance) counts[k] += 1;
      });
    }
  }
  return counts;
}"""
# What overflows: the page, and every table (or the box that scrolls it) wider than the page.
OVERFLOW = """() => ({
  page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
  tables: Array.from(document.querySelectorAll("table"), t => {
    const box = t.parentElement;
    return [t.getBoundingClientRect().right, box.scrollWidth, box.clientWidth];
  })
})"""


def _unavailable(reason: str) -> None:
    if os.environ.get("REGTORCH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and REGTORCH_REQUIRE_BROWSER=1 requires the browser test")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def out(tmp_path_factory, browser) -> Path:
    """Both studies and a sweep trained and reported (after the browser: no training if it is
    missing)."""
    out = tmp_path_factory.mktemp("runs")
    for name, options in STUDIES.items():
        assert main(["run", name, *options, "--out", str(out)]) == 0
    assert main([*SWEEP_ARGS, "--out", str(out)]) == 0
    assert regenerate(out) == [out / "d2l-highdim" / "report.html",
                               out / SWEEP / "report.html", out / "digits" / "report.html",
                               out / "index.html"]
    return out


def _probes(out: Path, study: str) -> dict[str, tuple[list, list]]:
    """By image alt text: the legend entries to find in the image and its axes' boxes, from the
    run's figures drawn again (the same bytes as the page's: checked by the caller)."""
    run = load_run(out / study)
    plots = path_plots(run.summary) if run.sweep else study_plots(run.records, run.summary)
    found = {}
    for name, plot in plots.items():
        assert png_bytes(plot.figure) == (out / study / f"{name}.png").read_bytes()
        found[f"{run.name}: {name} plot"] = legend_probes(plot.figure)
    return found


def _shown(out: Path, study: str) -> list[str]:
    """What the page must show: every variant of a study; every λ of a sweep's path."""
    summary = json.loads((out / study / "summary.json").read_text())
    if summary.get("kind") == "sweep":
        return [f"{p['lambda']:.4g}" for p in summary["path"]]
    return list(summary["variants"])


def _open(browser, path: Path, probes: dict | None = None) -> dict:
    """Load ``path`` in a fresh offline context; what it logged, requested, showed and decoded."""
    context = browser.new_context(offline=True, viewport={"width": WIDTH, "height": HEIGHT})
    page = context.new_page()
    seen = {"console_errors": [], "page_errors": [], "requests": []}

    def on_console(message) -> None:
        if message.type == "error":
            seen["console_errors"].append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: seen["page_errors"].append(str(error)))
    page.on("request", lambda request: seen["requests"].append(request.url))
    try:
        page.goto(path.as_uri(), wait_until="load", timeout=TIMEOUT_MS)
        seen["text"] = page.evaluate("document.body.innerText")
        seen["images"] = page.evaluate(
            "Array.from(document.images, i => [i.complete, i.naturalWidth, i.naturalHeight])")
        seen["overflow"] = page.evaluate(OVERFLOW)
        seen["pixels"] = {}
        for alt, (entries, boxes) in (probes or {}).items():
            counts = page.evaluate(COUNT_PIXELS, [alt, boxes, [c for _, c in entries],
                                                  TOLERANCE])
            assert counts is not None, f"no image {alt!r}"
            seen["pixels"][alt] = {label: n for (label, _), n in zip(entries, counts)}
    finally:
        context.close()
    return seen


@pytest.mark.parametrize("page", ["d2l-highdim/report.html", "digits/report.html",
                                  f"{SWEEP}/report.html", "index.html"])
def test_report_renders_offline_with_every_variant(browser, out, page):
    path = out / page
    report = "/" in page
    seen = _open(browser, path, _probes(out, page.split("/")[0]) if report else None)
    assert seen["console_errors"] == []
    assert seen["page_errors"] == []
    others = [url for url in seen["requests"]
              if url != path.as_uri() and not url.startswith("data:")]
    assert others == []
    words = set(seen["text"].split())  # whole words: "l1-1" must not pass on "prox-l1-1"
    if report:
        study = page.split("/")[0]
        for name in _shown(out, study):
            assert name in words, (study, name)
    else:  # the index: one row per run, no figure
        for study in [*STUDIES, SWEEP]:
            assert json.loads((out / study / "summary.json").read_text())["study"] in words
    assert len(seen["images"]) == (FIGURES[page.split("/")[0]] if report else 0)
    for complete, width, height in seen["images"]:
        assert complete and width > 0 and height > 0
    scroll_width, client_width = seen["overflow"]["page"]
    assert client_width <= WIDTH and scroll_width <= client_width  # no horizontal scroll
    assert seen["overflow"]["tables"]
    for right, box_scroll, box_width in seen["overflow"]["tables"]:
        assert right <= client_width and box_scroll <= box_width  # the table fits: no scroll
    hidden = {alt: [label for label, n in counts.items() if n < MIN_PIXELS]
              for alt, counts in seen["pixels"].items()}
    assert all(not labels for labels in hidden.values()), hidden
    assert len(seen["pixels"]) == len(seen["images"])
