"""``Analysis``: what the passes found about a graph, and the report a person reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule

from otofx.cost import CostModel, build_cost_model
from otofx.passes.erasable import ErasableStructure, erasable_pass
from otofx.passes.groups import PruningGroup
from otofx.passes.meta import STRUCTURES
from otofx.passes.table import AFFINE, PRODUCER
from otofx.report import analysis_report


@dataclass
class Analysis:
    """The analysed graph (``gm``: a copy of the user's graph sharing its parameters, with
    ``node.meta`` filled by the passes), its ``groups``, the example inputs used and the
    ``structures`` whose whole output can vanish (``passes.erasable``, outer ones first; found
    on first use, since only operator erasing needs them)."""

    gm: GraphModule
    groups: list[PruningGroup]
    example_inputs: tuple
    _structures: list[ErasableStructure] | None = field(default=None, repr=False)
    _cost: CostModel | None = field(default=None, repr=False)

    @property
    def cost(self) -> CostModel:
        """Parameters and FLOPs as polynomials in the prunable groups' widths
        (``otofx.cost``; built on first use)."""
        if self._cost is None:
            self._cost = build_cost_model(self.gm, self.groups, self.example_inputs)
        return self._cost

    @property
    def structures(self) -> list[ErasableStructure]:
        if self._structures is None:
            if STRUCTURES not in self.gm.meta:
                erasable_pass(self.gm, self.example_inputs)
            self._structures = self.gm.meta[STRUCTURES]
        return self._structures

    @property
    def erasable(self) -> list[ErasableStructure]:
        return [s for s in self.structures if s.erasable]

    @property
    def prunable(self) -> list[PruningGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def pinned(self) -> list[PruningGroup]:
        return [g for g in self.groups if not g.prunable]

    def slice_masks(self, channels: dict[str, torch.Tensor] | None,
                    roles: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        """Per parameter, a bool mask of the elements in prunable groups' slices of ``roles``
        (all roles when empty), for every channel or only ``channels[group name]``."""
        masks = {n: torch.zeros(p.shape, dtype=torch.bool)
                 for n, p in self.gm.named_parameters()}
        for g in self.prunable:
            chosen = None if channels is None else channels.get(g.name)
            if channels is not None and chosen is None:
                continue
            for m in g.slices(*roles):
                if m.param in masks:
                    index = m.index if chosen is None else m.index[chosen]
                    masks[m.param].movedim(m.dim, 0)[index.reshape(-1)] = True
        return masks

    def prunable_params(self) -> tuple[int, int]:
        """(parameter elements inside prunable groups' producer and affine slices, all of them):
        the share of the model that training can drive to zero."""
        total = sum(p.numel() for p in self.gm.parameters())
        masks = self.slice_masks(None, (PRODUCER, AFFINE))
        return sum(int(m.sum()) for m in masks.values()), total

    def params_after(self, removed: dict[str, torch.Tensor]) -> int:
        """Parameter count once the channels ``removed[group name]`` (indices) are gone."""
        return sum(int((~m).sum()) for m in self.slice_masks(removed).values())

    def report(self, max_rows: int = 60) -> str:
        """Groups, what is pinned and why, the prunable share of parameters and FLOPs."""
        return analysis_report(self, max_rows=max_rows)

    def summary(self) -> dict[str, Any]:
        removable, total = self.prunable_params()
        return {
            "groups": len(self.groups),
            "prunable_groups": len(self.prunable),
            "prunable_channels": sum(g.size for g in self.prunable),
            "pinned_channels": sum(g.size for g in self.pinned),
            "prunable_param_share": removable / total if total else 0.0,
        }
