"""HESSO (what only-train-once 3.x ships): score, then anneal the least important channels to zero.

The target count is spread over ``pruning_periods`` periods of ``pruning_steps // pruning_periods``
steps. At the start of each period the remaining channels are scored by five equally weighted,
normalised saliencies (magnitude, average magnitude, cosine with the update direction + 1, and
first and second order Taylor terms), each normalised over the channels still alive (pruned
channels are all zero and would otherwise set every saliency's minimum); the least important ones
are scaled by ``(D - tau - 1) / (D - tau)`` after each base step, reaching exactly zero at the
period's end. Each group loses at most what ``allocation`` allows at the final target
(``otofx.partition``), and with ``"uniform"`` its share of this period's goal.
"""

from __future__ import annotations

import torch

from otofx.config import HESSOConfig
from otofx.optim_base import GroupSparsityOptimizer, Update
from otofx.partition import choose_within


class HESSO(GroupSparsityOptimizer):
    """``HESSO(module, analysis, HESSOConfig(...))``: a torch optimizer (SGD/Adam/AdamW base)."""

    config: HESSOConfig

    def _prune(self, directions, step):
        cfg, st, v = self.config, self.otofx_state, self.views
        length = cfg.pruning_steps // cfg.pruning_periods
        period, tau = divmod(step - cfg.start_pruning_step, length)
        if period >= cfg.pruning_periods:
            return []
        if tau == 0:
            goal = round(self.target * (period + 1) / cfg.pruning_periods)
            count = goal - int(st["pruned"].sum())
            already = torch.bincount(v.group_of[st["pruned"]], minlength=len(v.sizes))
            alive = ~st["pruned"]
            importance = v.saliencies(directions).importance(alive).cpu()
            if self.budget is not None:     # this period's share of the budget's saving
                count = self.budget.count(-importance, v.group_of, v.sizes, alive, already,
                                          cfg.group_divisible, (period + 1) / cfg.pruning_periods,
                                          allocation=cfg.allocation)
                self.target = int(st["pruned"].sum()) + count
            st["annealing"] = choose_within(-importance, count, v.group_of, v.sizes, alive,
                                            already, cfg.allocation, cfg.group_divisible)
        annealing = st["annealing"]
        factor = (length - tau - 1) / (length - tau)     # after the base step: x^ -> factor x^
        if tau == length - 1:
            st["pruned"] = st["pruned"] | annealing
            st["annealing"] = torch.zeros_like(annealing)
        return [Update(v, factor, 0.0, annealing, annealing)]
