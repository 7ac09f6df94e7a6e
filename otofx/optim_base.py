"""The shared machinery of otofx's optimizers: a real ``torch.optim.Optimizer`` whose step is the
base variant's step (SGD with momentum, Adam, AdamW), plus a hook for what DHSPG/HESSO do to the
prunable channels, and the bookkeeping (pruned channels, schedule) that ``state_dict`` carries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from otofx import fused
from otofx.analysis import Analysis
from otofx.budget import budget_for
from otofx.config import _BaseConfig
from otofx.errors import AnalysisError, OtofxError
from otofx.grouped import Direction, GroupedViews
from otofx.partition import target_count
from otofx.passes.table import AFFINE, PRODUCER

STATE = "otofx"


@dataclass
class Update:
    """What a pruning step does to the rows of some channels of ``views``: each row of an
    ``active`` channel ``c`` takes ``x -> a[c] * (x - lr * d) + b[c] * d`` in place of the base
    step ``x - lr * d`` (``a``, ``b``: per channel on ``views.device``, or floats); ``a`` may
    differ from 1 only on ``scaled`` channels (masks: bool per channel, CPU)."""

    views: GroupedViews
    a: torch.Tensor | float
    b: torch.Tensor | float
    active: torch.Tensor
    scaled: torch.Tensor

    @property
    def scales_only(self) -> bool:
        """``b`` is 0: ``x -> a * (x - lr d)``, the plain step then a per-row scale."""
        return isinstance(self.b, float) and self.b == 0.0


class NonFiniteGradientError(OtofxError):
    """A gradient holds NaN or inf; nothing was updated."""


class _Directions:
    """Every parameter's update direction in one step (``_direction``), taken when first asked
    for. On the CPU a parameter's state is then written just before what reads it next (its row
    products, or its own write), while it is still in cache; off the CPU ``prepare`` takes the
    directions of a list of parameters together with foreach kernels. A parameter whose
    direction nothing asks for takes its base step in one go (``take``: torch's fused kernels
    where they apply). ``get(id(p))`` as a dict's."""

    def __init__(self, opt: GroupSparsityOptimizer, step: int) -> None:
        self._opt, self._step = opt, step
        self._of = {id(p): (p, g) for g in opt.param_groups for p in g["params"] if p.grad is not None}
        self._taken: dict[int, Direction] = {}

    @property
    def taken(self) -> bool:
        """Whether any direction was taken (asked for) yet."""
        return bool(self._taken)

    def prepare(self, params: list[torch.Tensor]) -> None:
        """Take the directions of ``params`` now, a few foreach launches per parameter group
        off the CPU (on the CPU: nothing; each is taken when asked for)."""
        todo: dict[int, tuple[dict, list[torch.Tensor]]] = {}
        for p in params:
            if id(p) in self._of and id(p) not in self._taken \
                    and p.device.type not in self._opt.loop_devices:
                group = self._of[id(p)][1]
                todo.setdefault(id(group), (group, []))[1].append(p)
        for group, ps in todo.values():
            self._taken.update(zip(map(id, ps), self._opt._directions(ps, group, self._step)))

    def get(self, key: int, default: Direction | None = None) -> Direction | None:
        d = self._taken.get(key)
        if d is None and key in self._of:
            p, group = self._of[key]
            d = self._taken[key] = self._opt._direction(p, group, self._step)
        return default if d is None else d

    def __getitem__(self, key: int) -> Direction:
        d = self.get(key)
        if d is None:
            raise KeyError(key)
        return d

    def take(self, params: list[torch.Tensor], group: dict) -> None:
        """The base step for ``params`` (all of ``group``); those whose direction is not taken
        yet take it and their step together (``GroupSparsityOptimizer._base_step``)."""
        opt = self._opt
        ready = [p for p in params if id(p) in self._taken]
        opt._take_all(ready, [self._taken[id(p)] for p in ready], group["lr"])
        opt._base_step([p for p in params if id(p) not in self._taken], group, self._step)


