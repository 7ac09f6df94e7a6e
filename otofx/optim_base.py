"""The shared machinery of otofx's optimizers: a real ``torch.optim.Optimizer`` whose step is the
base variant's step (SGD with momentum, Adam, AdamW), plus a hook for what DHSPG/HESSO do to the
prunable channels, and the bookkeeping (pruned channels, schedule) that ``state_dict`` carries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from otofx.analysis import Analysis
from otofx.config import _BaseConfig
from otofx.errors import AnalysisError, OtofxError
from otofx.grouped import Direction, GroupedViews
from otofx.partition import target_count
from otofx.passes.table import AFFINE, PRODUCER

STATE = "otofx"
Update = tuple  # (GroupedViews, a, b, active): see GroupSparsityOptimizer._prune


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

    def _direction(self, p: torch.Tensor, group: dict, step: int) -> Direction:
        """Advance the base variant's state of ``p`` (momentum, Adam moments) and return its
        update direction; the parameter itself is not touched. The arithmetic is torch's own
        (``torch.optim.SGD``/``Adam``/``AdamW``, single-tensor), except that SGD's momentum is one
        fused ``buf = grad + momentum * buf``."""
        grad = p.grad
        state = self.state[p]
        wd, variant = group["weight_decay"], self.config.variant
        if variant == "sgd":
            if wd:
                grad = grad.add(p, alpha=wd)
            if not group["momentum"]:
                return Direction(grad)
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                torch.add(grad, buf, alpha=group["momentum"], out=buf)
            return Direction(buf)
        b1, b2 = group["betas"]
        if variant == "adam" and wd:
            grad = grad.add(p, alpha=wd)
        if "exp_avg" not in state:   # half-precision parameters keep float32 moments: eps and
            moments = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
            state["exp_avg"] = torch.zeros_like(p, dtype=moments)    # small v underflow in fp16
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=moments)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        grad = grad.to(m.dtype)
        m.lerp_(grad, 1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        t = step + 1
        denom = (v.sqrt() / (1 - b2 ** t) ** 0.5).add_(group["eps"])
        return Direction(m, denom, 1 - b1 ** t, wd if variant == "adamw" else 0.0)

    @staticmethod
    def _take(p: torch.Tensor, d: Direction, lr: float) -> None:
        """The base step ``x - lr * d``, as torch's optimizers write it."""
        if d.decay:
            p.mul_(1 - lr * d.decay)
        if d.den is not None:
            p.addcdiv_(d.num, d.den, value=-(lr / d.divisor))
        elif d.divisor != 1:
            p.add_(d.num, alpha=-(lr / d.divisor))
        else:
            p.add_(d.num, alpha=-lr)

    @staticmethod
    def _take_rows(p: torch.Tensor, d: Direction, lr: float, a: torch.Tensor, b: torch.Tensor
                   ) -> None:
        """Rows ``x`` become ``a * (x - lr * d) + b * d`` (``a``, ``b`` per row, broadcast): with
        ``d = u / divisor + decay * x`` that is ``A * x + B * u``, two passes over ``x``."""
        bb = torch.add(b, a, alpha=-lr)                    # x_new = a x + bb d
        big_a = a + bb * d.decay if d.decay else a
        big_b = bb / d.divisor if d.divisor != 1 else bb
        p.mul_(big_a.to(p.dtype)).addcmul_(d.tensor, big_b.to(p.dtype))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_finite()
        step = self.steps_taken
        pruning = self._has_targets() and self.in_pruning_phase()
        if not pruning and not any(bool(mask.any()) for _, mask in self._held()):
            for group in self.param_groups:     # the base step, one parameter at a time
                for p in group["params"]:
                    if p.grad is not None:
                        self._take(p, self._direction(p, group, step), group["lr"])
        else:
            directions = {id(p): self._direction(p, group, step)
                          for group in self.param_groups for p in group["params"]
                          if p.grad is not None}
            rows = self._row_coefficients(self._prune(directions, step) if pruning else [])
            for group in self.param_groups:
                for p in group["params"]:
                    d = directions.get(id(p))
                    if d is None:
                        continue
                    if id(p) in rows:
                        self._take_rows(p, d, group["lr"], *rows[id(p)])
                    else:
                        self._take(p, d, group["lr"])
        self.otofx_state["step"] = step + 1
        return loss

    def _held(self) -> list[tuple[GroupedViews, torch.Tensor]]:
        """``(views, pruned)``: channels held at exactly zero from now on (bool, CPU)."""
        return [(self.views, self.otofx_state["pruned"])]

    def _row_coefficients(self, updates: list[Update]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per parameter, the per-row ``(a, b)`` of ``x -> a * (x - lr * d) + b * d`` that the
        ``updates`` of this step and the held (pruned) channels ask for; one parameter touched by
        several views gets their composition."""
        merged: dict[int, list] = {id(v): [v, a, b, active] for v, a, b, active in updates}
        for v, pruned in self._held():
            if not v.num_channels or not bool(pruned.any()):
                continue
            if id(v) not in merged:
                merged[id(v)] = [v, 0.0, 0.0, pruned]
                continue
            entry = merged[id(v)]
            on = pruned.to(v.device)
            entry[1] = torch.where(on, 0.0, torch.as_tensor(entry[1], dtype=torch.float64,
                                                            device=v.device))
            entry[2] = torch.where(on, 0.0, torch.as_tensor(entry[2], dtype=torch.float64,
                                                            device=v.device))
            entry[3] = entry[3] | pruned
        rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for v, a, b, active in merged.values():
            for p, ra, rb in v.coefficients(a, b, active):
                if id(p) in rows:                 # then a2 (a1 x^ + b1 d) + b2 d
                    a1, b1 = rows[id(p)]
                    ra, rb = ra * a1, ra * b1 + rb
                rows[id(p)] = (ra, rb)
        return rows

    def _has_targets(self) -> bool:
        """Whether the pruning phase has anything to drive to zero."""
        return bool(self.views.num_channels)

    def _prune(self, directions: dict[int, Direction], step: int) -> list[Update]:
        """Subclass hook for a step of the pruning phase: given every parameter's update
        direction, return ``(views, a, b, active)`` updates (per channel ``a``, ``b``, tensors
        on ``views.device`` or floats, applied to the rows of the ``active`` channels as
        ``x -> a * (x - lr * d) + b * d`` in place of the base step) and mark in the state the
        channels to hold at zero from now on."""
        return []

    # ---- reporting -------------------------------------------------------------------------------
    def sparsity_report(self) -> dict:
        zero = self.views.is_zero()
        reached = int(zero.sum())
        return {"prunable_channels": self.views.num_channels, "target_channels": self.target,
                "zero_channels": reached, "scheduled": int(self.otofx_state["pruned"].sum()),
                "target": self.config.target_group_sparsity,
                "reached": reached / self.views.num_channels if self.views.num_channels else 0.0,
                "pruning_done": self.steps_taken >= self.config.end_pruning_step}
