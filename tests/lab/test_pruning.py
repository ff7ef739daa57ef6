"""The lab's channel penalty: ``penalty = "channels"`` trains vectorized (equal to member by
member), every member compacts to the outputs of its stacked self, the zero fraction and parameter
counts are what the zero pattern predicts, the digits-prune preset runs (a tiny variant), and a
model whose trace refuses exits 2 with one line naming the node.

References, never the code under test: the stacked members' outputs come from the vectorized
forward (``StackedStep.evaluate``) of the stacked final tensors; the expected parameter count of a
residual CNN is written out by hand from the numbers of exactly-zero channels read off the tensors.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from regtorch.lab.analysis.pruning import (
    count_macs,
    member_module,
    prune_member,
    summarize_pruning,
)
from regtorch.lab.cli import main
from regtorch.lab.study import parse_study
from regtorch.lab.study.presets import NOT_IN_DEMO, PRESETS
from regtorch.lab.train import run_study
from regtorch.lab.train.build import criterion
from regtorch.lab.train.step import StackedStep

F64 = torch.float64
TOLERANCE = 1e-10  # float64: compact's own check, and the bar

TINY = {  # the digits-prune recipe, small: 3 and 4 channels, 4 epochs, float64
    "name": "tiny-prune",
    "data": {"kind": "sklearn", "name": "digits", "images": True},
    "model": {"kind": "cnn", "channels": [3, 4], "norm": "batch", "residual": True},
    "train": {"loss": "cross-entropy", "optimizer": "sgd", "lr": 0.02, "momentum": 0.9,
              "batch_size": 128, "epochs": 4, "dtype": "float64"},
    "seeds": 2,
    "variants": [{"name": "none"},
                 {"name": "channels", "penalty": "channels", "apply": "prox",
                  "strength": [0.05, 0.1]}],
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    study = parse_study(TINY, "tiny")
    return study, run_study(study)


def test_the_group_trains_vectorized_and_equals_member_by_member(trained):
    study, stacked = trained
    assert [g["mode"] for g in stacked.groups] == ["vectorized"]
    one_by_one = run_study(study, memory=1)  # a budget of one member: each its own module
    assert all(g["mode"] == "loop" for g in one_by_one.groups)
    for key, tensors in stacked.finals.items():
        for name, value in tensors.items():
            torch.testing.assert_close(one_by_one.finals[key][name], value, rtol=TOLERANCE,
                                       atol=TOLERANCE, msg=f"{key} {name}")


def test_compacted_members_equal_their_stacked_outputs(trained):
    study, result = trained
    data = result.data
    x = data.split("test")[0]
    keys = list(result.finals)
    names = list(result.finals[keys[0]])
    template = member_module(study, data, keys[0], result.finals[keys[0]])
    parameter_names = [n for n, _ in template.named_parameters()]
    buffer_names = [n for n in names if n not in parameter_names]
    step = StackedStep(template, parameter_names, criterion(study.train.loss), random=False,
                       traces={}, buffer_names=buffer_names)
    step.bind([torch.stack([result.finals[k][n] for k in keys]) for n in parameter_names],
              [torch.stack([result.finals[k][n] for k in keys]) for n in buffer_names])
    outputs = step.evaluate(x)  # the vectorized forward of the stacked members
    removed = 0
    for k, key in enumerate(keys):
        measured = prune_member(member_module(study, data, key, result.finals[key]), x,
                                timed=False)
        with torch.no_grad():
            small = measured["model"](x)
        torch.testing.assert_close(small, outputs[k], rtol=TOLERANCE, atol=TOLERANCE)
        removed += measured["parameters_compact"] < measured["parameters"]
    assert removed >= 1  # the strong λ removed channels: the check is not vacuous


def _zero(*slices: torch.Tensor) -> torch.Tensor:
    """Per channel (dim 0 of every slice), whether all of its entries are exactly zero."""
    return torch.stack([s.reshape(s.shape[0], -1).eq(0).all(1) for s in slices]).all(0)


def expected_counts(module) -> tuple[int, int, int, int]:
    """(channels, exactly-zero channels, channels kept, parameters after removing them), by
    hand, for the cnn with residual blocks: block i's stream channels are conv{i}'s filters with
    norm{i} and res{i}.conv2/norm2 (coupled by the addition); res{i}.conv1/norm1 has its own
    channels. Every producer here feeds a BatchNorm, so a channel is zero when the weight and
    bias of its norms are (ChannelLasso's default roles="auto"; compact then removes the rows
    too). A layer whose channels are all zero keeps one (compact's documented rule)."""
    channels = zeros = kept = 0
    total = 0
    width = 1  # the image channel
    kernel = module.conv1.kernel_size[0] ** 2
    for i in (1, 2):
        norm, res = getattr(module, f"norm{i}"), getattr(module, f"res{i}")
        stream = _zero(norm.weight, norm.bias, res.norm2.weight, res.norm2.bias)
        inner = _zero(res.norm1.weight, res.norm1.bias)
        c, h = max(int((~stream).sum()), 1), max(int((~inner).sum()), 1)
        channels += len(stream) + len(inner)
        zeros += int(stream.sum()) + int(inner.sum())
        kept += c + h
        total += (c * width * kernel + c) + 2 * c          # conv{i}, norm{i}
        total += (h * c * kernel + h) + 2 * h              # res.conv1, res.norm1
        total += (c * h * kernel + c) + 2 * c              # res.conv2, res.norm2
        width = c
    head = module.head
    pixels = head.in_features // module.conv2.out_channels
    total += head.out_features * width * pixels + head.out_features
    return channels, zeros, kept, total


def test_zero_fraction_and_parameter_counts_match_the_zero_pattern(trained):
    study, result = trained
    summary = summarize_pruning(result, timed=False)
    x = result.data.split("test")[0]
    seen_zero = False
    for key, tensors in result.finals.items():
        module = member_module(study, result.data, key, tensors)
        channels, zeros, kept, parameters = expected_counts(module)
        measured = prune_member(module, x, timed=False)
        assert measured["channels"] == channels
        assert measured["zero_fraction"] == zeros / channels
        assert measured["channels_kept"] == kept
        assert measured["parameters_compact"] == parameters
        assert measured["parameters"] == sum(p.numel() for p in module.parameters())
        seen_zero |= 0 < zeros < channels - 1
    assert seen_zero  # a member with some channels removed, not all
    # the summary: one entry per (variant, λ), the reference first, means over the seeds
    entries = summary["entries"]
    assert [(e["variant"], e["lambda"]) for e in entries] == [
        ("none", None), ("channels", 0.05), ("channels", 0.1)]
    assert entries[0]["reference"] and entries[0]["zero_fraction"] == 0.0
    assert all(e["members"] == 2 for e in entries)


def test_macs_count_linear_and_conv_layers():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 4 * 4, 5))
    # conv: 16 positions × 3 filters × 2 inputs × 9; linear: 48 × 5
    assert count_macs(model, torch.randn(7, 2, 4, 4)) == 16 * 3 * 2 * 9 + 48 * 5


