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

``target_latency`` is checked end to end before it is used (:func:`calibrate_latency`): the
subnet of the widths the budget picks is built and timed whole against the dense graph, and when
the measured ratio misses the target by more than 2% the table's aim moves by the ratio of the
two (``aim = predicted * target / measured``; between two checks on either side of the target,
linearly), for up to three checks; the aim whose subnet measured nearest the target is kept
(and cached beside the table). The checks use the first channels of each group at the widths
the budget picks; under the default ``"uniform"``
allocation those widths do not depend on the scores, so the subnet the optimizer ends with has
the shapes that were timed. H2SPG's erased structures are not in the check (they are chosen
later, from the scores): the aim's correction applies to the channels' part of the sum.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from typing import Any

import sympy
import torch

from otofx.config import resolve_allocation, resolve_group_divisible
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
    aim: float | None = None     # target_latency: the table's fraction whose subnet measured on it
    checks: tuple[tuple[float, float, float], ...] = ()   # (aim, predicted, measured) per check

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
        """The cost to land on (``share`` of the saving the budget asks for; a latency budget's
        corrected ``aim`` in place of its ``fraction``)."""
        fraction = self.fraction if self.aim is None else self.aim
        return self.dense - (self.dense - fraction * self.dense) * share

    @property
    def measured(self) -> float | None:
        """A latency budget's end-to-end ratio at its aim (None before :func:`calibrate_latency`)."""
        return next((m for a, _, m in self.checks if a == self.aim), None)


def budget_for(config, analysis, views) -> Budget | None:
    """The budget ``config`` asks for (None without ``target_flops``/``target_params``/
    ``target_latency``), checked against what pruning the prunable groups can reach. Resolves
    ``group_divisible="auto"`` for the model's device first (every optimizer calls this once,
    when it is built)."""
    param = next(iter(analysis.gm.parameters()), None)
    resolve_group_divisible(config, param.device if param is not None else torch.device("cpu"))
    resolve_allocation(config)
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
    if field == "target_latency":
        budget = calibrate_latency(budget, views, config.group_divisible, config.allocation)
    return budget


CHECKS, CLOSE = 3, 0.02    # end-to-end checks of a latency budget, and "on target" (relative)


def _next_aim(checks: list[tuple[float, float, float]], target: float) -> float:
    """The next aim: between the nearest checks on either side of the target, linearly (measured
    against predicted); with all on one side, the nearest one's predicted ratio scaled by
    target / measured."""
    below = [c for c in checks if c[2] < target]
    above = [c for c in checks if c[2] > target]
    if below and above:
        lo, hi = max(below, key=lambda c: c[2]), min(above, key=lambda c: c[2])
        if hi[1] != lo[1]:
            return lo[1] + (target - lo[2]) * (hi[1] - lo[1]) / (hi[2] - lo[2])
    _, predicted, measured = min(checks, key=lambda c: abs(c[2] - target))
    return min(1.0, predicted * target / measured)


def calibrate_latency(budget: Budget, views, divisible: int, allocation: str | None,
                      repeats: int = 9, cache: bool = True) -> Budget:
    """``budget`` (a ``target_latency``) with the aim whose subnet, timed end to end, lands
    nearest the target: see the module docstring. Cached per table, target, allocation and
    rounding."""
    from otofx.latency import Sizer, cache_dir, end_to_end_ratio, table_key
    analysis = budget.analysis
    path = cache_dir() / f"{table_key(analysis.gm, analysis.example_inputs)}.aims.json"
    entry = f"{budget.fraction!r}|{allocation}|{divisible}|{len(views.groups)}"
    known = json.loads(path.read_text()) if cache and path.exists() else {}
    if entry in known:
        aim, checks = known[entry]
        return replace(budget, aim=aim, checks=tuple(tuple(c) for c in checks))
    score = torch.zeros(views.num_channels)       # widths under "uniform" ignore the scores
    sizer = Sizer(analysis)                       # one analysed copy for every check
    aim, checks = budget.fraction, []
    for _ in range(CHECKS):
        goal = replace(budget, aim=aim).goal()
        chosen = pick_for_budget(score, views.group_of, views.sizes, budget.cost, goal, divisible,
                                 allocation=allocation)
        widths = _widths(chosen, views.group_of, views.sizes, torch.zeros_like(views.sizes))
        predicted = float(budget.cost(widths)) / budget.dense
        measured = end_to_end_ratio(
            analysis, [{g.name: int(w) for g, w in zip(views.groups, widths)}], repeats, sizer)[0]
        checks.append((aim, predicted, measured))
        if abs(measured - budget.fraction) <= CLOSE * budget.fraction:
            break
        aim = _next_aim(checks, budget.fraction)
    aim = min(checks, key=lambda c: abs(c[2] - budget.fraction))[0]
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known | {entry: [aim, checks]}))
    return replace(budget, aim=aim, checks=tuple(checks))


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
