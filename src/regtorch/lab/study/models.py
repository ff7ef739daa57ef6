"""Model builders: a linear model, an MLP or a CNN (:mod:`regtorch.lab.study.cnn`) as an
``nn.Sequential``.

The MLP is ``Linear → [BatchNorm1d] → ReLU → [Dropout]`` per hidden layer, then ``Linear``. A
variant's dropout rate goes after the hidden layers listed in ``dropout_after`` (all by default);
a rate of 0 adds no module. ``init = "normal"`` draws every weight from N(0, 1) and zeroes every
bias (d2l's high-dimensional regression: with torch's default init its overfitting does not show).
"""

from __future__ import annotations

import torch
from torch import nn

from regtorch.lab.study.cnn import build_cnn
from regtorch.lab.study.spec import ModelSpec, StudyError

__all__ = ["build_model"]


def build_model(spec: ModelSpec, inputs: int | tuple[int, ...], outputs: int, *,
                dropout: float = 0.0, seed: int | None = None,
                dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Build the model; with ``seed``, its initial weights are drawn from that seed alone.

    ``inputs`` is the number of features, or the shape of one example (``Datasets.input_shape``:
    ``(features,)``, or ``(C, H, W)`` for the cnn). The draw uses a forked RNG (the caller's
    global RNG state is untouched), so member ``seed`` starts from the same weights in every
    group and in a plain reference run.

    Raises:
        StudyError: the inputs do not fit the model (images for a linear model or an MLP, flat
            features for the cnn).
    """
    shape = (inputs,) if isinstance(inputs, int) else tuple(inputs)
    if spec.kind == "cnn":
        return build_cnn(spec, shape, outputs, dropout=dropout, seed=seed, dtype=dtype)
    if len(shape) != 1:
        raise StudyError(f"model.kind: {spec.kind!r} needs flat features [N, features]; the "
                         f"data's examples have shape {list(shape)} (use kind = 'cnn')")
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
