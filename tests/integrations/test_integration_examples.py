"""The integration examples run, print what docs/integrations.md shows, and train the same model
as a plain PyTorch loop written here; the docs' code is the examples' code."""

from __future__ import annotations

import ast
import runpy
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "integrations.md"
EXAMPLES = {"lightning": ROOT / "examples" / "lightning_l1.py",
            "transformers": ROOT / "examples" / "transformers_l1.py"}
# The examples train in float32 as users do; the plain loop runs the same operations, so only a
# different summation order inside a kernel could separate them.
FLOAT32_RTOL, FLOAT32_ATOL = 1e-5, 1e-6
LR, MOMENTUM, LAM, EPOCHS, BATCH = 0.05, 0.9, 0.05, 20, 64


def blocks(kind: str) -> list[str]:
    """The fenced code blocks of the docs whose info string is ``kind``."""
    found, current, info = [], None, ""
    for line in DOCS.read_text().splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == kind:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


def run_example(name: str, capsys) -> tuple[dict, str]:
    pytest.importorskip(name, reason=f"the {name} extra is not installed")
    namespace = runpy.run_path(str(EXAMPLES[name]), run_name="__main__")
    return namespace, capsys.readouterr().out


def plain_prox_loop(linear: nn.Linear, x: torch.Tensor, y: torch.Tensor,
                    clip: float | None) -> None:
    """SGD-momentum, then soft-thresholding of the weight by the effective step lr/(1−μ), by
    hand, mini-batches in order."""
    model, weight = linear, linear.weight
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    for _ in range(EPOCHS):
        for xb, yb in zip(x.split(BATCH), y.split(BATCH)):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(xb), yb).backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            with torch.no_grad():
                tau = LR / (1 - MOMENTUM) * LAM
                weight.copy_(torch.sign(weight) * torch.clamp(weight.abs() - tau, min=0.0))


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.equal(actual == 0, expected == 0)
    torch.testing.assert_close(actual, expected, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)


def documented_output(name: str) -> str:
    (block,) = [b for b in blocks("") if b.startswith(f"$ python examples/{name}_l1.py")]
    return block.split("\n", 1)[1]


def test_lightning_example(capsys):
    namespace, out = run_example("lightning", capsys)
    assert out.endswith(documented_output("lightning"))
    torch.manual_seed(0)
    x, y = namespace["make_data"]()
    model = namespace["Regression"]().model
    plain_prox_loop(model, x, y, clip=None)
    trained = namespace["module"].model
    assert_same(trained.weight.detach(), model.weight.detach())
    assert_same(trained.bias.detach(), model.bias.detach())


def test_transformers_example(capsys):
    namespace, out = run_example("transformers", capsys)
    assert out.endswith(documented_output("transformers"))
    torch.manual_seed(0)
    data = namespace["make_data"]()
    x = torch.stack([d["x"] for d in data])
    y = torch.stack([d["labels"] for d in data])
    model = namespace["Regression"]().linear
    # The Trainer clips to max_grad_norm=1.0 unless told otherwise.
    plain_prox_loop(model, x, y, clip=1.0)
    trained = namespace["model"].linear
    assert_same(trained.weight.detach(), model.weight.detach())
    assert_same(trained.bias.detach(), model.bias.detach())


def test_docs_code_is_the_examples_code_or_at_least_python():
    examples = "\n".join(path.read_text() for path in EXAMPLES.values())
    for block in blocks("python"):
        if block not in examples:
            ast.parse(textwrap.dedent(block))
