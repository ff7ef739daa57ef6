"""Model builders: a linear model, an MLP or a CNN (:mod:`regtorch.lab.study.cnn`) as an
``nn.Sequential``, or the user's own module (``kind = "python"``).

The MLP is ``Linear → [BatchNorm1d] → ReLU → [Dropout]`` per hidden layer, then ``Linear``. A
variant's dropout rate goes after the hidden layers listed in ``dropout_after`` (all by default);
a rate of 0 adds no module. ``init = "normal"`` draws every weight from N(0, 1) and zeroes every
bias (d2l's high-dimensional regression: with torch's default init its overfitting does not show).

``kind = "python"``: ``factory`` (``"module:function"``, ``"file.py:function"`` relative to the
study file, or a callable from the Python API) is called with ``kwargs`` — and ``dropout=rate``
when the variant sets a dropout rate — under ``torch.manual_seed(seed)``, once per init seed: the
user's own initialization, drawn from the member's seed alone. It must return an ``nn.Module``;
its floating-point parameters and buffers are converted to the study's dtype.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from regtorch.lab.study.cnn import build_cnn
from regtorch.lab.study.sources import import_factory
from regtorch.lab.study.spec import ModelSpec, StudyError, factory_name, shown, shown_text

__all__ = ["LINEAR_BIAS", "LINEAR_WEIGHT", "build_model"]

LINEAR_WEIGHT, LINEAR_BIAS = "0.weight", "0.bias"
"""The parameter names of ``kind = "linear"`` (an ``nn.Sequential`` of one ``nn.Linear``): what
the closed-form checks of the summary read."""


def build_model(spec: ModelSpec, inputs: int | tuple[int, ...], outputs: int, *,
                dropout: float = 0.0, seed: int | None = None,
                dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build the model; with ``seed``, its initial weights are drawn from that seed alone.

    ``inputs`` is the number of features, or the shape of one example (``Datasets.input_shape``:
    ``(features,)``, or ``(C, H, W)`` for the cnn). The draw uses a forked RNG (the caller's
    global RNG state is untouched), so member ``seed`` starts from the same weights in every
    group and in a plain reference run.

    Raises:
        StudyError: the inputs do not fit the model (images for a linear model or an MLP, flat
            features for the cnn); a Python factory cannot be imported, raises, or returns no
            ``nn.Module``.
    """
    if spec.kind == "python":
        return _from_factory(spec, dropout=dropout, seed=seed, dtype=dtype)
    shape = (inputs,) if isinstance(inputs, int) else tuple(inputs)
    if spec.kind == "cnn":
        return build_cnn(spec, shape, outputs, dropout=dropout, seed=seed, dtype=dtype)
    if len(shape) != 1:
        raise StudyError(f"{spec.where}.kind: {shown(spec.kind)} needs flat features "
                         f"[N, features]; the data's examples have shape {list(shape)} "
                         f"(use kind = 'cnn')")
    inputs = shape[0]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        layers: list[nn.Module] = []
        width = inputs
        after = set(spec.dropout_after or range(1, len(spec.hidden) + 1))
        for number, hidden in enumerate(spec.hidden, start=1):
            layers.append(nn.Linear(width, hidden))
            if spec.norm == "batch":
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU())
            if dropout and number in after:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, outputs))
        model = nn.Sequential(*layers).to(dtype)
        if spec.init == "normal":
            with torch.no_grad():
                for layer in model.modules():
                    if isinstance(layer, nn.Linear):  # normalization layers keep gain 1, shift 0
                        layer.weight.normal_()
                        layer.bias.zero_()
    return model


def _from_factory(spec: ModelSpec, *, dropout: float, seed: int | None, dtype: torch.dtype
                  ) -> nn.Module:
    where = f"{spec.where}.factory"
    if callable(spec.factory):
        factory, ref = spec.factory, factory_name(spec.factory)
    else:
        factory, ref = import_factory(spec.factory, Path(spec.root), where), spec.factory
    kwargs = dict(spec.kwargs)
    if dropout:
        kwargs["dropout"] = dropout
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = factory(**kwargs)
        except Exception as error:  # the user's code: whatever it raises, named in one line
            text = shown_text(str(error))
            raise StudyError(f"{where}: {shown(ref)} raised {type(error).__name__}"
                             f"{': ' + text if text else ''}") from None
    if not isinstance(model, nn.Module):
        raise StudyError(f"{where}: {shown(ref)} returned {type(model).__name__}, not an nn.Module")
    return model.to(dtype)
