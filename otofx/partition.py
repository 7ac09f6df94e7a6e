"""Choosing channels: saliency scores, how many channels each group may lose, and the pick.

``choose`` takes channels in score order, each group up to a limit; ``group_limits`` says what
that limit is under each ``allocation``:

- ``"uniform"`` (the default): every group loses the same share (``round(share * size)`` per
  group, largest remainders first so the total is exact); the scores decide which channels
  within each group. The subnet's FLOPs follow from the target (about ``(1 - share)^2`` of a
  conv stack's).
- ``"balanced"``: one global ranking, but a group keeps at least half the share a uniform prune
  would keep (``ceil(0.5 * (1 - share) * size)``).
- ``"global"``: one ranking over all groups; a group keeps at least one channel (or
  ``group_divisible``). Measured on load_digits this can leave a layer with 2 of 32 channels.

Measured (noisy-digits, DigitsResNet, 12 epochs, 5 paired seeds; mean test accuracy at the FLOPs
kept; DHSPG's pull then scaled by each group's median norm, not yet by rank): at target 0.5
DHSPG reached 0.711 (uniform, 0.25 FLOPs), 0.728 (balanced, 0.24) and 0.696 (global, 0.31; 3
other seeds), HESSO 0.688 / 0.739 / 0.738; at target 0.75 (0.7 for global) DHSPG 0.667 (uniform,
0.064 FLOPs) / 0.645 (balanced, 0.075) / 0.600 (global, 0.063), HESSO 0.670 / 0.629 / 0.648. No
allocation won both targets for both methods beyond the seed noise (paired differences within 2
standard errors); global lost most at high sparsity, and uniform is the one whose cost the
target predicts, so it is the default.
"""

from __future__ import annotations

import math

import torch

ALLOCATIONS = ("uniform", "balanced", "global")
BALANCED_FLOOR = 0.5    # "balanced": a group keeps at least this share of what uniform keeps


def normalize(v: torch.Tensor, among: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max scaling to [0, 1] (all zeros when ``v`` is constant). With ``among`` (bool mask)
    the minimum and maximum are taken over those entries only (the others are scaled alike)."""
    ref = v if among is None else v[among]
    if ref.numel() == 0:
        return torch.zeros_like(v)
    lo, hi = ref.min(), ref.max()
    return (v - lo) / (hi - lo) if hi > lo else torch.zeros_like(v)


def target_count(num_channels: int, target: float) -> int:
    return int(round(num_channels * target))


def uniform_counts(sizes: torch.Tensor, share: float, hard: torch.Tensor, divisible: int = 1
                   ) -> torch.Tensor:
    """Channels each group loses when all lose ``share`` of their size: ``round(share * N)`` in
    total, split by largest remainder, at most ``hard`` per group. With ``divisible > 1`` each
    group's kept width is rounded to a multiple instead (the total is then what rounding gives)."""
    ideal = sizes.double() * share
    if divisible > 1:
        kept = torch.round((sizes.double() - ideal) / divisible) * divisible
        return torch.minimum((sizes - kept.long()).clamp_min(0), hard)
    base = torch.minimum(ideal.floor().long(), hard)
    left = target_count(int(sizes.sum()), share) - int(base.sum())
    if left > 0:
        remainder = torch.where(base < hard, ideal - base.double(), torch.full_like(ideal, -1.0))
        order = torch.argsort(remainder, descending=True, stable=True)
        room = (hard - base)[order]
        # one extra channel per group in remainder order, then more where rounding ran out
        while left > 0 and bool((room > 0).any()):
            take = torch.zeros_like(room)
            take[torch.nonzero(room > 0).view(-1)[:left]] = 1
            base.index_add_(0, order, take)
            room -= take
            left -= int(take.sum())
    return base


def group_limits(sizes: torch.Tensor, share: float, allocation: str = "balanced",
                 divisible: int = 1) -> torch.Tensor:
    """The most channels each group may lose in total (``allocation``: see the module doc)
    when ``share`` of all prunable channels are pruned."""
    keep_min = max(1, divisible)
    hard = (sizes - keep_min).clamp_min(0)
    if allocation == "global":
        return hard
    if allocation == "uniform":
        return uniform_counts(sizes, share, hard, divisible)
    floor = torch.tensor([math.ceil(BALANCED_FLOOR * (1 - share) * int(n)) for n in sizes],
                         dtype=torch.long)
    return torch.minimum(hard, (sizes - floor).clamp_min(0))


def choose_within(score: torch.Tensor, count: int, group_of: torch.Tensor, sizes: torch.Tensor,
                  available: torch.Tensor, already: torch.Tensor, allocation: str,
                  divisible: int = 1) -> torch.Tensor:
    """``choose`` with each group limited by ``allocation`` at the share ``count`` is of the
    ``available`` channels (limits over the channels each group has available), topped up
    without those limits if they leave it short of ``count``."""
    avail = torch.bincount(group_of[available], minlength=len(sizes)) + already
    share = (count + int(already.sum())) / max(int(avail.sum()), 1)
    limit = torch.minimum(group_limits(avail, share, allocation, divisible), sizes - max(1, divisible))
    chosen = choose(score, count, group_of, sizes, available, already, divisible, limit)
    short = count - int(chosen.sum())
    if short > 0 and divisible == 1:
        more = torch.bincount(group_of[chosen], minlength=len(sizes))
        chosen |= choose(score, short, group_of, sizes, available & ~chosen, already + more, 1)
    return chosen


def choose(score: torch.Tensor, count: int, group_of: torch.Tensor, sizes: torch.Tensor,
           available: torch.Tensor, already: torch.Tensor, divisible: int = 1,
           limit: torch.Tensor | None = None) -> torch.Tensor:
    """Pick ``count`` channels with the highest ``score`` among ``available`` ones.

    A group loses at most ``limit`` channels in total (``already`` counts earlier picks; by
    default every group keeps ``divisible`` (>= 1) channels), and with ``divisible > 1`` the
    channels a group keeps after this pick stay a multiple of it: the pick then rounds down.
    Returns a bool mask over channels.
    """
    keep_min = max(1, divisible)
    order = torch.argsort(torch.where(available, score, torch.full_like(score, -float("inf"))),
                          descending=True, stable=True)
    order = order[available[order]]
    # greedy in score order, each group up to its cap, vectorised: a channel is taken when it
    # is among the first ``cap`` of its group in that order and among the first ``count`` such
    cap = (sizes - keep_min if limit is None else limit) - already
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