class GroupSparsityOptimizer(torch.optim.Optimizer):
    """Base class: ``step()`` = the base variant's step: through torch's fused kernels
    (``otofx.fused``; ``config.fused``) for the tensors they take, else one parameter at a time
    as torch's single-tensor SGD/Adam/AdamW write it (foreach kernels off the CPU). In the
    pruning phase (or once channels are pruned) ``_prune(directions)`` says what happens to the
    rows of some channels, given the update directions (``_Directions``: each taken when first
    asked for), and each parameter is then written once: ``x - lr * d``, or per row
    ``A * x + B * d`` where a channel is pulled, scaled, zeroed or held at zero; a parameter
    whose rows nothing changes takes the plain base step. After the pruning phase the pruned
    rows are held at zero either way (``_zero_after_step``).

    ``state["otofx"]`` holds ``step`` (steps taken), ``pruned`` (bool per prunable channel: held
    at exactly zero; such rows take no update) and whatever the subclass keeps; it travels with
    ``state_dict()``. Per-channel masks live on the CPU, per-channel numbers on the parameters'
    device; a step synchronises with the device once to check the gradients (and once more in a
    DHSPG pruning step, for the channels projected to zero).
    """

    # devices whose base step goes one parameter at a time (fused momentum, each parameter in
    # cache between its state update and its write); elsewhere torch's foreach kernels
    loop_devices: tuple[str, ...] = ("cpu",)

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
        self.views = GroupedViews(module, self._channel_groups(module, analysis, config))
        self._scratch: dict[int, torch.Tensor] = {}    # Adam directions in a pruning step
        self.state[STATE] = {"step": 0,
                             "pruned": torch.zeros(self.views.num_channels, dtype=torch.bool)}
        self.target = target_count(self.views.num_channels, config.target_group_sparsity)
        self.budget = budget_for(config, analysis, self.views)   # target_flops/_params/_latency

    @staticmethod
    def _channel_groups(module: nn.Module, analysis: Analysis, config: _BaseConfig) -> list:
        """The prunable groups this optimizer prunes channels of: every prunable group whose
        producing slices are all trainable (a frozen consumer, the next layer, may stay
        frozen)."""
        frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
        return [g for g in analysis.prunable
                if not any(m.param in frozen for m in g.slices(PRODUCER, AFFINE))]

    @property
    def target(self) -> int:
        """Channels to prune: from ``target_group_sparsity``, or set by a budget at the
        partition; kept in the state, so it travels with ``state_dict()``."""
        return int(self.otofx_state["target"])

    @target.setter
    def target(self, count: int) -> None:
        self.otofx_state["target"] = int(count)

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
        if not grads or self._all_finite(grads):
            return   # one reduction for all; the slow scan below only runs when it fails
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    raise NonFiniteGradientError(
                        f"the gradient of '{self._names.get(id(p), '?')}' has NaN or inf values at "
                        f"step {self.steps_taken}; no parameter or optimizer state was changed. "
                        "Lower the learning rate, clip gradients or check the loss.")

    @classmethod
    def _all_finite(cls, grads: list[torch.Tensor]) -> bool:
        """A fast sufficient test that every gradient is finite: the sum of each (NaN and inf
        propagate; a sum that overflows reads as non-finite, and ``_check_finite`` then scans
        element by element). On the CPU one ``sum`` per tensor (a single read at memory speed:
        3.3 ms on resnet18's 11.2M gradients against 4.0 ms for ``_foreach_norm``, which squares
        and takes a root), elsewhere one ``_foreach_norm`` launch for all."""
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for g in grads:
            by_device.setdefault(g.device, []).append(g)
        for device, gs in by_device.items():
            totals = [g.sum() for g in gs] if device.type in cls.loop_devices \
                else torch._foreach_norm(gs)
            if not bool(torch.isfinite(torch.stack(totals)).all()):
                return False
        return True

    def _direction(self, p: torch.Tensor, group: dict, step: int) -> Direction:
        """Advance the base variant's state of ``p`` (momentum, Adam moments) and return its
        update direction; the parameter itself is not touched (``_directions`` of one)."""
        return self._directions([p], group, step)[0]

    def _fused_adam(self, p: torch.Tensor, state: dict) -> bool:
        """Whether ``p``'s Adam/AdamW direction comes from torch's fused kernel
        (``otofx.fused.adam_directions``: one pass where the single-tensor arithmetic takes
        about seven)."""
        return self.config.fused and self.config.variant != "sgd" \
            and fused.eligible(p, state, self.config.variant)

    def _fused_directions(self, params: list[torch.Tensor], group: dict, step: int
                          ) -> list[Direction]:
        """Adam/AdamW directions of ``params`` (eligible for the fused kernel, one device and
        dtype) through ``otofx.fused.adam_directions``, into scratch buffers kept for the
        pruning phase (``_scratch``; dropped at the first plain step after it)."""
        scratch = []
        for p in params:
            buf = self._scratch.get(id(p))
            if buf is None:
                buf = self._scratch[id(p)] = torch.empty_like(p)
            scratch.append(buf)
        decay = group["weight_decay"] if self.config.variant == "adamw" else 0.0
        out = fused.adam_directions(params, [self.state[p] for p in params], group,
                                    self.config.variant, step, scratch)
        return [Direction(d, None, 1.0, decay) for d in out]

    def _directions(self, params: list[torch.Tensor], group: dict, step: int) -> list[Direction]:
        """Advance the base variant's state of each of ``params`` and return their update
        directions; the parameters themselves are not touched. Adam/AdamW through torch's fused
        kernel where it takes the tensor (``_fused_directions``), else ``_variant_directions``:
        a few launches for all parameters of one device and dtype."""
        buckets: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            key = (p.device, p.dtype, self._fused_adam(p, self.state[p]))
            buckets.setdefault(key, []).append(i)
        out: list[Direction | None] = [None] * len(params)
        for (_, _, fuse), idx in buckets.items():
            ps = [params[i] for i in idx]
            dirs = self._fused_directions(ps, group, step) if fuse \
                else self._variant_directions(ps, group, step)
            for i, d in zip(idx, dirs):
                out[i] = d
        return out

    def _variant_directions(self, ps: list[torch.Tensor], group: dict, step: int
                            ) -> list[Direction]:
        """Directions of parameters of one device and dtype with torch's arithmetic
        (``torch.optim.SGD``/``Adam``/``AdamW``) in multi-tensor (``_foreach_*``) kernels, except
        that SGD's momentum on the CPU is one ``buf = grad + momentum * buf`` per tensor (one
        pass instead of two). Half-precision parameters keep float32 Adam moments (eps and small
        ``v`` underflow in fp16)."""
        grads = [p.grad for p in ps]
        wd, variant = group["weight_decay"], self.config.variant
        if variant in ("sgd", "adam") and wd:
            grads = torch._foreach_add(grads, ps, alpha=wd)
        if variant == "sgd":
            momentum = group["momentum"]
            if not momentum:
                return [Direction(g) for g in grads]
            states = [self.state[p] for p in ps]
            first = {i for i, st in enumerate(states) if "momentum_buffer" not in st}
            for i in first:          # torch's first step: the buffer is the gradient
                states[i]["momentum_buffer"] = grads[i].detach().clone()
            rest = [i for i in range(len(states)) if i not in first]
            bufs = [states[i]["momentum_buffer"] for i in rest]
            grads_rest = [grads[i] for i in rest]
            if ps[0].device.type in self.loop_devices:
                for g, b in zip(grads_rest, bufs):
                    torch.add(g, b, alpha=momentum, out=b)
            elif bufs:
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads_rest)
            return [Direction(st["momentum_buffer"]) for st in states]
        b1, b2 = group["betas"]
        for p in ps:
            state = self.state[p]
            if "exp_avg" not in state:
                moments = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
                state["exp_avg"] = torch.zeros_like(p, dtype=moments)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=moments)
        ms = [self.state[p]["exp_avg"] for p in ps]
        vs = [self.state[p]["exp_avg_sq"] for p in ps]
        grads = [g.to(m.dtype) for g, m in zip(grads, ms)]
        torch._foreach_lerp_(ms, grads, 1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        t = step + 1
        dens = torch._foreach_sqrt(vs)
        torch._foreach_div_(dens, (1 - b2 ** t) ** 0.5)
        torch._foreach_add_(dens, group["eps"])
        decay = wd if variant == "adamw" else 0.0
        return [Direction(m, den, 1 - b1 ** t, decay) for m, den in zip(ms, dens)]

    def _base_step(self, params: list[torch.Tensor], group: dict, step: int) -> None:
        """The base step of ``params`` (of ``group``; no direction taken yet): with
        ``config.fused``, through torch's fused kernels for the tensors they take
        (``otofx.fused``); the others one at a time on the CPU (state and write together, in
        cache), with foreach kernels elsewhere."""
        variant = self.config.variant
        if self.config.fused:
            buckets: dict[tuple, list[torch.Tensor]] = {}
            rest = []
            for p in params:
                if fused.eligible(p, self.state[p], variant):
                    buckets.setdefault((p.device, p.dtype), []).append(p)
                else:
                    rest.append(p)
            for ps in buckets.values():
                fused.step(ps, [self.state[p] for p in ps], group, variant, step)
            params = rest
        if params and params[0].device.type in self.loop_devices:
            for p in params:
                self._take(p, self._direction(p, group, step), group["lr"])
        elif params:
            self._take_all(params, self._directions(params, group, step), group["lr"])

    @classmethod
    def _take_all(cls, params: list[torch.Tensor], dirs: list[Direction], lr: float) -> None:
        """``_take`` for each; off the CPU with foreach kernels, per kind of direction."""
        if params and params[0].device.type in cls.loop_devices:
            for p, d in zip(params, dirs):
                cls._take(p, d, lr)
            return
        buckets: dict[tuple, list[tuple[torch.Tensor, Direction]]] = {}
        for p, d in zip(params, dirs):
            key = (d.den is None, d.divisor, d.decay, p.device, p.dtype)
            buckets.setdefault(key, []).append((p, d))
        for pairs in buckets.values():
            ps, d = [p for p, _ in pairs], pairs[0][1]
            if d.decay:
                torch._foreach_mul_(ps, 1 - lr * d.decay)
            nums = [d.num for _, d in pairs]
            if d.den is not None:
                torch._foreach_addcdiv_(ps, nums, [d.den for _, d in pairs], value=-(lr / d.divisor))
            else:
                torch._foreach_add_(ps, nums, alpha=-(lr / d.divisor))

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
    def _take_rows(p: torch.Tensor, d: Direction, big_a: torch.Tensor | None, big_b: torch.Tensor
                   ) -> None:
        """Rows ``x`` become ``A * x + B * d`` (per row, broadcast; ``A`` None: 1): with
        ``d = u / divisor + decay * x`` that is ``(A + B decay) x + (B / divisor) u``, one or
        two passes over ``x``."""
        if d.decay:
            big_a = (1 if big_a is None else big_a) + big_b * d.decay
        if big_a is not None:
            p.mul_(big_a)
        p.addcmul_(d.tensor, big_b, value=1 / d.divisor)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_finite()
        step = self.steps_taken
        pruning = self._has_targets() and self.in_pruning_phase()
        held = [(v, mask.clone()) for v, mask in self._held() if v.num_channels]
        holding = any(bool(mask.any()) for _, mask in held)
        if not pruning and (not holding or self._zero_after_step()):
            self._scratch.clear()
            self._plain_step(step)
            self._scale_after_step([])            # pruned rows: zero before it, zero again
            return self._stepped(step, loss)
        directions = _Directions(self, step)
        updates = self._prune(directions, step) if pruning else []
        if pruning and self.config.fused and not directions.taken \
                and all(u.scales_only for u in updates):
            self._plain_step(step)                # HESSO between scorings: x -> a * (x - lr d)
            self._scale_after_step(updates)
        else:
            rows = self._row_coefficients(updates, held)
            directions.prepare([p for g in self.param_groups for p in g["params"] if id(p) in rows])
            for group in self.param_groups:
                plain = []
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if id(p) in rows:
                        self._take_rows(p, directions[id(p)], *rows[id(p)])
                    else:
                        plain.append(p)
                directions.take(plain, group)
        for v, _ in held:
            v.forget()
        return self._stepped(step, loss)

    def _stepped(self, step: int, loss):
        self.otofx_state["step"] = step + 1
        return loss

    def _plain_step(self, step: int) -> None:
        for group in self.param_groups:
            self._base_step([p for p in group["params"] if p.grad is not None], group, step)

    def _scale_after_step(self, updates: list[Update]) -> None:
        """After a plain base step: the rows of each update's active channels times its ``a``
        (updates whose ``b`` is 0: ``x -> a * (x - lr d)``), those of pruned channels (held
        ones, and those pruned in this step) exactly zero again."""
        factors: dict[int, tuple[GroupedViews, torch.Tensor, torch.Tensor]] = {}
        for u in updates:
            v, a, active = u.views, u.a, u.active
            f = torch.ones(v.num_channels, dtype=torch.float64, device=v.device)
            f[active.to(v.device)] = a if isinstance(a, float) else a[active.to(v.device)]
            factors[id(v)] = (v, f, active)
        for v, pruned in self._held():
            if not v.num_channels or not bool(pruned.any()):
                continue
            if id(v) not in factors:
                factors[id(v)] = (v, torch.ones(v.num_channels, dtype=torch.float64, device=v.device),
                                  torch.zeros(v.num_channels, dtype=torch.bool))
            _, f, active = factors[id(v)]
            f[pruned.to(v.device)] = 0.0
            factors[id(v)] = (v, f, active | pruned)
        for v, f, channels in factors.values():
            if bool(channels.any()):
                v.scale_rows(f, channels)

    def _zero_after_step(self) -> bool:
        """Whether, outside the pruning phase, the parameters with pruned rows take the plain
        (fused) base step and have those rows zeroed again after it, rather than a per-row update
        that leaves them out. The first costs a fused pass and a masked write, the second the
        direction and a per-row write: the first is faster for Adam/AdamW (a direction costs
        about a whole fused step), the second for SGD (its direction is one ``add``); the
        ``optimizer_overhead`` benchmark's "after" phase measures both."""
        return self.config.fused and self.config.variant != "sgd"

    def _held(self) -> list[tuple[GroupedViews, torch.Tensor]]:
        """``(views, pruned)``: channels held at exactly zero from now on (bool, CPU)."""
        return [(self.views, self.otofx_state["pruned"])]

    def _row_coefficients(self, updates: list[Update], held: list[tuple[GroupedViews, torch.Tensor]]
                          ) -> dict[int, tuple]:
        """Per parameter, ``(A, B)`` of ``x -> A * x + B * d`` (``A`` None: 1) for the rows the
        ``updates`` of this step touch and the pruned channels: those pruned before this step
        (``held``, as the step began) are exactly zero and take no update, those pruned in it
        become zero (``a = b = 0``). A parameter in several views gets their composition."""
        lr_of = {id(p): g["lr"] for g in self.param_groups for p in g["params"]}
        merged: dict[int, Update] = {id(u.views): u for u in updates}
        frozen: dict[int, torch.Tensor] = {}
        for v, before in held:
            pruned = next(m for w, m in self._held() if w is v)
            new = pruned & ~before
            frozen[id(v)] = before
            if id(v) not in merged:
                if bool(new.any()) or bool(before.any()):
                    merged[id(v)] = Update(v, 0.0, 0.0, new, new)
                continue
            u = merged[id(v)]
            if bool(new.any()):     # pruned in this step: a = b = 0 on those channels
                on = new.to(v.device)
                zero_on_new = [torch.where(on, 0.0, torch.as_tensor(x, dtype=torch.float64,
                                                                     device=v.device))
                               for x in (u.a, u.b)]
                merged[id(v)] = replace(u, a=zero_on_new[0], b=zero_on_new[1],
                                        active=u.active | new, scaled=u.scaled | new)
        rows: dict[int, tuple] = {}
        for u in merged.values():
            v = u.views
            still = frozen.get(id(v), torch.zeros(v.num_channels, dtype=torch.bool))
            for p, big_a, big_b in v.coefficients(u.a, u.b, u.active, u.scaled, still, lr_of):
                if id(p) in rows:       # a second view: compose in the post-step form
                    rows[id(p)] = self._compose(rows[id(p)], (big_a, big_b), lr_of[id(p)])
                else:
                    rows[id(p)] = (big_a, big_b)
        return rows

    @staticmethod
    def _compose(first: tuple, second: tuple, lr: float) -> tuple:
        """``x -> A2 x^ + (B2 + A2 lr) d`` applied after ``x -> A1 x + B1 d``; rows either
        zeroes (``A = B = 0``) become zero, rows either leaves untouched (``A = 1``, ``B = 0``:
        held at zero) stay untouched."""
        (a1, b1), (a2, b2) = first, second
        one = torch.ones_like(b1)
        a1_, a2_ = (one if a1 is None else a1), (one if a2 is None else a2)
        still = ((a1_ == 1) & (b1 == 0)) | ((a2_ == 1) & (b2 == 0))
        zero = ((a1_ == 0) & (b1 == 0)) | ((a2_ == 0) & (b2 == 0))   # a row either zeroes
        a = torch.where(zero, torch.zeros_like(one), a2_ * a1_)
        b = torch.where(zero, torch.zeros_like(b1), a2_ * b1 + (b2 + a2_ * lr))
        return (torch.where(still & ~zero, one, a) if a1 is not None or a2 is not None else None,
                torch.where(still & ~zero, torch.zeros_like(b), b))

    def _has_targets(self) -> bool:
        """Whether the pruning phase has anything to drive to zero."""
        return bool(self.views.num_channels)

    def _prune(self, directions: dict[int, Direction], step: int) -> list[Update]:
        """Subclass hook for a step of the pruning phase: given every parameter's update
        direction, return the ``Update`` of each views it changes and mark in the state the
        channels to hold at zero from now on (they become zero in this step)."""
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
