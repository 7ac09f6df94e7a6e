"""DHSPG (Dual Half-Space Projected Gradient, OTOv2) over grouped views, with an exact target.

Warm-up steps are plain base steps. At ``start_pruning_step`` every prunable channel is scored
(by default with HESSO's five saliencies; ``partition="reference"`` uses OTOv2's cosine and
inverse magnitude) and the target share plus ``tolerance_group_sparsity`` of the least important
become *candidates*, each group limited by ``allocation`` (``otofx.partition``). Then, every step
of the pruning phase, for each candidate ``g`` (``x^ = x - lr d`` being the base step):

1. **Pull**: ``x^_g -= lr * lambda_g * x_g / ||x_g||`` with OTOv2's adaptive ``lambda_g``
   (ALGORITHMS.md, step 3). With ``pull="scheduled"`` (default) ``lambda_g`` is at least
   ``kappa * rho_g / lr``, where ``rho_g = ||x_g|| / T_g`` at the partition: alone, candidate
   ``g`` would reach zero at step ``T_g`` of the phase, the deadlines spread evenly up to
   ``fallback_start`` in score order (the most redundant first), so channels cross one after
   another rather than together (at initialisation every channel's norm is about its
   BatchNorm gamma, 1: pulls in proportion to the norm alone zeroed all 128 channels of the
   demo within two steps). ``kappa`` starts at 1 and rises (falls) by a factor ``1 + gamma``
   every step the projected count is behind (ahead of) a linear ramp to the target at
   ``fallback_start``. The reference lambda alone moves a channel by at most
   ``lr * lmbda * hat_lmbda_coeff`` per step (5e-4 at lr 0.05, SGD), far too little to zero a
   channel of norm ~1 in a phase of a few hundred steps.
2. **Half-space projection**: a candidate with ``<x^_g, x_g> < epsilon * ||x_g||^2`` becomes
   exactly zero and stays zero (at most as many as the target still needs, the deepest
   crossings first, each group within its limit). Once the target count is zero, the other
   candidates are released and train as usual.
3. **Fallback** (from ``fallback_start`` of the phase, if the projection is short): the fewest
   candidates needed (smallest norm relative to their norm at the partition) keep being pulled with their norm
   capped at its value at ``fallback_start`` times the share of the phase still to go, so they
   reach exactly zero at the phase's last step; the other candidates are released. A fallback
   that has to take more than half the target warns once. ``fallback_start=None``: no
   fallback, the target may be missed (the report says so).

``sparsity_report()`` counts the channels zeroed by the projection and by the fallback.
Everything is a few vectorised ops per parameter (``otofx.grouped``) and per channel.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from otofx.config import DHSPGConfig
from otofx.grouped import GroupedViews
from otofx.optim_base import GroupSparsityOptimizer, Update
from otofx.partition import choose, choose_within, group_limits, normalize, target_count

PROJECTED, FALLBACK = 1, 2      # how a channel was zeroed (``state["by"]``)


@dataclass
class Plan:
    """What a partition decides: the ``candidates`` (bool per channel), how many of them must
    become zero (``goal``) and the most each group may lose (``limit``; None: no limit)."""

    candidates: torch.Tensor
    goal: int
    limit: torch.Tensor | None            # None: no per-group limit
    rank: torch.Tensor                    # per channel: 0 for the most redundant candidate


def rank_among(score: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Per channel, its place among ``candidates`` by ``score`` (0: the highest); the others
    get ``candidates.sum()``."""
    idx = torch.nonzero(candidates).view(-1)
    order = idx[torch.argsort(score[idx], descending=True, stable=True)]
    rank = torch.full(candidates.shape, len(idx), dtype=torch.float64)
    rank[order] = torch.arange(len(idx), dtype=torch.float64)
    return rank


