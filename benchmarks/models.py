"""Benchmark models: torchvision classics and a deep synthetic ResNet of a chosen fx graph size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut (identity, or 1x1 conv-bn when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class DeepResNet(nn.Module):
    """CIFAR-style ResNet: a conv stem, three stages of ``blocks`` BasicBlocks, pool, linear."""

    def __init__(self, blocks: int, widths: tuple[int, int, int] = (16, 32, 64),
                 num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers: list[nn.Module] = []
        c_in = widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks):
                layers.append(BasicBlock(c_in, width, 2 if stage > 0 and i == 0 else 1))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def fx_node_count(model: nn.Module) -> int:
    """Number of nodes of ``torch.fx.symbolic_trace(model)``'s graph."""
    return len(torch.fx.symbolic_trace(model).graph.nodes)


def deep_resnet_for_nodes(target_nodes: int) -> DeepResNet:
    """The DeepResNet whose fx graph size is closest to ``target_nodes``.

    The node count is affine in ``blocks``, so two small traces give the slope.
    """
    one, two = fx_node_count(DeepResNet(1)), fx_node_count(DeepResNet(2))
    blocks = max(1, round((target_nodes - one) / (two - one)) + 1)
    return DeepResNet(blocks)


@dataclass(frozen=True)
class ModelSpec:
    """A named model factory and its input resolution."""

    name: str
    build: Callable[[], nn.Module]
    image_size: int


def torchvision_model(name: str) -> Callable[[], nn.Module]:
    """Factory for an untrained torchvision classification model."""
    def build() -> nn.Module:
        import torchvision
        return getattr(torchvision.models, name)(weights=None)
    return build


def model_specs(quick: bool, deep_image_size: int = 32) -> list[ModelSpec]:
    """The benchmark's models; ``quick`` skips vit_b_16 and the 2000-node ResNet."""
    specs = [ModelSpec("resnet18", torchvision_model("resnet18"), 224),
             ModelSpec("resnet50", torchvision_model("resnet50"), 224),
             ModelSpec("vit_b_16", torchvision_model("vit_b_16"), 224),
             ModelSpec("deep-resnet-500", lambda: deep_resnet_for_nodes(500), deep_image_size),
             ModelSpec("deep-resnet-2000", lambda: deep_resnet_for_nodes(2000), deep_image_size)]
    if quick:
        specs = [s for s in specs if s.name not in ("vit_b_16", "deep-resnet-2000")]
    return specs
