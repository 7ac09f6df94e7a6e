"""Budgets: prune the channels that land the subnet on a FLOPs, parameter or latency target.

``target_flops`` / ``target_params`` (fractions of the dense model's cost, in place of
``target_group_sparsity``) say what the subnet may cost, not how many channels go. The channels
are still taken in score order, exactly as :func:`otofx.partition.choose` takes them (per-group
caps, ``group_divisible`` rounding); the budget only sets *how many*: the count whose subnet,
evaluated on the cost polynomial of ``otofx.cost`` (for ``target_latency``, on the measured
latency table of ``otofx.latency``), lands nearest the budget. The cost never rises
as the count grows, so a binary search over counts finds it in a few dozen evaluations of the
polynomial. Within 1% of the budget, or as near as the width rounding allows.

H2SPG: erased structures are priced by the same model. Erasing a set takes out of the sum the
nodes shrink deletes (the regions, an add left with no operand, whatever only those use: see
:func:`erased_terms`), the parameters only they read, and a surviving cat's segment (that
width set to zero in its consumers). H2SPG chooses its structures first (never so many that
erasing them alone lands below the budget), then the channel count on this reduced cost.
Property-tested against the shrunk subnet on the erasing grammar (``tests/test_budget.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from typing import Any

import sympy
import torch

from otofx.config import resolve_group_divisible
from otofx.cost import PolynomialEvaluator
from otofx.errors import ConfigError
from otofx.partition import choose, choose_within

CostOfWidths = Callable[[torch.Tensor], torch.Tensor]
BUDGETS = ("target_flops", "target_params", "target_latency")


def _widths(chosen: torch.Tensor, group_of: torch.Tensor, sizes: torch.Tensor,
            already: torch.Tensor) -> torch.Tensor:
    return sizes - already - torch.bincount(group_of[chosen], minlength=len(sizes))


def _pick(score, count, group_of, sizes, available, already, divisible, allocation):
    if allocation is None:
        return choose(score, count, group_of, sizes, available, already, divisible)
    return choose_within(score, count, group_of, sizes, available, already, allocation, divisible)


def count_for_budget(score: torch.Tensor, group_of: torch.Tensor, sizes: torch.Tensor,
                     cost: CostOfWidths, budget: float, divisible: int = 1,
                     available: torch.Tensor | None = None, already: torch.Tensor | None = None,
                     allocation: str | None = None) -> int:
    """The ``count`` for ``choose(score, count, group_of, sizes, available, already, divisible)``
    whose widths (``sizes - already - picked`` per group) cost nearest ``budget`` (an absolute
    cost; ties go to the cheaper subnet). ``cost`` maps a widths tensor to its cost. When even
    every available channel leaves the cost above the budget, all of them. With ``allocation``
    the picks are ``otofx.partition.choose_within``'s (each group limited by it)."""
    if available is None:
        available = torch.ones(len(group_of), dtype=torch.bool)
    if already is None:
        already = torch.zeros(len(sizes), dtype=torch.long)

    def cost_of(count: int) -> float:
        chosen = _pick(score, count, group_of, sizes, available, already, divisible, allocation)
        return float(cost(_widths(chosen, group_of, sizes, already)))

    lo, hi = 0, int(available.sum())
    if cost_of(hi) > budget:
        return hi
    while lo < hi:                          # the smallest count whose cost is within budget
        mid = (lo + hi) // 2
        if cost_of(mid) <= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo > 0 and cost_of(lo - 1) - budget < budget - cost_of(lo):
        return lo - 1
    return lo


