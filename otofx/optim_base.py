"""The shared machinery of otofx's optimizers: a real ``torch.optim.Optimizer`` whose step is the
base variant's step (SGD with momentum, Adam, AdamW), plus a hook for what DHSPG/HESSO do to the
prunable channels, and the bookkeeping (pruned channels, schedule) that ``state_dict`` carries.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from otofx.analysis import Analysis
from otofx.config import _BaseConfig
from otofx.errors import AnalysisError, OtofxError
from otofx.grouped import GroupedViews
from otofx.partition import target_count
from otofx.passes.table import AFFINE, PRODUCER

STATE = "otofx"


class NonFiniteGradientError(OtofxError):
    """A gradient holds NaN or inf; nothing was updated."""


class GroupSparsityOptimizer(torch.optim.Optimizer):
    """Base class: ``step()`` = base variant step, then ``_prune(directions)`` on channels.

    ``state["otofx"]`` holds ``step`` (steps taken), ``pruned`` (bool per prunable channel: held
    at exactly zero) and whatever the subclass keeps; it travels with ``state_dict()``.
    """

    def __init__(self, module: nn.Module, analysis: Analysis, config: _BaseConfig) -> None:
        config.validate()
        self.config = config
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise AnalysisError(
                f"{type(module).__name__} has no trainable parameter (none with requires_grad=True), "
                "so there is nothing for the optimizer to train or compress. Unfreeze the layers to "
                "compress, or use otofx.analyze and otofx.shrink on their own.")
        self._names = {id(p): n for n, p in named}
        defaults = dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                        betas=config.betas, eps=config.eps)
        super().__init__([p for _, p in named], defaults)
        frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
        groups = [g for g in analysis.prunable    # a frozen consumer (next layer) may stay frozen
                  if not any(m.param in frozen for m in g.slices(PRODUCER, AFFINE))]
        self.views = GroupedViews(module, groups)
        self.target = target_count(self.views.num_channels, config.target_group_sparsity)
        self.state[STATE] = {"step": 0,
                             "pruned": torch.zeros(self.views.num_channels, dtype=torch.bool)}

    # ---- what a user reads -------------------------------------------------------------------
    @property
    def otofx_state(self) -> dict:
        return self.state[STATE]

    @property
    def steps_taken(self) -> int:
        return int(self.otofx_state["step"])

    def group_sparsity(self) -> float:
        """Fraction of prunable channels that are exactly zero now."""
        if not self.views.num_channels:
            return 0.0
        return float(self.views.is_zero().float().mean())

    def in_pruning_phase(self) -> bool:
        return self.config.start_pruning_step <= self.steps_taken < self.config.end_pruning_step

    # ---- the step ------------------------------------------------------------------------------
    def _check_finite(self) -> None:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            return   # one reduction for all; the slow scan below only runs when it fails
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    raise NonFiniteGradientError(
                        f"the gradient of '{self._names.get(id(p), '?')}' has NaN or inf values at "
                        f"step {self.steps_taken}; no parameter or optimizer state was changed. "
                        "Lower the learning rate, clip gradients or check the loss.")

    def _direction(self, p: torch.Tensor, group: dict, step: int, apply: bool
                   ) -> torch.Tensor | None:
        """The base variant's update direction (the step is ``-lr * direction``); with
        ``apply`` the step is taken in place instead, as torch's own optimizers do it."""
        grad = p.grad
        state = self.state[p]
        wd, variant, lr = group["weight_decay"], self.config.variant, group["lr"]
        if variant == "sgd":
            d = grad.add(p, alpha=wd) if wd else grad
            if group["momentum"]:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.detach().clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                d = buf
            if apply:
                p.add_(d, alpha=-lr)
                return None
            return d
        b1, b2 = group["betas"]
        if variant == "adam" and wd:
            grad = grad.add(p, alpha=wd)
        if "exp_avg" not in state:   # half-precision parameters keep float32 moments: eps and
            moments = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
            state["exp_avg"] = torch.zeros_like(p, dtype=moments)    # small v underflow in fp16
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=moments)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        grad = grad.to(m.dtype)
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        t = step + 1
        denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(group["eps"])
        if apply:
            if variant == "adamw" and wd:
                p.mul_(1 - lr * wd)
            p.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
            return None
        d = m.div(denom).div_(1 - b1 ** t).to(p.dtype)
        if variant == "adamw" and wd:
            d.add_(p, alpha=wd)
        return d

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_finite()
        step = self.steps_taken
        pruning = self._has_targets() and self.in_pruning_phase()
        directions: dict[int, torch.Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    d = self._direction(p, group, step, apply=not pruning)
                    if d is not None:
                        directions[id(p)] = d
        if pruning:
            self._prune(directions, step, before=True)
            for group in self.param_groups:
                for p in group["params"]:
                    d = directions.get(id(p))
                    if d is not None:
                        p.add_(d, alpha=-group["lr"])
            self._prune(directions, step, before=False)
        self.views.zero(self.otofx_state["pruned"])
        self.otofx_state["step"] = step + 1
        return loss

    def _has_targets(self) -> bool:
        """Whether the pruning phase has anything to drive to zero."""
        return bool(self.views.num_channels)

    def _prune(self, directions: dict[int, torch.Tensor], step: int, before: bool) -> None:
        """Subclass hook for steps of the pruning phase, called before and after the base
        update with every parameter's update direction."""

    # ---- reporting -------------------------------------------------------------------------------
    def sparsity_report(self) -> dict:
        zero = self.views.is_zero()
        reached = int(zero.sum())
        return {"prunable_channels": self.views.num_channels, "target_channels": self.target,
                "zero_channels": reached, "scheduled": int(self.otofx_state["pruned"].sum()),
                "target": self.config.target_group_sparsity,
                "reached": reached / self.views.num_channels if self.views.num_channels else 0.0,
                "pruning_done": self.steps_taken >= self.config.end_pruning_step}
