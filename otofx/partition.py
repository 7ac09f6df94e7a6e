"""Choosing channels: saliency scores and per-group counts that respect ``group_divisible``."""

from __future__ import annotations

import torch


def normalize(v: torch.Tensor) -> torch.Tensor:
    """Min-max scaling to [0, 1] (all zeros when ``v`` is constant)."""
    lo, hi = v.min(), v.max()
    return (v - lo) / (hi - lo) if hi > lo else torch.zeros_like(v)


def target_count(num_channels: int, target: float) -> int:
    return int(round(num_channels * target))


def choose(score: torch.Tensor, count: int, group_of: torch.Tensor, sizes: torch.Tensor,
           available: torch.Tensor, already: torch.Tensor, divisible: int = 1) -> torch.Tensor:
    """Pick ``count`` channels with the highest ``score`` among ``available`` ones.

    Every group keeps at least ``divisible`` (>= 1) channels, and with ``divisible > 1`` the
    channels a group keeps after this pick (``already`` counts earlier picks) stay a multiple of
    it: the pick then rounds down. Returns a bool mask over channels.
    """
    keep_min = max(1, divisible)
    order = torch.argsort(torch.where(available, score, torch.full_like(score, -float("inf"))),
                          descending=True, stable=True)
    taken = torch.zeros(len(sizes), dtype=torch.long)
    cap = sizes - keep_min - already
    chosen = torch.zeros_like(available)
    n = 0
    for c in order.tolist():
        if n >= count or not bool(available[c]):
            break
        g = int(group_of[c])
        if taken[g] < cap[g]:
            taken[g] += 1
            chosen[c] = True
            n += 1
    if divisible > 1:
        for g in range(len(sizes)):
            kept = int(sizes[g] - already[g] - taken[g])
            drop = (divisible - kept % divisible) % divisible    # un-pick to reach a multiple
            if drop:
                mine = torch.nonzero(chosen & (group_of == g)).view(-1)
                lowest = mine[torch.argsort(score[mine])[:drop]]
                chosen[lowest] = False
    return chosen
