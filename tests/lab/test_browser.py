"""The HTML reports in a real browser: Debian's headless Chromium, driven by Playwright.

Two real studies are trained (a regression and a classification, a few epochs), their reports
and the index over both are written, and each page is opened from ``file://`` in an offline
browser context. A page passes when it logs no console error and raises no page error, requests
nothing but itself and ``data:`` URIs, decodes every image, and shows every variant.

Nothing here downloads a browser: the test uses ``/usr/bin/chromium`` (Debian's ``chromium``
package, which ``.ci/run`` installs). Without it, or without Playwright, the test is skipped —
unless ``REGTORCH_REQUIRE_BROWSER=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from regtorch.lab.cli import main
from regtorch.lab.present.report import regenerate

CHROMIUM = Path("/usr/bin/chromium")
# Headless and quiet: this machine has no internet, and without these flags Chromium tries to
# reach out (component updates, sync, first-run pings) on its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STUDIES = {"d2l-highdim": ["--seeds", "2", "--epochs", "3"],
           "digits": ["--seeds", "2", "--epochs", "2"]}
SWEEP = "d2l-highdim-sweep-l1"
SWEEP_ARGS = ["sweep", "d2l-highdim", "--penalty", "l1", "--lambdas", "0.01:1:5", "--seeds", "2",
              "--epochs", "3"]
# loss, weights (and accuracy: classification); a sweep's path_loss and path_weights
FIGURES = {"d2l-highdim": 2, "digits": 3, SWEEP: 2}
TIMEOUT_MS = 15_000


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


def _shown(out: Path, study: str) -> list[str]:
    """What the page must show: every variant of a study; every λ of a sweep's path."""
    summary = json.loads((out / study / "summary.json").read_text())
    if summary.get("kind") == "sweep":
        return [f"{p['lambda']:.4g}" for p in summary["path"]]
    return list(summary["variants"])


def _open(browser, path: Path) -> dict:
    """Load ``path`` in a fresh offline context; what it logged, requested, showed and decoded."""
    context = browser.new_context(offline=True)
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
    finally:
        context.close()
    return seen


@pytest.mark.parametrize("page", ["d2l-highdim/report.html", "digits/report.html",
                                  f"{SWEEP}/report.html", "index.html"])
def test_report_renders_offline_with_every_variant(browser, out, page):
    path = out / page
    seen = _open(browser, path)
    assert seen["console_errors"] == []
    assert seen["page_errors"] == []
    others = [url for url in seen["requests"]
              if url != path.as_uri() and not url.startswith("data:")]
    assert others == []
    studies = [page.split("/")[0]] if "/" in page else [*STUDIES, SWEEP]
    words = set(seen["text"].split())  # whole words: "l1-1" must not pass on "prox-l1-1"
    for study in studies:
        for name in _shown(out, study):
            assert name in words, (study, name)
    assert len(seen["images"]) == sum(FIGURES[study] for study in studies)
    for complete, width, height in seen["images"]:
        assert complete and width > 0 and height > 0
