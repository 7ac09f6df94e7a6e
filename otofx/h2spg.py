"""H2SPG (OTOv3): DHSPG's half-space machinery over erasable structures, keeping the network valid.

Each erasable structure (``Analysis.structures``, see ``passes.erasable``) is one group over all
its parameters, its norms read through the same vectorised grouped views as channels. At
``start_pruning_step`` the structures are scored (HESSO's five saliencies, or OTOv2's reference
score) and visited from the least important: one joins the redundant set unless erasing it with
those already there would disconnect a graph output, or would overshoot the target (a structure
nested in an erased one counts as erased). When the target cannot be met, the largest valid count
found is taken, with a ``warnings.warn`` and a line in the report. During the pruning phase the
redundant structures follow DHSPG's steps (adaptive lambda, half-space projection, otofx's floor)
and reach exactly zero at its end; shrink then deletes them. With ``target_group_sparsity > 0``
the prunable channels are pruned by DHSPG at the same time.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn
from torch.fx import GraphModule

from otofx.analysis import Analysis
from otofx.budget import BUDGETS
from otofx.config import H2SPGConfig
from otofx.dhspg import DHSPG, Plan, rank_among
from otofx.grouped import GroupedViews
from otofx.passes.erasable import ErasableStructure, closure, connected
from otofx.passes.groups import ChannelSlice, PruningGroup
from otofx.passes.table import PRODUCER

STRUCTURES = "structures"


def select_structures(graph: GraphModule, structures: list[ErasableStructure],
                      order: Iterable[ErasableStructure], target: int
                      ) -> tuple[list[ErasableStructure], int]:
    """Visit ``order`` and erase structures until ``target`` are erased (nested ones count),
    skipping any that would disconnect an output of ``graph`` or overshoot. Returns the chosen
    structures (none nested in another) and how many erasable structures they erase; when
    fewer than ``target``, a second pass tries the smallest additions first."""
    erasable = {s.name for s in structures if s.erasable}
    chosen: list[ErasableStructure] = []
    covered: set[str] = set()

    def take(s: ErasableStructure) -> None:
        inside = closure(structures, [s.name])
        new = (inside & erasable) - covered
        if s.name in covered or not new or len(covered) + len(new) > target:
            return
        trial = [c for c in chosen if c.name not in inside] + [s]
        if connected(graph, trial):
            chosen[:] = trial
            covered.update(new)

    order = [s for s in order if s.erasable]
    for s in order:
        if len(covered) >= target:
            break
        take(s)
    if len(covered) < target:
        for s in sorted(order, key=lambda s: len(closure(structures, [s.name]) & erasable)):
            take(s)
    return chosen, len(covered)


def structure_group(s: ErasableStructure, params: dict[str, nn.Parameter]) -> PruningGroup:
    """``s`` as a one-channel group over every element of its parameters."""
    members = [ChannelSlice(p, 0, PRODUCER, torch.arange(params[p].shape[0]).view(1, -1))
               for p in s.params]
    return PruningGroup(s.name, 1, True, [], members)


class H2SPG(DHSPG):
    """``H2SPG(module, analysis, H2SPGConfig(...))``: a torch optimizer that erases structures
    (and, with ``target_group_sparsity > 0``, prunes channels) while training."""

    config: H2SPGConfig

    def __init__(self, module: nn.Module, analysis: Analysis, config: H2SPGConfig) -> None:
        super().__init__(module, analysis, config)
        params = dict(module.named_parameters())
        self.graph = analysis.gm
        self.all_structures = analysis.structures
        self.structures = [s for s in analysis.erasable if all(
            p in params and params[p].requires_grad and params[p].dim() >= 1 for p in s.params)]
        self.structure_views = GroupedViews(module, [structure_group(s, params)
                                                     for s in self.structures])
        n = len(self.structures)
        self.structure_target = config.target_structures if config.target_structures is not None \
            else int(round(config.target_structure_sparsity * n))
        self.otofx_state[STRUCTURES] = {"pruned": torch.zeros(n, dtype=torch.bool), "erased": 0,
                                        "warning": ""}

    @staticmethod
    def _channel_groups(module: nn.Module, analysis: Analysis, config: H2SPGConfig) -> list:
        """Channels too only with a channel target (``target_group_sparsity > 0``) or a budget
        (the channels land what erasing leaves of it)."""
        budget = any(getattr(config, f) is not None for f in BUDGETS)
        return DHSPG._channel_groups(module, analysis, config) \
            if config.target_group_sparsity or budget else []

    def _has_targets(self) -> bool:
        return bool(self.views.num_channels) or bool(self.structure_views.num_channels)

    def _partition_structures(self, directions: dict[int, torch.Tensor]) -> Plan:
        """The structures to erase (exactly those: no tolerance, no per-group limit)."""
        importance = -self._scores(self.structure_views, directions)
        order = [self.structures[i] for i in torch.argsort(importance, stable=True).tolist()]
        chosen, erased = select_structures(self.graph, self.all_structures, order,
                                           self.structure_target)
        while self.budget is not None and self.structure_target and \
                self.budget.erasing(c.name for c in chosen).full() < self.budget.goal():
            self.structure_target -= 1      # a budget: erase no more than it leaves room for
            chosen, erased = select_structures(self.graph, self.all_structures, order,
                                               self.structure_target)
        if self.budget is not None:         # the channels land the rest of the budget
            self.budget = self.budget.erasing(c.name for c in chosen)
        st = self.otofx_state[STRUCTURES]
        st["erased"] = erased
        if erased < self.structure_target:
            st["warning"] = (
                f"H2SPG: the target of {self.structure_target} erased structures cannot be met "
                f"without disconnecting the network; erasing {erased}, the largest valid count "
                f"found (of {len(self.structures)} erasable structures).")
            warnings.warn(st["warning"], stacklevel=3)
        names = {c.name for c in chosen}
        mask = torch.tensor([s.name in names for s in self.structures], dtype=torch.bool)
        return Plan(mask, int(mask.sum()), None, rank_among(-importance.double(), mask))

    def _partition(self, directions, available=None):
        """Channels: the structures are chosen first; channels that erased structures remove
        anyway (every slice inside them) are not candidates, so the channel target counts the
        channels pruned outside erased structures."""
        self._structure_redundant(directions)
        return super()._partition(directions, ~self._inside_erased())

    def _structure_redundant(self, directions) -> torch.Tensor | None:
        st = self.otofx_state[STRUCTURES]
        if "chosen" not in st and self.structure_views.num_channels:
            plan = self._partition_structures(directions)
            st["chosen"], st["rank"] = plan.candidates, plan.rank
        return st.get("chosen")

    def _structure_plan(self, directions) -> Plan:
        chosen = self._structure_redundant(directions)
        st = self.otofx_state[STRUCTURES]
        return Plan(chosen, int(chosen.sum()), None, st["rank"])

    def _inside_erased(self) -> torch.Tensor:
        """Bool per prunable channel: every slice of it lies in a structure chosen to be erased."""
        red = self.otofx_state[STRUCTURES].get("chosen")
        names = {p for s, r in zip(self.structures, [] if red is None else red.tolist()) if r
                 for p in s.params}
        outside = torch.zeros(self.views.num_channels, dtype=torch.bool)
        for r in self.views.rows:
            if r.name not in names:
                outside[r.channel] = True
        return ~outside

    def _prune(self, directions, step):
        updates = super()._prune(directions, step) if self.views.num_channels else []
        if self.structure_views.num_channels:
            st = self.otofx_state[STRUCTURES]
            updates.append(self._half_space(self.structure_views, st, self._structure_plan,
                                            directions, step))
        return updates

    def _held(self):
        return super()._held() + [(self.structure_views, self.otofx_state[STRUCTURES]["pruned"])]

    def erased_structures(self) -> list[str]:
        """Names of the structures whose parameters are all exactly zero now (nested included)."""
        zero = self.structure_views.is_zero()
        names = [s.name for s, z in zip(self.structures, zero.tolist()) if z]
        erasable = {s.name for s in self.structures}
        return sorted(closure(self.all_structures, names) & erasable)

    def sparsity_report(self) -> dict:
        report = super().sparsity_report()
        if self.views.num_channels:
            inside = self._inside_erased() & self.views.is_zero()
            report["zero_channels_in_erased"] = int(inside.sum())
        st = self.otofx_state[STRUCTURES]
        report.update({f"structures_{k}": n for k, n in self._mechanisms(st).items()})
        report.update({"erasable_structures": len(self.structures),
                       "target_structures": self.structure_target,
                       "planned_structures": st["erased"],
                       "erased_structures": self.erased_structures(),
                       "structure_warning": st["warning"]})
        return report
