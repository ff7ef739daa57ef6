"""Small models for the structure tests: an MLP and a ResNet-style CNN (torchvision is not
importable here)."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def mlp(sizes=(6, 16, 12, 3)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class Block(nn.Module):
    """A basic residual block: conv-bn-relu-conv-bn, plus the input (or a 1x1 conv-bn of it)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.down is None else self.down(x)
        return torch.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 4, flatten_head: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(Block(width, width), Block(width, width))
        self.layer2 = nn.Sequential(Block(width, 2 * width, 2), Block(2 * width, 2 * width))
        self.flatten_head = flatten_head
        self.head = nn.Linear(2 * width * (16 if flatten_head else 1), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        if self.flatten_head:
            x = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        else:
            x = x.mean((2, 3))
        return self.head(x)
