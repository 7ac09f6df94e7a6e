"""Small hand-written models, each showing one pattern otofx must handle exactly."""

import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(nn.Module):
    """conv-bn-relu, a residual add, a padded conv and a 1x1 conv, flatten into a linear head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16 * 4 * 4, classes)

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = y + self.b2(self.c2(y))
        y = F.relu(self.c3(y))
        y = F.adaptive_avg_pool2d(y, 4)
        return self.fc(y.flatten(1))


def tiny_cnn(classes: int = 10) -> nn.Module:
    return TinyCNN(classes)


class Shuffle(nn.Module):
    """ShuffleNet's view-transpose-view channel shuffle between grouped convs."""

    def __init__(self, groups: int = 2):
        super().__init__()
        self.g = groups
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        b, c, h, w = y.shape
        y = y.view(b, self.g, c // self.g, h, w).transpose(1, 2).reshape(b, -1, h, w)
        return self.c(F.relu(self.b(y)))


class SEBlock(nn.Module):
    """Squeeze-and-excitation gating: x * sigmoid(fc(mean(x)))[:, :, None, None]."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(c, 4), nn.Linear(4, c)
        self.out = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))
        return self.out(y * s[:, :, None, None])
