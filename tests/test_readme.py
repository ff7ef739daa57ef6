"""The README's code excerpts are the tested examples' code: every line of a ```python block that
starts with ``# examples/NAME.py`` stands in that file (the examples themselves are run and
compared with a plain loop in tests/integrations/test_integration_examples.py)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
EXCERPTS = [block for block in re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
            if block.startswith("# examples/")]


def test_the_readme_has_excerpts_of_the_examples():
    assert len(EXCERPTS) >= 2


@pytest.mark.parametrize("block", EXCERPTS, ids=lambda b: b.split("\n", 1)[0][2:])
def test_every_excerpt_line_stands_in_its_example(block):
    first, *lines = block.rstrip("\n").split("\n")
    source = {line.strip() for line in (ROOT / first[2:]).read_text(encoding="utf-8").splitlines()}
    missing = [line for line in lines if line.strip() and line.strip() not in source]
    assert not missing, f"README lines not in {first[2:]}: {missing}"


def _own_model_blocks(text: str, marker: str) -> list[str]:
    section = text.split(marker, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:toml|python)\n(.*?)```", section, flags=re.DOTALL)[:2]


def test_the_readme_own_model_example_is_the_manuals_tested_one():
    """The README's study file and factory are those of docs/lab.md "Your own model and data",
    which tests/lab/test_api.py runs with `regtorch run` and `regtorch sweep`."""
    manual = (ROOT / "docs" / "lab.md").read_text(encoding="utf-8")
    readme = _own_model_blocks(README, "**Your own model and data.**")
    assert len(readme) == 2
    assert readme == _own_model_blocks(manual, "## Your own model and data")