class DHSPG(GroupSparsityOptimizer):
    """``DHSPG(module, analysis, DHSPGConfig(...))``: a torch optimizer over ``module``'s
    parameters (SGD-momentum, Adam or AdamW steps for everything, DHSPG on prunable channels)."""

    config: DHSPGConfig

    def _scores(self, v: GroupedViews, directions, alive: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Per channel, on the CPU: higher is more redundant (``config.partition``)."""
        s = v.saliencies(directions)
        if self.config.partition == "reference":
            among = None if alive is None else alive.to(s.cosine.device)
            score = 0.5 * normalize(s.cosine, among) \
                + 0.5 * normalize(1.0 / (s.mean_magnitude + 1e-6), among)
        else:
            score = -s.importance(alive)
        return score.cpu()

    def _partition(self, directions, available: torch.Tensor | None = None) -> Plan:
        """The candidates: the target count of least important ``available`` channels, plus
        ``tolerance_group_sparsity`` more, each group within its ``allocation`` limit."""
        cfg, v = self.config, self.views
        if available is None:
            available = torch.ones(v.num_channels, dtype=torch.bool)
        score = self._scores(v, directions, available)
        already = torch.zeros(len(v.sizes), dtype=torch.long)
        if self.budget is not None:     # target_flops/_params/_latency: the budget sets the count
            self.target = self.budget.count(score, v.group_of, v.sizes, available, already,
                                            cfg.group_divisible, allocation=cfg.allocation)
        chosen = choose_within(score, self.target, v.group_of, v.sizes, available, already,
                               cfg.allocation, cfg.group_divisible)
        per_group = torch.bincount(v.group_of[chosen], minlength=len(v.sizes))
        tol = cfg.tolerance_group_sparsity
        if tol == 0 or cfg.group_divisible > 1:
            # the projection may zero only the chosen channels: every group's count is kept
            return Plan(chosen, int(chosen.sum()), per_group, rank_among(score, chosen))
        wide = min(self.target / max(int(available.sum()), 1) + tol, 0.999)
        candidates = choose_within(score, target_count(int(available.sum()), wide), v.group_of,
                                   v.sizes, available, already, cfg.allocation) | chosen
        limit = per_group if cfg.allocation == "uniform" else torch.maximum(
            per_group, group_limits(v.sizes, self.target / max(v.num_channels, 1),
                                    cfg.allocation))
        return Plan(candidates, int(chosen.sum()), limit, rank_among(score, candidates))

    def _prune(self, directions, step):
        return [self._half_space(self.views, self.otofx_state, self._partition, directions, step)]

    def _half_space(self, v: GroupedViews, st: dict, partition: Callable[..., Plan], directions,
                    step: int):
        """DHSPG's step on the rows of views ``v`` with state ``st``; ``partition(directions)``
        plans at the first call. Returns the update of the candidate rows
        (``GroupSparsityOptimizer._prune``)."""
        cfg = self.config
        lr = self.param_groups[0]["lr"]
        phase = step - cfg.start_pruning_step
        if "redundant" not in st:
            plan = partition(directions)
            norms = v.products(directions)[0].sqrt()      # taken by the partition's scores
            st.update(redundant=plan.candidates, goal=plan.goal, limit=plan.limit,
                      released=torch.zeros_like(plan.candidates),
                      by=torch.zeros(v.num_channels, dtype=torch.int8), start_norm=norms,
                      rho=norms / self._deadlines(plan).to(norms.device),
                      kappa=self._kappa_start(), fallback=None)
        if st["fallback"] is None and self._fallback_due(phase):
            self._start_fallback(v, st, directions)
        pulled = st["redundant"] & ~st["pruned"] & ~st["released"]
        xx, xd, dd = v.products(directions, pulled)
        red = pulled.to(v.device)
        xn = xx.sqrt()
        # kappa stays 0 with pull="reference": OTOv2's lambda alone
        lam = torch.maximum(self._lambda(xx, xn, xd, dd, red), st["kappa"] * st["rho"] / lr)
        live = red & (xn > 0)
        c = torch.where(live, lr * lam / xn.clamp_min(1e-30), torch.zeros_like(xn))
        # <x^, x> / ||x||^2 after the pull: the half-space test, and how deep a crossing is
        ratio = torch.where(live, ((1 - c) * xx - lr * xd) / xx.clamp_min(1e-300),
                            torch.full_like(xx, -math.inf))
        crossed = self._admit(v, st, (red & (ratio < cfg.epsilon)).cpu(), ratio)
        st["pruned"] = st["pruned"] | crossed
        st["by"][crossed] = PROJECTED
        a, b = 1 - c, -c * lr
        if st["fallback"] is not None:
            a, b = self._cap(v, st, step, xx, xd, dd, c, lr, a, b)
        if step == cfg.end_pruning_step - 1 and st["fallback"] is not None:
            last = st["fallback"] & ~st["pruned"]
            st["pruned"] = st["pruned"] | last
            st["by"][last] = FALLBACK
        self._steer(v, st, phase + 1)
        scaled = pulled & ~crossed
        return Update(v, a, b, pulled, scaled)

    # ---- the pieces of a step ---------------------------------------------------------------
    def _lambda(self, xx, xn, xd, dd, red) -> torch.Tensor:
        """OTOv2's adaptive lambda per channel (ALGORITHMS.md, DHSPG step 3)."""
        cfg = self.config
        neg = red & (xd < 0) & (xn > 0)
        lo = torch.where(neg, -xd / xn.clamp_min(1e-30), torch.zeros_like(xd))
        hi = torch.where(neg, -dd * xn / xd.clamp_max(-1e-30), torch.zeros_like(xd))
        adapted = (cfg.lmbda_amplify * lo).clamp(cfg.lmbda, cfg.lmbda * cfg.hat_lmbda_coeff)
        adapted = torch.where(adapted >= hi, (lo + hi) / 2, adapted)
        return torch.where(neg, adapted, torch.full_like(xx, cfg.lmbda))

    def _ramp_end(self) -> float:
        """Steps into the phase by which the schedule wants the whole target zero."""
        frac = self.config.fallback_start if self.config.fallback_start is not None else 1.0
        return max(1.0, frac * self.config.pruning_steps)

    def _deadlines(self, plan: Plan) -> torch.Tensor:
        """Per channel, the step of the phase by which its pull alone would zero it: spread
        evenly over the ramp in the plan's rank order (at least one step)."""
        return (self._ramp_end() * (plan.rank + 1) / max(plan.goal, 1)).clamp_min(1.0)

    def _kappa_start(self) -> float:
        """Each candidate, pulled alone, reaches zero at its deadline."""
        return 0.0 if self.config.pull == "reference" else 1.0

    def _gamma(self) -> float:
        """Per-step factor of the pull's controller: it can double in a tenth of the phase."""
        return 2.0 ** (10.0 / self.config.pruning_steps) - 1.0

    def _steer(self, v: GroupedViews, st: dict, done: int) -> None:
        """After a step (``done`` steps into the phase): release the candidates once the goal
        is zero (or a group is at its limit), and move ``kappa`` towards the ramp."""
        zero = self._zeroed(st)
        if zero >= st["goal"]:
            st["released"] = st["redundant"] & ~st["pruned"]
        elif st["limit"] is not None:
            at_limit = self._zero_per_group(v, st) >= st["limit"]
            st["released"] = st["released"] | (st["redundant"] & ~st["pruned"] & at_limit[v.group_of])
        if self.config.pull == "reference":
            return
        wanted = st["goal"] * min(1.0, done / self._ramp_end())
        factor = 1 + self._gamma()
        st["kappa"] = st["kappa"] * factor if zero < wanted else max(
            self._kappa_start() / 4, st["kappa"] / factor)

    @staticmethod
    def _zeroed(st: dict) -> int:
        """Candidates zeroed so far (by the projection or the fallback)."""
        return int((st["pruned"] & st["redundant"]).sum())

    @staticmethod
    def _zero_per_group(v: GroupedViews, st: dict) -> torch.Tensor:
        return torch.bincount(v.group_of[st["pruned"] & st["redundant"]], minlength=len(v.sizes))

    @staticmethod
    def _limit(v: GroupedViews, st: dict) -> torch.Tensor:
        """The most each group may lose (no limit: its size)."""
        return st["limit"] if st["limit"] is not None else v.sizes

    def _admit(self, v: GroupedViews, st: dict, crossed: torch.Tensor, ratio: torch.Tensor
               ) -> torch.Tensor:
        """The crossings that are projected: all, unless they would pass the goal or a group's
        limit; then the deepest (lowest ``ratio``) that fit."""
        room = st["goal"] - self._zeroed(st)
        if not bool(crossed.any()):
            return crossed
        if room <= 0:
            return torch.zeros_like(crossed)
        over_group = False
        if st["limit"] is not None:
            per = torch.bincount(v.group_of[crossed], minlength=len(v.sizes))
            over_group = bool((per + self._zero_per_group(v, st) > st["limit"]).any())
        if int(crossed.sum()) <= room and not over_group:
            return crossed
        return choose(-ratio.cpu().double(), room, v.group_of, v.sizes, crossed,
                      self._zero_per_group(v, st), 1, self._limit(v, st))

    def _fallback_due(self, phase: int) -> bool:
        cfg = self.config
        return cfg.fallback_start is not None and phase >= min(
            math.ceil(cfg.fallback_start * cfg.pruning_steps), cfg.pruning_steps - 1)

    def _start_fallback(self, v: GroupedViews, st: dict, directions) -> None:
        """Take the fewest candidates still needed, the smallest relative to their norm at the
        partition, and release the rest; warn when that is more than half the goal."""
        left = st["redundant"] & ~st["pruned"] & ~st["released"]
        needed = st["goal"] - self._zeroed(st)
        xn = v.products(directions, left)[0].sqrt()
        relative = (xn / st["start_norm"].clamp_min(1e-30)).cpu().double()
        pick = choose(-relative, needed, v.group_of, v.sizes, left, self._zero_per_group(v, st),
                      1, self._limit(v, st)) if needed > 0 else torch.zeros_like(left)
        st["fallback"] = pick
        st["fallback_norm"] = xn.clone()
        st["fallback_step"] = self.steps_taken
        st["released"] = st["released"] | (left & ~pick)
        if needed > st["goal"] / 2:
            st["fallback_warning"] = (
                f"{type(self).__name__}: the half-space projection zeroed "
                f"{st['goal'] - needed} of {st['goal']} channels by fallback_start="
                f"{self.config.fallback_start} of the pruning phase; the fallback shrinks the other "
                f"{needed} to zero by its end. A longer pruning phase, a larger lr or "
                "tolerance_group_sparsity lets the projection do more.")
            warnings.warn(st["fallback_warning"], stacklevel=5)

    def _cap(self, v, st, step, xx, xd, dd, c, lr, a, b):
        """The fallback's channels: norm at most their norm at ``fallback_start`` times the
        share of the phase still to go (exactly zero at its last step). In terms of the
        parameter after the base step the update becomes ``s (1 - c) x^ - s c lr d``."""
        cfg = self.config
        length = max(1, cfg.end_pruning_step - st["fallback_step"])
        left = (cfg.end_pruning_step - step - 1) / length
        cap = st["fallback_norm"] * left
        norm = ((1 - c) ** 2 * xx - 2 * (1 - c) * lr * xd + lr ** 2 * dd).clamp_min(0).sqrt()
        s = torch.where(norm > cap, cap / norm.clamp_min(1e-30), torch.ones_like(norm))
        s = torch.where(st["fallback"].to(v.device), s, torch.ones_like(s))
        return s * a, s * b

    # ---- reporting ------------------------------------------------------------------------
    def sparsity_report(self) -> dict:
        report = super().sparsity_report()
        report.update(self._mechanisms(self.otofx_state))
        return report

    @staticmethod
    def _mechanisms(st: dict) -> dict:
        by = st.get("by")
        return {"zeroed_by_projection": int((by == PROJECTED).sum()) if by is not None else 0,
                "zeroed_by_fallback": int((by == FALLBACK).sum()) if by is not None else 0,
                "fallback_warning": st.get("fallback_warning", "")}