def pick_for_budget(score: torch.Tensor, group_of: torch.Tensor, sizes: torch.Tensor,
                    cost: CostOfWidths, budget: float, divisible: int = 1,
                    available: torch.Tensor | None = None, already: torch.Tensor | None = None,
                    allocation: str | None = None) -> torch.Tensor:
    """Bool mask of the channels to prune (highest ``score`` = most redundant first) so that the
    subnet's cost lands nearest ``budget``: :func:`count_for_budget`, then ``choose``."""
    if available is None:
        available = torch.ones(len(group_of), dtype=torch.bool)
    if already is None:
        already = torch.zeros(len(sizes), dtype=torch.long)
    count = count_for_budget(score, group_of, sizes, cost, budget, divisible, available, already,
                             allocation)
    return _pick(score, count, group_of, sizes, available, already, divisible, allocation)


def erased_terms(analysis, names: Iterable[str]) -> tuple[set[str], set[str], dict]:
    """What erasing the structures ``names`` (and those nested in them) takes out of the cost
    model, as shrink deletes it: the nodes that vanish (the structures' regions, an add left
    with no operand, and every node only they used), the parameters only those nodes read, and
    the widths that become zero (a surviving cat loses an erased operand's segment, when its
    width is one prunable group's symbol)."""
    from otofx.passes.erasable import _ParamIndex, closure, join_kind
    gm = analysis.gm
    by_name = {s.name: s for s in analysis.structures}
    erased = [by_name[name] for name in closure(analysis.structures, names)]
    gone = {n for s in erased for n in s.nodes}
    for node in gm.graph.nodes:           # an add whose every operand is gone is gone
        ins = node.all_input_nodes
        if node.name not in gone and ins and all(a.name in gone for a in ins) \
                and join_kind(gm, node) == "add":
            gone.add(node.name)
    for node in reversed(gm.graph.nodes):  # and so is whatever only gone nodes use
        if node.op in ("call_module", "call_function", "call_method", "get_attr") \
                and node.users and all(u.name in gone for u in node.users):
            gone.add(node.name)
    index = _ParamIndex(gm)
    params = {p for p, readers in index.readers.items() if readers <= gone}
    zero = {}
    for s in erased:
        dims = analysis.cost.node_dims.get(s.output)
        if s.cat_dim is not None and s.join not in gone and dims is not None \
                and isinstance(dims[s.cat_dim], sympy.Symbol):
            zero[dims[s.cat_dim]] = 0
    return gone, params, zero


def cost_of_widths(field: str, analysis, groups, erased: Iterable[str] = ()) -> CostOfWidths:
    """The cost ``field`` asks about as a function of the widths of ``groups`` (the other
    prunable groups at full size), with the structures ``erased`` gone."""
    nodes, params, zero = erased_terms(analysis, erased)
    if field == "target_latency":
        from otofx.latency import LatencyModel, latency_table
        return LatencyModel(latency_table(analysis), analysis, groups, nodes, zero)
    cost = analysis.cost
    if field == "target_flops":
        expr = sympy.Add(*(e for n, e in cost.node_flops.items() if n not in nodes))
    else:
        expr = sympy.Add(*(e for p, e in cost.param_count.items() if p not in params))
    return PolynomialEvaluator([expr.xreplace(zero)], analysis.prunable, groups)


