"""load_digits (1797 real 8x8 images, offline) and a small CNN for the optimizer tests."""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


def digits(seed: int = 0):
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    return (X[:1400], y[:1400]), (X[1400:], y[1400:])


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


def train(module, optimizer, data, epochs: int, batch: int = 64, seed: int = 0,
          on_step=None) -> None:
    X, y = data
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        module.train()
        order = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(module(X[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step)


@torch.no_grad()
def accuracy(module, data) -> float:
    X, y = data
    was = module.training
    module.eval()
    acc = (module(X).argmax(1) == y).float().mean().item()
    module.train(was)
    return acc


def steps_per_epoch(data, batch: int = 64) -> int:
    return (len(data[0]) + batch - 1) // batch
