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


class TorchvisionBlock(nn.Module):
    """torchvision's BasicBlock idiom: in-place ReLU modules and ``out += identity``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TorchvisionStyle(nn.Module):
    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer = nn.Sequential(TorchvisionBlock(c), TorchvisionBlock(c))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, 3)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layer(x))
        return self.fc(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand (1x1), depthwise 3x3, project (1x1, linear), residual."""

    def __init__(self, c: int, expand: int = 3) -> None:
        super().__init__()
        hidden = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.block(x)


class MobileStyle(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(c), InvertedResidual(c))
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean([2, 3]))


class DenseStyle(nn.Module):
    """DenseNet's idiom: every layer's output concatenated to its input."""

    def __init__(self, c: int = 3, growth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(c + i * growth), nn.ReLU(),
                          nn.Conv2d(c + i * growth, growth, 1)) for i in range(3))
        self.head = nn.Linear(c + 3 * growth, 2)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.head(torch.relu(x).amax((2, 3)))


class TokenMLP(nn.Module):
    """Embedding → pre-norm residual MLP blocks (LayerNorm over the stream) → mean → head."""

    def __init__(self, vocab: int = 11, d: int = 6, hidden: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(2))
        self.ups = nn.ModuleList(nn.Linear(d, hidden) for _ in range(2))
        self.downs = nn.ModuleList(nn.Linear(hidden, d) for _ in range(2))
        self.head = nn.Linear(d, 3)

    def forward(self, tokens):
        x = self.embed(tokens)
        for norm, up, down in zip(self.norms, self.ups, self.downs):
            x = x + down(nn.functional.gelu(up(norm(x))))
        return self.head(x.mean(1))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 5, 3)
        self.bn = nn.BatchNorm1d(5)
        self.conv2 = nn.Conv1d(5, 4, 1)
        self.fc = nn.Linear(4 * 6, 2)

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.bn(self.conv(x)))))
        return self.fc(y.flatten(1))


class SqueezeExcite(nn.Module):
    """conv → BN → ReLU, gated per channel by a squeeze-and-excitation branch, → head."""

    def __init__(self, c: int = 6, r: int = 3, unsqueeze: bool = False) -> None:
        super().__init__()
        self.unsqueeze = unsqueeze
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.fc1 = nn.Linear(c, r)
        self.fc2 = nn.Linear(r, c)
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3))))))
        s = s.unsqueeze(-1).unsqueeze(-1) if self.unsqueeze else s[:, :, None, None]
        return self.head((y * s).mean((2, 3)))