@dataclass
class Budget:
    """A config's ``target_flops``, ``target_params`` or ``target_latency`` over an optimizer's
    grouped views: ``cost`` evaluates widths of ``views.groups`` (other groups at full size), with
    the structures ``erased`` gone (H2SPG)."""

    field: str               # "target_flops", "target_params" or "target_latency"
    fraction: float
    dense: float
    cost: CostOfWidths
    sizes: torch.Tensor
    analysis: Any = None
    groups: list = dataclass_field(default_factory=list)
    erased: tuple[str, ...] = ()

    def erasing(self, names: Iterable[str]) -> Budget:
        """This budget over the same channels once the structures ``names`` are erased."""
        names = tuple(sorted(names))
        return replace(self, cost=cost_of_widths(self.field, self.analysis, self.groups, names),
                       erased=names)

    def full(self) -> float:
        """The cost with every channel kept (and the ``erased`` structures gone)."""
        return float(self.cost(self.sizes))

    @property
    def what(self) -> str:
        return {"target_flops": "FLOPs", "target_params": "parameters"}.get(self.field, "latency")

    def floor(self, divisible: int) -> float:
        """The cost with every group at the fewest channels it may keep."""
        keep = max(1, divisible)
        return float(self.cost(torch.where(self.sizes > keep, torch.full_like(self.sizes, keep),
                                           self.sizes)))

    def count(self, score: torch.Tensor, group_of: torch.Tensor, sizes: torch.Tensor,
              available: torch.Tensor, already: torch.Tensor, divisible: int,
              share: float = 1.0, allocation: str | None = None) -> int:
        """The count for ``choose`` that lands on the budget; ``share`` < 1 aims at that share
        of the saving (a pruning period of several)."""
        return count_for_budget(score, group_of, sizes, self.cost, self.goal(share), divisible,
                                available, already, allocation)

    def goal(self, share: float = 1.0) -> float:
        """The cost to land on (``share`` of the saving the budget asks for)."""
        return self.dense - (self.dense - self.fraction * self.dense) * share


def budget_for(config, analysis, views) -> Budget | None:
    """The budget ``config`` asks for (None without ``target_flops``/``target_params``/
    ``target_latency``), checked against what pruning the prunable groups can reach. Resolves
    ``group_divisible="auto"`` for the model's device first (every optimizer calls this once,
    when it is built)."""
    param = next(iter(analysis.gm.parameters()), None)
    resolve_group_divisible(config, param.device if param is not None else torch.device("cpu"))
    field = next((f for f in BUDGETS if getattr(config, f, None) is not None), None)
    if field is None:
        return None
    cost = cost_of_widths(field, analysis, views.groups)
    dense = {"target_flops": analysis.cost.flops.dense, "target_params": analysis.cost.params.dense
             }.get(field) or float(cost(views.sizes))
    budget = Budget(field, getattr(config, field), dense, cost, views.sizes, analysis,
                    list(views.groups))
    # H2SPG may erase structures too: the bound is then the cost with every erasable structure
    # gone (optimistic: which of them can go together is known only at the partition)
    erasable = [s.name for s in analysis.erasable] if hasattr(config, "target_structures") else []
    floor = (budget.erasing(erasable) if erasable else budget).floor(config.group_divisible)
    if budget.fraction * budget.dense < floor:
        smallest = math.ceil(floor / budget.dense * 1e4) / 1e4
        raise ConfigError(
            f"{type(config).__name__}.{field} = {budget.fraction!r}: below the smallest reachable "
            f"{budget.what} budget, {smallest} of the dense model ({floor:,.6g} of {budget.dense:,.6g}"
            f"{' s, predicted from the latency table' if field == 'target_latency' else ''}): "
            f"with every prunable group at its minimum of {max(1, config.group_divisible)} "
            f"channel(s){' and every erasable structure erased' if erasable else ''}, pinned "
            "groups and layers outside any group still cost that much. Set "
            f"{field} >= {smallest}.")
    return budget


@torch.no_grad()
def zero_chosen(gm, views, chosen: torch.Tensor) -> None:
    """Zero the producers and affines of the channels ``chosen`` (a bool mask over ``views``'
    channels, as :func:`pick_for_budget` returns), in place: what a finished pruning phase
    leaves, so ``otofx.shrink`` removes exactly them."""
    from otofx.passes.common import tensor_named
    from otofx.passes.table import AFFINE, PRODUCER
    for gi, g in enumerate(views.groups):
        lo, hi = int(views.offsets[gi]), int(views.offsets[gi + 1])
        idx = torch.nonzero(chosen[lo:hi]).view(-1)
        for m in g.slices(PRODUCER, AFFINE):
            t = tensor_named(gm, m.param)
            t.index_fill_(m.dim, m.index[idx].reshape(-1).to(t.device), 0.0)
