"""Dropout helpers: every dropout module of a nested model, listed and set at once.

The expected names are written out by hand from the layer definitions below and from the
attribute order of ``nn.TransformerEncoderLayer`` (``self_attn``, ``dropout``, ``dropout1``,
``dropout2``).
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import regtorch
from regtorch import dropout_modules, set_dropout


class Net(nn.Module):
    """A Sequential with dropout inside a custom module, a Transformer encoder layer (three
    ``nn.Dropout`` and a ``MultiheadAttention``), a ``Dropout1d``; input (N, T=5, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.3), nn.SELU(),
                                  nn.AlphaDropout(0.2))
        self.encoder = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16,
                                                  dropout=0.1, batch_first=True)
        self.feature_drop = nn.Dropout1d(0.5)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_drop(self.encoder(self.body(x))))


NAMES = ["body.1", "body.3", "encoder.self_attn", "encoder.dropout", "encoder.dropout1",
         "encoder.dropout2", "feature_drop"]


def net() -> Net:
    torch.manual_seed(0)
    return Net()


def rates(model: Net) -> list[float]:
    """The rates read straight from the modules, in NAMES order."""
    e = model.encoder
    return [model.body[1].p, model.body[3].p, e.self_attn.dropout, e.dropout.p, e.dropout1.p,
            e.dropout2.p, model.feature_drop.p]


def test_lists_every_dropout_module_with_its_name():
    model = net()
    listed = dropout_modules(model)
    assert [name for name, _ in listed] == NAMES
    e = model.encoder
    expected = [model.body[1], model.body[3], e.self_attn, e.dropout, e.dropout1, e.dropout2,
                model.feature_drop]
    assert all(got is want for (_, got), want in zip(listed, expected))


def test_set_dropout_counts_changes_and_sets_rates():
    model = net()
    assert rates(model) == [0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.5]
    assert set_dropout(model, 0.0) == 7
    assert rates(model) == [0.0] * 7
    assert all(type(r) is float for r in rates(model))
    assert set_dropout(model, 0.0) == 0  # already there: nothing changed


def test_modules_already_at_the_rate_are_not_counted():
    model = net()
    assert set_dropout(model, 0.1) == 3  # body.1, body.3, feature_drop; the encoder is at 0.1
    assert rates(model) == [0.1] * 7


@pytest.mark.parametrize("p", [0, 1, np.float32(0.25), 0.5],
                         ids=["int-0", "int-1", "numpy-float32", "float"])
def test_accepts_real_numbers_in_the_unit_interval(p):
    model = net()
    set_dropout(model, p)
    assert rates(model) == [float(p)] * 7


def test_train_mode_output_is_deterministic_only_without_dropout():
    model = net().train()
    x = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(1))
    set_dropout(model, 0.0)
    assert torch.equal(model(x), model(x))
    set_dropout(model, 0.3)
    assert not torch.equal(model(x), model(x))


def test_attention_dropout_is_turned_off():
    """The rate of MultiheadAttention is a float its forward reads: setting it acts at once."""
    attention = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True).train()
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(2))
    assert [name for name, _ in dropout_modules(attention)] == [""]
    assert not torch.equal(attention(x, x, x)[0], attention(x, x, x)[0])
    assert set_dropout(attention, 0.0) == 1
    assert torch.equal(attention(x, x, x)[0], attention(x, x, x)[0])


def test_shared_module_listed_once():
    shared = nn.Dropout(0.2)
    model = nn.Sequential(nn.Linear(3, 3), shared, nn.Linear(3, 3), shared)
    assert dropout_modules(model) == [("1", shared)]
    assert set_dropout(model, 0.4) == 1 and shared.p == 0.4


def test_subclass_of_dropout_is_included_and_other_modules_are_not():
    class MyDropout(nn.Dropout):
        pass

    model = nn.Sequential(nn.Linear(3, 3), MyDropout(0.2), nn.ReLU())
    assert [name for name, _ in dropout_modules(model)] == ["1"]
    assert dropout_modules(nn.Linear(3, 3)) == []
    assert set_dropout(nn.Linear(3, 3), 0.5) == 0


def test_wrapped_model_gives_unwrapped_names():
    """DataParallel wraps on CPU too; the other wrappers are unwrapped by the same
    ``regtorch.selection.unwrap`` (tested with the selection)."""
    model = net()
    wrapped = nn.DataParallel(model)
    assert [name for name, _ in dropout_modules(wrapped)] == NAMES
    assert set_dropout(wrapped, 0.0) == 7
    assert rates(model) == [0.0] * 7


BAD_P = {
    "negative": (-0.1, ValueError, "Invalid p value: -0.1"),
    "above-one": (1.5, ValueError, "Invalid p value: 1.5"),
    "nan": (math.nan, ValueError, "Invalid p value: nan"),
    "inf": (math.inf, ValueError, "Invalid p value: inf"),
    "bool": (True, TypeError, "Invalid p value: True"),
    "string": ("0.5", TypeError, "Invalid p value: '0.5'"),
    "none": (None, TypeError, "Invalid p value: None"),
    "tensor": (torch.tensor(0.5), TypeError, "Invalid p value: tensor(0.5000)"),
}


@pytest.mark.parametrize("p, error, message", list(BAD_P.values()), ids=list(BAD_P))
def test_bad_p_raises_naming_the_value(p, error, message):
    model = net()
    with pytest.raises(error, match=re.escape(message)):
        set_dropout(model, p)
    assert rates(model) == [0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.5]  # nothing was touched


def test_not_a_module_raises():
    message = "Invalid model: expected an nn.Module, got list"
    with pytest.raises(TypeError, match=re.escape(message)):
        dropout_modules([nn.Dropout()])


def test_logs_how_many_changed(caplog):
    caplog.set_level(logging.DEBUG, logger="regtorch")
    model = net()
    set_dropout(model, 0.1)
    assert caplog.messages[-1] == "regtorch: dropout rate set to 0.1 on 3 of 7 dropout modules"


def test_public_names():
    for name in ("dropout_modules", "set_dropout"):
        assert name in regtorch.__all__ and getattr(regtorch, name).__name__ == name
