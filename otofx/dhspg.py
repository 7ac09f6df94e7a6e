"""DHSPG (Dual Half-Space Projected Gradient, OTOv2) over grouped views, with an exact target.

Warm-up steps are plain base steps. At ``start_pruning_step`` every prunable channel is scored
(by default with HESSO's five saliencies; ``partition="reference"`` uses OTOv2's cosine and
inverse magnitude) and exactly the target count of least important channels becomes the
redundant set. During the pruning phase each redundant channel is pulled towards zero with an
adaptive lambda and projected to exactly zero once it crosses the half-space. otofx adds a floor
so that the target is exact without a jump: a redundant channel's norm may not exceed its norm at
the partition times the fraction of the phase still to go. At the end of the phase exactly
``round(target * channels)`` channels are zero, and they stay zero. All of it is a few vectorised
ops per parameter (``otofx.grouped``).
"""

from __future__ import annotations

import torch

from otofx.config import DHSPGConfig
from otofx.optim_base import GroupSparsityOptimizer
from otofx.partition import choose, normalize


class DHSPG(GroupSparsityOptimizer):
    """``DHSPG(module, analysis, DHSPGConfig(...))``: a torch optimizer over ``module``'s
    parameters (SGD-momentum, Adam or AdamW steps for everything, DHSPG on prunable channels)."""

    config: DHSPGConfig

    def _partition(self, directions: dict[int, torch.Tensor],
                   available: torch.Tensor | None = None) -> torch.Tensor:
        """The redundant channels: the target count of least important ``available`` ones."""
        v = self.views
        s = v.saliencies(directions)
        if self.config.partition == "reference":
            score = 0.5 * normalize(s.cosine) + 0.5 * normalize(1.0 / (s.mean_magnitude + 1e-6))
        else:
            score = -s.importance()
        score = score.cpu()
        if available is None:
            available = torch.ones(v.num_channels, dtype=torch.bool)
        already = torch.zeros(len(v.sizes), dtype=torch.long)
        if self.budget is not None:     # target_flops/_params/_latency: the budget sets the count
            self.target = self.budget.count(score, v.group_of, v.sizes, available, already,
                                            self.config.group_divisible)
        return choose(score, self.target, v.group_of, v.sizes, available, already,
                      self.config.group_divisible)

    def _prune(self, directions, step):
        return [self._half_space(self.views, self.otofx_state, self._partition, directions, step)]

    def _half_space(self, v, st, partition, directions, step):
        """DHSPG's step on the rows of views ``v`` with state ``st`` (``redundant``, ``pruned``,
        ``start_norm``); ``partition(directions)`` picks the redundant rows at the first call.
        Returns the update of the redundant rows (``GroupSparsityOptimizer._prune``)."""
        cfg = self.config
        if "redundant" not in st:
            st["redundant"] = partition(directions)
        lr = self.param_groups[0]["lr"]
        # every parameter with a redundant row is read whole anyway: ask for all redundant rows
        # (a mask that changes once) and restrict to the live ones here
        xx, xd, dd = v.products(directions, st["redundant"])
        scaled = st["redundant"] & ~st["pruned"]
        red = scaled.to(v.device)
        xn = xx.sqrt()
        if "start_norm" not in st:     # the partition step: every redundant channel is in xx
            st["start_norm"] = xn.clone()
        lam = torch.full_like(xx, cfg.lmbda)
        neg = red & (xd < 0) & (xn > 0)
        lo = torch.where(neg, -xd / xn.clamp_min(1e-30), torch.zeros_like(xd))
        hi = torch.where(neg, -dd * xn / xd.clamp_max(-1e-30), torch.zeros_like(xd))
        adapted = (cfg.lmbda_amplify * lo).clamp(cfg.lmbda, cfg.lmbda * cfg.hat_lmbda_coeff)
        adapted = torch.where(adapted >= hi, (lo + hi) / 2, adapted)
        lam = torch.where(neg, adapted, lam)
        live = red & (xn > 0)
        c = torch.where(live, lr * lam / xn.clamp_min(1e-30), torch.zeros_like(xn))
        crossed = red & (xx - lr * xd - lr * lam * xn < cfg.epsilon * xx)
        st["pruned"] = st["pruned"] | crossed.cpu()       # held at zero from this step on
        # DHSPG's update is x - lr d - c x = (1 - c) x - lr d. otofx's floor then caps a
        # redundant channel's norm at its partition norm times the share of the phase still to
        # go, so the last step lands on exactly zero without a jump. Both in one write, from the
        # products already taken: in terms of x^ = x - lr d (the parameter after the base step)
        # the result is s (1 - c) x^ - s c lr d, with s the cap's scale.
        left = (cfg.end_pruning_step - step - 1) / cfg.pruning_steps
        cap = st["start_norm"] * left
        norm = ((1 - c) ** 2 * xx - 2 * (1 - c) * lr * xd + lr ** 2 * dd).clamp_min(0).sqrt()
        s = torch.where(norm > cap, cap / norm.clamp_min(1e-30), torch.ones_like(norm))
        pulled = live & ~crossed
        a = torch.where(pulled, s * (1 - c), torch.ones_like(s))
        b = torch.where(pulled, -s * c * lr, torch.zeros_like(s))
        if step == cfg.end_pruning_step - 1:
            st["pruned"] = st["pruned"] | st["redundant"]
        return v, a, b, st["redundant"], scaled
