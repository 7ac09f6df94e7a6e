"""A narrow ResNet-style CNN for 8x8 digits: a conv stem, three residual blocks, pool, linear."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut (identity, or 1x1 conv-bn when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.shortcut(x))


class DigitsResNet(nn.Module):
    """8x8x1 -> stem (``width``) -> Block(width) -> Block(2*width, stride 2) -> Block(2*width)
    -> global average pool -> linear (10 classes)."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.layers = nn.Sequential(Block(width, width), Block(width, 2 * width, 2),
                                    Block(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))
