"""Helpers for property tests of passes and of users' own models."""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from otofx.analysis import Analysis
from otofx.passes.common import tensor_named
from otofx.passes.table import AFFINE, PRODUCER


@torch.no_grad()
def erase_structures(gm: GraphModule, analysis: Analysis, fraction: float, seed: int = 0
                     ) -> list[str]:
    """Zero every parameter of a random valid set of ``round(fraction * erasable)`` structures
    (or the largest valid one found), as H2SPG would; returns their names (outermost only)."""
    from otofx.h2spg import select_structures
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    erasable = analysis.erasable
    gen = torch.Generator().manual_seed(seed)
    order = [erasable[i] for i in torch.randperm(len(erasable), generator=gen).tolist()]
    chosen, _ = select_structures(analysis.gm, analysis.structures, order,
                                  round(fraction * len(erasable)))
    for s in chosen:
        for p in s.params:
            tensor_named(gm, p).zero_()
    return [s.name for s in chosen]


@torch.no_grad()
def zero_groups(gm: GraphModule, analysis: Analysis, fraction: float, seed: int = 0,
                affine: bool = True, structures: float = 0.0) -> dict[str, torch.Tensor]:
    """Zero the producers of a random ``fraction`` of each prunable group's channels, in place.

    ``affine=False`` leaves biases and norm affines alone, so removed channels become non-zero
    constants that shrink must fold. At least one channel of every group is left alone.
    ``structures`` > 0 also erases that fraction of the erasable structures
    (:func:`erase_structures`). Returns, per group name, the indices of the zeroed channels.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if structures:
        erase_structures(gm, analysis, structures, seed)
    gen = torch.Generator().manual_seed(seed)
    roles = (PRODUCER, AFFINE) if affine else (PRODUCER,)
    zeroed = {}
    for g in analysis.prunable:
        n = min(g.size - 1, round(fraction * g.size))
        if n <= 0:
            continue
        chosen = torch.randperm(g.size, generator=gen)[:n].sort().values
        for m in g.slices(*roles):
            t = tensor_named(gm, m.param)
            pos = m.index[chosen].reshape(-1).to(t.device)
            t.index_fill_(m.dim, pos, 0.0)
        zeroed[g.name] = chosen
    return zeroed
