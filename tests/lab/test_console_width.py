"""The console's comparison table at 80 and 120 columns: no variant name or number is ever cut
(means only, then the columns split over several tables, when the full table does not fit)."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from regtorch.lab.analysis.summary import summarize
from regtorch.lab.present.console import print_study
from regtorch.lab.present.tables import table_rows
from regtorch.lab.study.presets import preset
from regtorch.lab.train import run_study

TITLE = "digits: 2 seeds × 1 epoch"


@pytest.fixture(scope="module")
def digits_summary():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # wd-10 and wd-10000: two names one cut would make look the same
        return summarize(run_study(preset("digits").with_overrides(seeds=2, epochs=1)))
    finally:
        torch.set_num_threads(before)


def _printed(summary: dict, width: int) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, highlight=False, markup=False, emoji=False)
    headers, rows = table_rows(summary)
    print_study(console, TITLE, headers, rows, summary)
    return buffer.getvalue()


@pytest.mark.parametrize("width", [80, 120, 200])
def test_no_name_or_number_is_cut(digits_summary, width):
    text = _printed(digits_summary, width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text
    headers, rows = table_rows(digits_summary)
    for header in headers:
        assert header in text, header
    table_lines = [line.split() for line in lines if line.startswith("  ") and line.strip()]
    for row in rows:
        shown = [words for words in table_lines if words[0] == row[0]]
        assert shown, row[0]  # the variant's name, whole, leads its rows
        tokens = {token for words in shown for token in words}
        for cell in row[1:]:
            mean = cell.split(" ± ")[0]
            if mean:
                assert mean in tokens, (row[0], cell)


def test_a_wide_console_shows_the_spreads(digits_summary):
    text = _printed(digits_summary, 200)
    assert " ± " in text and "means over the seeds" not in text


@pytest.mark.parametrize("width", [80, 120])
def test_a_narrow_console_says_the_spreads_are_left_out(digits_summary, width):
    text = _printed(digits_summary, width)
    table = [line for line in text.splitlines() if line.startswith("  ")]
    assert not any(" ± " in line for line in table)
    assert "means over the seeds; ± std in the report and summary.json" in " ".join(text.split())
