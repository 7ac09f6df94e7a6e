"""Helpers for property tests of passes and of users' own models."""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from otofx.analysis import Analysis
from otofx.passes.channels import tensor_named
from otofx.passes.table import AFFINE, PRODUCER


@torch.no_grad()
def zero_groups(gm: GraphModule, analysis: Analysis, fraction: float, seed: int = 0,
                affine: bool = True) -> dict[str, torch.Tensor]:
    """Zero the producers of a random ``fraction`` of each prunable group's channels, in place.

    ``affine=False`` leaves biases and norm affines alone, so removed channels become non-zero
    constants that shrink must fold. At least one channel of every group is left alone.
    Returns, per group name, the indices of the zeroed channels.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
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
