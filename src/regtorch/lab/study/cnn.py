"""The built-in CNN for image inputs ``[N, C, H, W]``: conv blocks, then a linear head.

Block ``i`` (1-based) is ``conv{i} → [norm{i}] → relu{i} → [pool{i}]``: a ``Conv2d`` with
``channels[i-1]`` filters of ``kernel × kernel`` (stride 1, ``padding``; default ``kernel // 2``,
which keeps an odd kernel's size), ``BatchNorm2d`` with ``norm = "batch"``, ReLU, then a
``pool_size`` max- or average-pooling (``pool = "max" | "avg" | "none"``). The head is
``flatten → [drop] → fc{j} → relu → [drop] … → head``: optional hidden widths ``hidden``, then a
``Linear`` to the outputs. A variant's dropout rate goes before every linear layer of the head;
a rate of 0 adds no module.

With ``residual = true`` every block gets a residual block ``res{i}`` after its ReLU (before the
pooling): ``relu(x + norm2(conv2(relu(norm1(conv1(x))))))`` (:class:`ResidualBlock`; the norms
follow ``norm``), two ``kernel × kernel`` convolutions that keep the block's channels and size
(an odd kernel, padding ``kernel // 2``). The addition couples ``conv{i}``'s channels with
``res{i}.conv2``'s: :func:`regtorch.channel_groups` makes them one group, which
:func:`regtorch.compact` removes as one.

Layers have names, so a study's ``params`` glob can pick them: ``"conv*.weight"`` is every conv
filter bank (a ``GroupLasso(groups="rows")`` on them is one group per filter), ``"head.*"`` the
output layer.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from regtorch.lab.study.spec import ModelSpec, StudyError

__all__ = ["ResidualBlock", "build_cnn", "cnn_output_shape"]


class ResidualBlock(nn.Module):
    """``relu(x + norm2(conv2(relu(norm1(conv1(x))))))`` with ``channels`` in and out, the
    norms ``BatchNorm2d`` (``norm = True``) or absent.

    >>> ResidualBlock(4, kernel=3, norm=True)(torch.randn(2, 4, 5, 5)).shape
    torch.Size([2, 4, 5, 5])
    """

    def __init__(self, channels: int, kernel: int, norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.norm1 = nn.BatchNorm2d(channels) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.norm2 = nn.BatchNorm2d(channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(h)))


def _padding(spec: ModelSpec) -> int:
    return spec.kernel // 2 if spec.padding is None else spec.padding


def cnn_output_shape(spec: ModelSpec, input_shape: tuple[int, ...],
                     where: str = "model") -> tuple[int, int, int]:
    """``(channels, height, width)`` after the conv blocks, for one input ``(C, H, W)``.

    >>> cnn_output_shape(ModelSpec("cnn", channels=(16, 32)), (1, 8, 8))
    (32, 2, 2)

    Raises:
        StudyError: the input is not an image, or a block leaves no pixel.
    """
    if len(input_shape) != 3:
        raise StudyError(f"{where}.kind: 'cnn' needs image inputs [N, C, H, W]; the data's "
                         f"examples have shape {list(input_shape)}")
    _, height, width = input_shape
    for number in range(1, len(spec.channels) + 1):
        height = height + 2 * _padding(spec) - spec.kernel + 1
        width = width + 2 * _padding(spec) - spec.kernel + 1
        if spec.pool != "none":
            height, width = height // spec.pool_size, width // spec.pool_size
        if height < 1 or width < 1:
            raise StudyError(f"{where}.channels: block {number} of {list(spec.channels)} leaves "
                             f"no pixel of the {input_shape[1]}×{input_shape[2]} input (kernel "
                             f"{spec.kernel}, padding {_padding(spec)}, pool {spec.pool} "
                             f"{spec.pool_size})")
    return spec.channels[-1] if spec.channels else input_shape[0], height, width


def build_cnn(spec: ModelSpec, input_shape: tuple[int, ...], outputs: int, *,
              dropout: float = 0.0, seed: int | None = None,
              dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Build the CNN; with ``seed``, its initial weights are drawn from that seed alone (a forked
    RNG: the caller's global RNG state is untouched), as ``build_model`` does.

    Raises:
        StudyError: the input is not an image, or a block leaves no pixel.
    """
    flat = cnn_output_shape(spec, input_shape, spec.where)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = input_shape[0]
        for i, channels in enumerate(spec.channels, start=1):
            layers[f"conv{i}"] = nn.Conv2d(width, channels, spec.kernel, padding=_padding(spec))
            if spec.norm == "batch":
                layers[f"norm{i}"] = nn.BatchNorm2d(channels)
            layers[f"relu{i}"] = nn.ReLU()
            if spec.residual:
                layers[f"res{i}"] = ResidualBlock(channels, spec.kernel, spec.norm == "batch")
            if spec.pool == "max":
                layers[f"pool{i}"] = nn.MaxPool2d(spec.pool_size)
            elif spec.pool == "avg":
                layers[f"pool{i}"] = nn.AvgPool2d(spec.pool_size)
            width = channels
        layers["flatten"] = nn.Flatten()
        width = flat[0] * flat[1] * flat[2]
        for j, hidden in enumerate(spec.hidden, start=1):
            if dropout:
                layers[f"drop{j}"] = nn.Dropout(dropout)
            layers[f"fc{j}"] = nn.Linear(width, hidden)
            layers[f"fcrelu{j}"] = nn.ReLU()
            width = hidden
        if dropout:
            layers["drop"] = nn.Dropout(dropout)
        layers["head"] = nn.Linear(width, outputs)
        model = nn.Sequential(layers).to(dtype)
    return model
