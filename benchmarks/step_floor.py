"""The floor of a pruning step: the passes over memory a DHSPG or HESSO step cannot skip, each
timed alone with torch's own kernels, next to torch's fused step.

``benchmarks.optimizer_overhead`` measures otofx's step; this says how much of it the algorithm
needs, whoever writes it. On copies of a model's parameters and the benchmark's fixed gradients,
interleaved in rounds (median per pass; the order rotates):

- ``fused``: torch's fused step (``torch.optim.SGD/Adam(fused=True)``), the base of every ratio;
- ``check``: otofx's non-finite check (``GroupSparsityOptimizer._all_finite``: one read of
  every gradient);
- ``direction``: the update direction without touching the parameter (SGD: the momentum buffer,
  one ``add`` per tensor; Adam: torch's fused kernel on a zero tensor, ``otofx.fused.adam_directions``);
- ``products``: per row ``<x, x>``, ``<x, d>``, ``<d, d>`` of every parameter with more than one
  element per row (``otofx.grouped._row_products``; DHSPG's half-space test and pull need them
  every step, for every candidate channel);
- ``update``: ``x <- A x + B d`` with per-row ``A``, ``B`` (``mul_``, ``addcmul_``);
- ``scale``: ``x <- a x`` per row (``mul_``: HESSO's annealing after a plain step).

Floors: a plain step (before the pruning phase) = check + fused; DHSPG = check + direction +
products + update (its candidates' rows need all four, and
the candidates are about half of every prunable layer, so every parameter is read this way);
HESSO between scorings = check + fused + scale. Every parameter counts in each pass (the
benchmark's models have prunable rows in almost every tensor); one-element rows (biases, norm
affines) are left out of ``products`` (DHSPG takes them in one concatenated pass: a negligible
share of the bytes). A pass is a lower bound only for torch's eager kernels: a kernel of one's
own reading ``x`` and ``d`` once for the three products, or fusing the update into the direction,
would go lower; ``torch.compile`` of the products (inductor, one thread) measured no better end to
end (resnet18 SGD +6%, Adam -7%, vit_b_16 SGD -8%: the eager step reads each parameter's
direction while it is still in cache).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from otofx import fused
from otofx.grouped import _row_products
from otofx.optim_base import GroupSparsityOptimizer

PASSES = ("fused", "check", "direction", "products", "update", "scale")


@dataclass
class Floor:
    """Median milliseconds per pass, and the two floors built from them."""

    ms: dict[str, float]

    @property
    def dhspg(self) -> float:
        return sum(self.ms[p] for p in ("check", "direction", "products", "update"))

    @property
    def hesso(self) -> float:
        return sum(self.ms[p] for p in ("check", "fused", "scale"))

    @property
    def plain(self) -> float:
        """A step outside the pruning phase with nothing held at zero: the check and the fused
        step."""
        return self.ms["check"] + self.ms["fused"]


def _copies(model: nn.Module, grads: dict[str, torch.Tensor]) -> list[nn.Parameter]:
    out = []
    for name, p in model.named_parameters():
        if name in grads:
            q = nn.Parameter(p.detach().clone())
            q.grad = grads[name].clone()
            out.append(q)
    return out


def _per_row(p: torch.Tensor, value: float) -> torch.Tensor:
    """A per-row coefficient (dim 0) shaped to broadcast against ``p``."""
    return torch.full((p.shape[0],) + (1,) * (p.dim() - 1), value, dtype=p.dtype, device=p.device)


def passes(model: nn.Module, grads: dict[str, torch.Tensor], variant: str
           ) -> tuple[dict[str, Callable[[], None]], list[torch.Tensor]]:
    """One callable per pass over copies of ``model``'s parameters with ``grads``, and the
    directions ``direction`` writes (one per parameter; after its first call, torch's second
    step moves each parameter by ``-lr`` times its direction)."""
    with torch.no_grad():
        base = _copies(model, grads)
        ours = _copies(model, grads)
    lr = 1e-3
    if variant == "sgd":
        torch_opt = torch.optim.SGD(base, lr=lr, momentum=0.9, fused=True)
        bufs = [p.grad.clone() for p in ours]
        dirs = bufs

        def direction() -> None:
            for p, b in zip(ours, bufs):
                torch.add(p.grad, b, alpha=0.9, out=b)
    else:
        torch_opt = torch.optim.Adam(base, lr=lr, fused=True)
        states = [{} for _ in ours]
        group = {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
        dirs = [torch.empty_like(p) for p in ours]
        count = [0]

        def direction() -> None:
            fused.adam_directions(ours, states, group, "adam", count[0], dirs)
            count[0] += 1
        direction()                       # the moments exist before the first timed pass
    matrices = [(p, d) for p, d in zip(ours, dirs) if p.numel() != p.shape[0]]
    out = {p: torch.empty(3, p.shape[0], dtype=torch.float32, device=p.device) for p, _ in matrices}
    big_a = [_per_row(p, 0.999) for p in ours]
    big_b = [_per_row(p, -lr) for p in ours]

    def products() -> None:
        for p, d in matrices:
            o = out[p]
            _row_products(p.detach().view(p.shape[0], -1), d.view(p.shape[0], -1), o[0], o[1], o[2])

    def update() -> None:
        with torch.no_grad():
            for p, d, a, b in zip(ours, dirs, big_a, big_b):
                p.mul_(a).addcmul_(d, b)

    def scale() -> None:
        with torch.no_grad():
            for p, a in zip(ours, big_a):
                p.mul_(a)

    def check() -> None:
        GroupSparsityOptimizer._all_finite([p.grad for p in ours])

    return {"fused": torch_opt.step, "check": check, "direction": direction,
            "products": products, "update": update, "scale": scale}, dirs


def measure(model: nn.Module, grads: dict[str, torch.Tensor], variant: str, rounds: int = 7
            ) -> Floor:
    """Median time of each pass over ``rounds`` rounds (one untimed warm-up round first)."""
    calls, _ = passes(model, grads, variant)
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    times: dict[str, list[float]] = {p: [] for p in PASSES}
    for r in range(rounds + 1):
        order = PASSES[r % len(PASSES):] + PASSES[:r % len(PASSES)]
        for name in order:
            sync()
            start = time.perf_counter()
            calls[name]()
            sync()
            if r:
                times[name].append(time.perf_counter() - start)
    return Floor({p: 1e3 * statistics.median(v) for p, v in times.items()})


HEADERS = ["model", "variant", "torch fused step ms", "check ms", "direction ms", "products ms",
           "update ms", "scale ms", "plain floor / fused", "DHSPG floor ms", "DHSPG floor / fused",
           "HESSO floor ms", "HESSO floor / fused"]


def row(model_name: str, variant: str, f: Floor) -> list[str]:
    fused_ms = f.ms["fused"]
    return [model_name, variant, *(f"{f.ms[p]:.1f}" for p in PASSES),
            f"{f.plain / fused_ms:.2f}x", f"{f.dhspg:.1f}", f"{f.dhspg / fused_ms:.2f}x",
            f"{f.hesso:.1f}", f"{f.hesso / fused_ms:.2f}x"]