def test_digits_prune_is_a_preset_outside_the_demo_and_runs_small(tmp_path, capsys):
    assert "digits-prune" in PRESETS and "digits-prune" in NOT_IN_DEMO
    spec = copy.deepcopy(PRESETS["digits-prune"])  # the preset, made tiny by overrides
    spec["model"]["channels"] = [2, 3]
    spec["variants"][1]["strength"] = [0.01, 0.05]
    spec["data"]["val"] = spec["data"]["test"] = 0.1
    toml = _toml(spec)
    path = tmp_path / "tiny.toml"
    path.write_text(toml)
    assert main(["run", str(path), "--seeds", "1", "--epochs", "2", "--out",
                 str(tmp_path / "runs"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "channels removed by compact" in out and "0 (reference)" in out
    directory = tmp_path / "runs" / "digits-prune"
    summary = json.loads((directory / "summary.json").read_text())
    assert [e["lambda"] for e in summary["pruning"]["entries"]] == [None, 0.01, 0.05]
    assert all(e["latency_ms"] > 0 for e in summary["pruning"]["entries"])
    assert (directory / "pruning.png").stat().st_size > 0
    assert "Channels removed by compact" in (directory / "report.html").read_text()


def _toml(spec: dict) -> str:
    """The preset dict as a TOML study file (the few value types it uses)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(i) for i in v) + "]"
        return repr(v)

    lines = [f"{k} = {value(v)}" for k, v in spec.items() if not isinstance(v, (dict, list))]
    for table in ("data", "model", "train"):
        lines += [f"[{table}]", *(f"{k} = {value(v)}" for k, v in spec[table].items())]
    for variant in spec["variants"]:
        lines += ["[[variants]]", *(f"{k} = {value(v)}" for k, v in variant.items())]
    return "\n".join(lines) + "\n"


REFUSING = {
    "untraceable": ("def forward(self, x):\n        h = self.a(x)\n"
                    "        if h.sum() > 0:\n            h = -h\n        return self.b(h)",
                    r"torch\.fx cannot trace Net"),
    "cumsum": ("def forward(self, x):\n        return self.b(torch.cumsum(self.a(x), 1))",
               r"no removable channel in Net \(8 channels of a\.weight: node 'cumsum'"),
}

FACTORY = """\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    {forward}


def make():
    return Net()
"""

STUDY = """\
name = "mine"
seeds = 1
[data]
kind = "sklearn"
name = "iris"
[model]
kind = "python"
factory = "net.py:make"
[train]
loss = "cross-entropy"
epochs = 1
[[variants]]
name = "none"
"""


@pytest.mark.parametrize("case", list(REFUSING))
def test_a_model_whose_trace_refuses_exits_2_with_one_line(tmp_path, monkeypatch, capsys,
                                                          case):
    forward, message = REFUSING[case]
    (tmp_path / "net.py").write_text(FACTORY.format(forward=forward))
    (tmp_path / "my.toml").write_text(STUDY)
    monkeypatch.chdir(tmp_path)
    status = main(["sweep", "my.toml", "--penalty", "channels", "--lambdas", "0.01",
                   "--out", "runs"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1, lines
    assert re.search(message, lines[0]), lines[0]
    assert not Path("runs").exists()


MLP_FACTORY = """\
from torch import nn


def make(width=16):
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))
"""


def test_sweep_channels_on_a_model_factory(tmp_path, monkeypatch, capsys):
    (tmp_path / "net.py").write_text(MLP_FACTORY)
    (tmp_path / "my.toml").write_text(STUDY.replace("epochs = 1", 'epochs = 6\noptimizer = "sgd"'
                                                    "\nlr = 0.1\nmomentum = 0.9"))
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "my.toml", "--penalty", "channels", "--lambdas", "0.01,0.3",
                 "--seeds", "2", "--out", "runs", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "channels removed by compact" in out
    directory = Path("runs") / "mine-sweep-channels"
    summary = json.loads((directory / "summary.json").read_text())
    config = json.loads((directory / "config.json").read_text())
    assert [g["mode"] for g in config["run"]["groups"]] == ["vectorized"]
    assert summary["best_lambda"] in (0.01, 0.3)
    entries = summary["pruning"]["entries"]
    assert [e["lambda"] for e in entries] == [None, 0.01, 0.3]
    assert all(e["channels"] == 16 and e["members"] == 2 for e in entries)
    strong = entries[2]
    assert strong["zero_fraction"] > 0  # λ = 0.3 zeroes hidden units of the user's MLP
    # an MLP's parameters are linear in the hidden units kept: 4·h + h + 3·h + 3
    assert strong["parameters_compact"] == 8 * strong["channels_kept"] + 3


def test_a_channel_rule_that_cannot_bind_names_the_penalty_not_params():
    from types import SimpleNamespace

    from regtorch import channel_groups
    from regtorch.lab.study.spec import StudyError, Variant
    from regtorch.lab.train.build import channel_penalty
    from regtorch.lab.train.units import Unit

    template = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    groups = channel_groups(template, torch.randn(2, 3))
    stacked = {n: torch.stack([p.detach()] * 3) for n, p in template.named_parameters()}
    rules = dict([channel_penalty(groups, torch.tensor([0.1, 0.2]), stacked)])  # 2 λ, 3 members
    unit = SimpleNamespace(template=template, tensors=stacked)
    with pytest.raises(StudyError, match=r"^variant 'ch': penalty 'channels': .*stacked as \[2"):
        Unit._regularizer(unit, Variant("ch", penalty="channels"), rules)
