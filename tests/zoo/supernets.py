"""Super-networks like OTOv3's experiments: every candidate operator is a structure H2SPG may erase.

* ``DartsSuperNet``: DARTS-style cells whose edges are mixed edges summing separable convs 3x3 and
  5x5, dilated convs, max/avg pools (each followed by a BatchNorm, so it can be driven to zero)
  and a skip; the cell output concatenates its intermediate nodes.
* ``SuperResNet``: residual stages with extra candidate blocks, each stage also wrapped in an
  outer residual branch (blocks nest inside the stage).
* ``UNetStack``: small two-level U-Nets stacked with residual adds; the deep path of each level
  is a cat operand, nested in the level above.

All take 1-channel 8x8 images (load_digits) and return 10 logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, groups=groups,
                                   bias=False), nn.BatchNorm2d(cout))


class SepConv(nn.Module):
    """relu -> depthwise kxk -> pointwise 1x1 -> bn (DARTS' separable conv, one repeat)."""

    def __init__(self, c: int, k: int, dilation: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(c, c, k, padding=dilation * (k - 1) // 2, dilation=dilation, groups=c,
                            bias=False)
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn(self.pw(self.dw(F.relu(x))))


class PoolBN(nn.Module):
    def __init__(self, c: int, kind: str):
        super().__init__()
        self.kind = kind
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        pool = F.max_pool2d if self.kind == "max" else F.avg_pool2d
        return self.bn(pool(x, 3, 1, 1))


CANDIDATES = ("sep3", "sep5", "dil3", "max", "avg")


class MixedEdge(nn.Module):
    """sum of every candidate operation, plus the input itself (skip)."""

    def __init__(self, c: int, skip: bool = True):
        super().__init__()
        self.skip = skip
        self.ops = nn.ModuleDict({
            "sep3": SepConv(c, 3), "sep5": SepConv(c, 5), "dil3": SepConv(c, 3, dilation=2),
            "max": PoolBN(c, "max"), "avg": PoolBN(c, "avg")})

    def forward(self, x):
        out = sum(op(x) for op in self.ops.values())
        return out + x if self.skip else out


class DartsCell(nn.Module):
    """n1 = edge(n0); n2 = edge(n0) + edge(n1); output = 1x1 conv of cat(n1, n2)."""

    def __init__(self, c: int):
        super().__init__()
        self.e01, self.e02, self.e12 = MixedEdge(c), MixedEdge(c, skip=False), MixedEdge(c)
        self.out = conv_bn(2 * c, c, 1)

    def forward(self, x):
        n1 = self.e01(x)
        n2 = self.e02(x) + self.e12(n1)
        return F.relu(self.out(torch.cat([n1, n2], 1)))


class DartsSuperNet(nn.Module):
    def __init__(self, c: int = 8, cells: int = 2, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(1, c)
        self.cells = nn.Sequential(*[DartsCell(c) for _ in range(cells)])
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.cells(F.relu(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = conv_bn(c, c), conv_bn(c, c)

    def forward(self, x):
        return x + self.b(F.relu(self.a(x)))


class Stage(nn.Module):
    """x + proj(blocks(x)): the blocks are candidates, the whole stage one more (outer) one."""

    def __init__(self, c: int, blocks: int):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(c) for _ in range(blocks)])
        self.proj = conv_bn(c, c, 1)

    def forward(self, x):
        return x + self.proj(self.blocks(x))


class SuperResNet(nn.Module):
    def __init__(self, c: int = 8, stages: int = 2, blocks: int = 3, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(1, c)
        self.stages = nn.ModuleList([Stage(c * 2 ** i, blocks) for i in range(stages)])
        self.widen = nn.ModuleList([conv_bn(c * 2 ** i, c * 2 ** (i + 1), 1)
                                    for i in range(stages - 1)])
        self.fc = nn.Linear(c * 2 ** (stages - 1), classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for i, stage in enumerate(self.stages):
            x = F.relu(stage(x))
            if i < len(self.widen):
                x = F.relu(self.widen[i](F.max_pool2d(x, 2)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class UNet(nn.Module):
    """Two levels: e1 -> pool -> e2 -> pool -> b; up(b) cat e2 -> d2; up(d2) cat e1 -> d1."""

    def __init__(self, c: int):
        super().__init__()
        self.e1, self.e2, self.b = conv_bn(c, c), conv_bn(c, c), conv_bn(c, c)
        self.d2, self.d1 = conv_bn(2 * c, c), conv_bn(2 * c, c)

    def forward(self, x):
        e1 = F.relu(self.e1(x))
        e2 = F.relu(self.e2(F.max_pool2d(e1, 2)))
        b = F.relu(self.b(F.max_pool2d(e2, 2)))
        d2 = F.relu(self.d2(torch.cat([e2, F.interpolate(b, scale_factor=2.0)], 1)))
        return self.d1(torch.cat([e1, F.interpolate(d2, scale_factor=2.0)], 1))


class UNetStack(nn.Module):
    def __init__(self, c: int = 8, unets: int = 2, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(1, c)
        self.unets = nn.ModuleList([UNet(c) for _ in range(unets)])
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for u in self.unets:
            x = F.relu(x + u(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


SUPERNETS = {"darts": DartsSuperNet, "resnet": SuperResNet, "unet": UNetStack}
