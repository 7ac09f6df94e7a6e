"""``Analysis``: what the passes found about a graph, and the report a person reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule

from otofx.passes.groups import PruningGroup


@dataclass
class Analysis:
    """The analysed graph (``gm``: a copy of the user's graph sharing its parameters, with
    ``node.meta`` filled by the passes), its ``groups`` and the example inputs used."""

    gm: GraphModule
    groups: list[PruningGroup]
    example_inputs: tuple
    structures: list = field(default_factory=list)

    @property
    def prunable(self) -> list[PruningGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def pinned(self) -> list[PruningGroup]:
        return [g for g in self.groups if not g.prunable]

    def prunable_params(self) -> tuple[int, int]:
        """(parameter elements removed if every prunable channel went, all parameter elements)."""
        total = sum(p.numel() for p in self.gm.parameters())
        names = dict(self.gm.named_parameters())
        masks = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in names.items()}
        for g in self.prunable:
            for m in g.members:
                if m.param in masks:
                    view = masks[m.param].movedim(m.dim, 0)
                    view[m.index.reshape(-1)] = True
        return sum(int(m.sum()) for m in masks.values()), total

    def report(self) -> str:
        from otofx.report import analysis_report
        return analysis_report(self)

    def summary(self) -> dict[str, Any]:
        removable, total = self.prunable_params()
        return {
            "groups": len(self.groups),
            "prunable_groups": len(self.prunable),
            "prunable_channels": sum(g.size for g in self.prunable),
            "pinned_channels": sum(g.size for g in self.pinned),
            "prunable_param_share": removable / total if total else 0.0,
        }
