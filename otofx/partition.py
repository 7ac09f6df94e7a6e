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
    order = order[available[order]]
    # greedy in score order, each group up to its cap, vectorised: a channel is taken when it
    # is among the first ``cap`` of its group in that order and among the first ``count`` such
    cap = sizes - keep_min - already
    group = group_of[order]
    by_group = torch.argsort(group, stable=True)          # positions, grouped, in score order
    starts = torch.searchsorted(group[by_group], group[by_group], right=False)
    rank = torch.empty_like(order)
    rank[by_group] = torch.arange(len(order)) - starts
    eligible = rank < cap[group]
    taken = eligible & (torch.cumsum(eligible.long(), 0) <= max(count, 0))
    chosen = torch.zeros_like(available)
    chosen[order[taken]] = True
    if divisible > 1:
        per_group = torch.bincount(group[taken], minlength=len(sizes))
        for g in range(len(sizes)):
            kept = int(sizes[g] - already[g] - per_group[g])
            drop = (divisible - kept % divisible) % divisible    # un-pick to reach a multiple
            if drop:
                mine = torch.nonzero(chosen & (group_of == g)).view(-1)
                lowest = mine[torch.argsort(score[mine])[:drop]]
                chosen[lowest] = False
    return chosen
