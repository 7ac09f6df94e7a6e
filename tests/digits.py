"""load_digits data, training and accuracy (shared with the examples) and a small CNN for the
optimizer tests."""

import sys
from pathlib import Path

import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # `import examples`

from examples.digits_data import accuracy, digits, steps_per_epoch, train  # noqa: E402

__all__ = ["DigitsCNN", "accuracy", "digits", "steps_per_epoch", "train"]


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.c2, self.b2 = nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.c3, self.b3 = nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64 * 2 * 2, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        x = x + F.relu(self.b3(self.c3(x)))
        return self.fc(F.max_pool2d(x, 2).flatten(1))
