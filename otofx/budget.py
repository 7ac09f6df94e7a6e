"""Budgets: prune the channels that land the subnet on a FLOPs, parameter or latency target.

``target_flops`` / ``target_params`` (fractions of the dense model's cost, in place of
``target_group_sparsity``) say what the subnet may cost, not how many channels go. The channels
are still taken in score order, exactly as :func:`otofx.partition.choose` takes them (per-group
caps, ``group_divisible`` rounding); the budget only sets *how many*: the count whose subnet,
evaluated on the cost polynomial of ``otofx.cost`` (for ``target_latency``, on the measured
latency table of ``otofx.latency``), lands nearest the budget. The cost never rises
as the count grows, so a binary search over counts finds it in a few dozen evaluations of the
polynomial. Within 1% of the budget, or as near as the width rounding allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from otofx.errors import ConfigError
from otofx.partition import choose, choose_within

CostOfWidths = Callable[[torch.Tensor], torch.Tensor]
BUDGETS = ("target_flops", "target_params", "target_latency")


def _widths(chosen: torch.Tensor, group_of: torch.Tensor, sizes: torch.Tensor,
            already: torch.Tensor) -> torch.Tensor:
    return sizes - already - torch.bincount(group_of[chosen], minlength=len(sizes))


def _pick(score, count, group_of, sizes, available, already, divisible, allocation):
    if allocation is None:
        return choose(score, count, group_of, sizes, available, already, divisible)
    return choose_within(score, count, group_of, sizes, available, already, allocation, divisible)


def count_for_budget(score: torch.Tensor, group_of: torch.Tensor, sizes: torch.Tensor,
                     cost: CostOfWidths, budget: float, divisible: int = 1,
                     available: torch.Tensor | None = None, already: torch.Tensor | None = None,
                     allocation: str | None = None) -> int:
    """The ``count`` for ``choose(score, count, group_of, sizes, available, already, divisible)``
    whose widths (``sizes - already - picked`` per group) cost nearest ``budget`` (an absolute
    cost; ties go to the cheaper subnet). ``cost`` maps a widths tensor to its cost. When even
    every available channel leaves the cost above the budget, all of them. With ``allocation``
    the picks are ``otofx.partition.choose_within``'s (each group limited by it)."""
    if available is None:
        available = torch.ones(len(group_of), dtype=torch.bool)
    if already is None:
        already = torch.zeros(len(sizes), dtype=torch.long)

    def cost_of(count: int) -> float:
        chosen = _pick(score, count, group_of, sizes, available, already, divisible, allocation)
        return float(cost(_widths(chosen, group_of, sizes, already)))

    lo, hi = 0, int(available.sum())
    if cost_of(hi) > budget:
        return hi
    while lo < hi:                          # the smallest count whose cost is within budget
        mid = (lo + hi) // 2
        if cost_of(mid) <= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo > 0 and cost_of(lo - 1) - budget < budget - cost_of(lo):
        return lo - 1
    return lo


def pick_for_budget(score: torch.Tensor, group_of: torch.Tensor, sizes: torch.Tensor,
                    cost: CostOfWidths, budget: float, divisible: int = 1,
                    available: torch.Tensor | None = None, already: torch.Tensor | None = None,
                    allocation: str | None = None) -> torch.Tensor:
    """Bool mask of the channels to prune (highest ``score`` = most redundant first) so that the
    subnet's cost lands nearest ``budget``: :func:`count_for_budget`, then ``choose``."""
    if available is None:
        available = torch.ones(len(group_of), dtype=torch.bool)
    if already is None:
        already = torch.zeros(len(sizes), dtype=torch.long)
    count = count_for_budget(score, group_of, sizes, cost, budget, divisible, available, already,
                             allocation)
    return _pick(score, count, group_of, sizes, available, already, divisible, allocation)


@dataclass
class Budget:
    """A config's ``target_flops`` or ``target_params`` over an optimizer's grouped views:
    ``cost`` evaluates widths of ``views.groups`` (other groups at full size)."""

    field: str               # "target_flops", "target_params" or "target_latency"
    fraction: float
    dense: float
    cost: CostOfWidths
    sizes: torch.Tensor

    @property
    def what(self) -> str:
        return {"target_flops": "FLOPs", "target_params": "parameters"}.get(self.field, "latency")

    def floor(self, divisible: int) -> float:
        """The cost with every group at the fewest channels it may keep."""
        keep = max(1, divisible)
        return float(self.cost(torch.where(self.sizes > keep, torch.full_like(self.sizes, keep),
                                           self.sizes)))

    def count(self, score: torch.Tensor, group_of: torch.Tensor, sizes: torch.Tensor,
              available: torch.Tensor, already: torch.Tensor, divisible: int,
              share: float = 1.0, allocation: str | None = None) -> int:
        """The count for ``choose`` that lands on the budget; ``share`` < 1 aims at that share
        of the saving (a pruning period of several)."""
        goal = self.dense - (self.dense - self.fraction * self.dense) * share
        return count_for_budget(score, group_of, sizes, self.cost, goal, divisible, available,
                                already, allocation)


def budget_for(config, analysis, views) -> Budget | None:
    """The budget ``config`` asks for (None without ``target_flops``/``target_params``),
    checked against what pruning the prunable groups can reach."""
    field = next((f for f in BUDGETS if getattr(config, f, None) is not None), None)
    if field is None:
        return None
    if field == "target_latency":
        from otofx.latency import LatencyModel, latency_table
        cost = LatencyModel(latency_table(analysis), analysis, views.groups)
        budget = Budget(field, config.target_latency, float(cost(views.sizes)), cost, views.sizes)
    else:
        poly = analysis.cost.flops if field == "target_flops" else analysis.cost.params
        budget = Budget(field, getattr(config, field), poly.dense, poly.evaluator(views.groups),
                        views.sizes)
    floor = budget.floor(config.group_divisible)
    if budget.fraction * budget.dense < floor:
        smallest = math.ceil(floor / budget.dense * 1e4) / 1e4
        raise ConfigError(
            f"{type(config).__name__}.{field} = {budget.fraction!r}: below the smallest reachable "
            f"{budget.what} budget, {smallest} of the dense model ({floor:,.6g} of {budget.dense:,.6g}"
            f"{' s, predicted from the latency table' if field == 'target_latency' else ''}): "
            f"with every prunable group at its minimum of {max(1, config.group_divisible)} "
            f"channel(s), pinned groups and layers outside any group still cost that much. Set "
            f"{field} >= {smallest}.")
    return budget
