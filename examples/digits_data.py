"""load_digits (1797 real 8x8 images, offline), a harder generated variant, training and accuracy.

Shared by the main job (``examples/compress_digits.py``), ``benchmarks/compress_quality.py`` and
the tests. ``digits()`` is the plain task; ``noisy_digits()`` the same images shifted by up to one
pixel and buried in Gaussian noise, for when the plain task saturates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

Split = tuple[torch.Tensor, torch.Tensor]
TRAIN = 1400  # images in the training split; the other 397 are the test split


def digits(seed: int = 0) -> tuple[Split, Split]:
    """``(train, test)`` splits of load_digits, each ``(X [N,1,8,8] in [0,1], y [N])``."""
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    return (X[:TRAIN], y[:TRAIN]), (X[TRAIN:], y[TRAIN:])


def noisy_digits(seed: int = 0, noise: float = 0.3, shift: int = 1) -> tuple[Split, Split]:
    """``digits(seed)`` with every image rolled by up to ``shift`` pixels each way and Gaussian
    noise of std ``noise`` added (fixed by ``seed``, so train and test are fixed sets)."""
    (Xtr, ytr), (Xte, yte) = digits(seed)
    gen = torch.Generator().manual_seed(seed + 1000)

    def corrupt(X: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(X)
        moves = torch.randint(-shift, shift + 1, (len(X), 2), generator=gen)
        for i, (dy, dx) in enumerate(moves.tolist()):
            out[i] = torch.roll(X[i], (dy, dx), dims=(1, 2))
        return out + noise * torch.randn(X.shape, generator=gen)

    return (corrupt(Xtr), ytr), (corrupt(Xte), yte)


TASKS = {"digits": digits, "noisy-digits": noisy_digits}


def train(module, optimizer, data: Split, epochs: int, batch: int = 64, seed: int = 0,
          on_step=None) -> None:
    """``epochs`` epochs of cross-entropy minibatch training, shuffled by ``seed``."""
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
def accuracy(module, data: Split) -> float:
    """Top-1 accuracy of ``module`` (in eval mode) on ``data``; its train/eval mode is restored."""
    X, y = data
    was = module.training
    module.eval()
    acc = (module(X).argmax(1) == y).float().mean().item()
    module.train(was)
    return acc


def first_batches(X: torch.Tensor, samples: int = 512, batch: int = 64) -> list[torch.Tensor]:
    """The first ``samples`` images of ``X`` in batches of ``batch`` (fixed: for batch-norm
    recalibration and int8 calibration)."""
    return [X[i:i + batch] for i in range(0, min(samples, len(X)), batch)]


def steps_per_epoch(data: Split, batch: int = 64) -> int:
    return (len(data[0]) + batch - 1) // batch
