"""The symbolic cost model: parameters and FLOPs as polynomials in the prunable groups' widths.

Every prunable group's width (channels kept) is its sympy symbol (``PruningGroup.symbol``, the one
``node.meta["otofx.dims"]`` is written in); pinned groups stay at their size. The parameter count
is the sum over parameters of the product of their symbolic dims (each dim the dense size plus,
per group slicing it, ``k * (width - size)``); the FLOPs are the sum over the nodes that
``FlopCounterMode`` counts of their formula (``passes.rules.flops``) in the nodes' symbolic
shapes. Each node's formula is checked against its measured FLOPs at the dense widths; a node
without a fitting formula whose shapes do depend on widths keeps its dense FLOPs and is listed in
``CostModel.fixed``, so the model never claims a saving it cannot back.

    cost = analysis.cost
    cost.flops.expr                        # e.g. 3456*c1 + 1152*c1*c2 + ...
    cost.flops.at({"conv1": 4})            # FLOPs with conv1 at 4 channels, the rest dense
    cost.flops.marginal("conv1")           # FLOPs of one more channel of conv1 (the derivative)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import sympy
import torch
from torch.fx import GraphModule

from otofx.errors import AnalysisError
from otofx.flops import flops_by_node
from otofx.passes.groups import PruningGroup
from otofx.passes.meta import DIMS
from otofx.passes.rules.flops import FlopContext, formula

Widths = Mapping["str | PruningGroup", int]


@dataclass
class CostPolynomial:
    """One cost (``what``: "params" or "FLOPs") as a polynomial ``expr`` in the widths of the
    prunable ``groups``; evaluable at widths or channel masks, and differentiable."""

    what: str
    expr: sympy.Expr
    groups: list[PruningGroup] = field(repr=False)

    @cached_property
    def _by_name(self) -> dict[str, PruningGroup]:
        return {g.name: g for g in self.groups}

    @cached_property
    def dense(self) -> int:
        """The cost with every group at its full size."""
        return self.at({})

    def _values(self, widths: Widths) -> dict[sympy.Symbol, int]:
        values = {g.symbol: g.size for g in self.groups}
        for key, w in widths.items():
            g = self._group(key)
            if not 1 <= int(w) <= g.size:
                raise AnalysisError(f"width {w} for group '{g.name}' is outside [1, {g.size}]: a "
                                    "group keeps at least one channel and at most its size.")
            values[g.symbol] = int(w)
        return values

    def _group(self, key: str | PruningGroup) -> PruningGroup:
        name = key.name if isinstance(key, PruningGroup) else key
        if name not in self._by_name:
            raise AnalysisError(f"'{name}' is not a prunable group of this analysis; the prunable "
                                f"ones are listed by analysis.prunable (e.g. "
                                f"{[g.name for g in self.groups[:3]]}).")
        return self._by_name[name]

    def at(self, widths: Widths) -> int:
        """The cost with ``widths[group]`` channels kept (groups not named: all kept)."""
        return int(self.expr.xreplace(self._values(widths)))

    def from_masks(self, kept: Mapping[str, torch.Tensor]) -> int:
        """The cost with the channels ``kept[group name]`` (bool masks over each group) kept."""
        return self.at({name: int(mask.sum()) for name, mask in kept.items()})

    def derivative(self, group: str | PruningGroup) -> sympy.Expr:
        return sympy.diff(self.expr, self._group(group).symbol)

    def marginal(self, group: str | PruningGroup, widths: Widths | None = None) -> int:
        """The cost of one more channel of ``group`` at ``widths`` (default: dense): the
        derivative, which the polynomial's degree-one dependence on most groups makes exact."""
        return int(self.derivative(group).xreplace(self._values(widths or {})))

    def evaluator(self, groups: list[PruningGroup]) -> PolynomialEvaluator:
        """A vectorised evaluator over the widths of ``groups`` (others at their size)."""
        return PolynomialEvaluator([self.expr], self.groups, groups)


class PolynomialEvaluator:
    """Polynomials in group widths, evaluated exactly in int64 for a tensor of widths
    (``(..., len(groups))``): all terms in one exponent matrix with integer coefficients, built
    once. Groups of ``all_groups`` not in ``groups`` stay at their size. Returns ``(...)`` for
    one polynomial, ``(..., len(exprs))`` for several."""

    def __init__(self, exprs: list[sympy.Expr], all_groups: list[PruningGroup],
                 groups: list[PruningGroup]) -> None:
        fixed = {g.symbol: g.size for g in all_groups if g not in groups}
        self.groups, self.count = groups, len(exprs)
        symbols = [g.symbol for g in groups]
        exps, coefs, owner = [], [], []
        for i, expr in enumerate(exprs):
            expr = sympy.expand(sympy.sympify(expr).xreplace(fixed))
            for e, c in sympy.Poly(expr, *symbols).terms() if symbols else [((), expr)]:
                exps.append(list(e))
                coefs.append(int(c))
                owner.append(i)
        self.exps = torch.tensor(exps, dtype=torch.long).view(len(coefs), len(symbols))
        self.coefs = torch.tensor(coefs, dtype=torch.long)
        self.owner = torch.tensor(owner, dtype=torch.long)

    def __call__(self, widths: torch.Tensor) -> torch.Tensor:
        w = widths.to(torch.long).unsqueeze(-2)                   # (..., 1, G)
        terms = (w ** self.exps).prod(-1) * self.coefs             # (..., T)
        out = torch.zeros(*terms.shape[:-1], self.count, dtype=torch.long)
        out.index_add_(-1, self.owner, terms)
        return out[..., 0] if self.count == 1 else out


@dataclass
class CostModel:
    """``params`` and ``flops`` of the analysed model as :class:`CostPolynomial`s; ``fixed``
    maps nodes whose FLOPs depend on widths the model has no formula for to their dense FLOPs
    (held constant: the polynomial is then exact only for widths that leave them alone).
    ``node_work`` gives each call node's work in the widths: its FLOPs where the counter counts
    any, else the elements of its output (what ``otofx.latency`` times against); ``node_flops``
    each counted node's FLOPs and ``param_count`` each parameter's size (the terms of ``flops``
    and ``params``, which ``otofx.budget`` drops for erased structures); ``node_dims`` every
    node's symbolic shape."""

    params: CostPolynomial
    flops: CostPolynomial
    fixed: dict[str, int] = field(default_factory=dict)
    node_work: dict[str, sympy.Expr] = field(default_factory=dict, repr=False)
    node_flops: dict[str, sympy.Expr] = field(default_factory=dict, repr=False)
    param_count: dict[str, sympy.Expr] = field(default_factory=dict, repr=False)
    node_dims: dict[str, tuple[sympy.Expr, ...]] = field(default_factory=dict, repr=False)

    def marginals(self, widths: Widths | None = None) -> dict[str, tuple[int, int]]:
        """Per prunable group: (params, FLOPs) of one more channel at ``widths`` (default dense)."""
        return {g.name: (self.params.marginal(g, widths), self.flops.marginal(g, widths))
                for g in self.params.groups}


def param_dims(gm: GraphModule, groups: list[PruningGroup]) -> dict[str, tuple[sympy.Expr, ...]]:
    """Every parameter's and buffer's shape in the prunable groups' widths, under each of its
    names: a dim holding ``k`` positions per channel of group g is ``size + k * (S_g - |g|)``."""
    delta: dict[tuple[str, int], sympy.Expr] = defaultdict(lambda: sympy.Integer(0))
    for g in groups:
        for m in g.members:
            delta[(m.param, m.dim)] += m.index.shape[1] * (g.symbol - g.size)
    dims: dict[str, tuple[sympy.Expr, ...]] = {}
    canonical: dict[int, str] = {}
    for name, t in list(gm.named_parameters(remove_duplicate=False)) + list(
            gm.named_buffers(remove_duplicate=False)):
        first = canonical.setdefault(id(t), name)
        dims[name] = tuple(sympy.Integer(s) + delta.get((first, d), 0) for d, s in enumerate(t.shape))
    return dims


def build_cost_model(gm: GraphModule, groups: list[PruningGroup], example_inputs: tuple
                     ) -> CostModel:
    """The cost model of an analysed graph (``node.meta["otofx.dims"]`` filled by the groups
    pass) and its ``groups``."""
    prunable = [g for g in groups if g.prunable]
    pinned = {g.symbol: g.size for g in groups if not g.prunable}
    free = {g.symbol for g in prunable}
    pdims = param_dims(gm, prunable)
    param_count = {name: sympy.expand(sympy.Mul(*pdims[name])) for name, _ in gm.named_parameters()}
    params = sympy.Add(*param_count.values())
    node_dims = {n.name: tuple(sympy.sympify(d).xreplace(pinned) for d in n.meta[DIMS])
                 for n in gm.graph.nodes if DIMS in n.meta}
    ctx = FlopContext(gm, node_dims, pdims)
    per_node = flops_by_node(gm, example_inputs)
    dense = {g.symbol: g.size for g in prunable}
    flops, fixed, work = sympy.Integer(0), {}, {}
    for node in gm.graph.nodes:
        measured = per_node.get(node.name)
        if not measured:
            continue
        expr = formula(ctx, node)
        if expr is None or int(expr.xreplace(dense)) != measured:
            if _touches(ctx, node, node_dims, pdims, free):
                fixed[node.name] = measured
            expr = sympy.Integer(measured)
        flops += expr
        work[node.name] = expr
    node_flops = dict(work)
    for node in gm.graph.nodes:
        if node.op.startswith("call") and node.name not in work and node.name in node_dims:
            work[node.name] = sympy.expand(sympy.Mul(*node_dims[node.name]))
    return CostModel(CostPolynomial("params", sympy.expand(params), prunable),
                     CostPolynomial("FLOPs", sympy.expand(flops), prunable), fixed, work,
                     node_flops, param_count, node_dims)


def _touches(ctx: FlopContext, node, node_dims, pdims, free: set) -> bool:
    """Whether any shape the node reads or writes depends on a prunable group's width."""
    shapes = [node_dims.get(a.name, ()) for a in [node, *node.all_input_nodes]]
    if node.op == "call_module":
        prefix = f"{node.target}."
        shapes += [d for n, d in pdims.items() if n.startswith(prefix)]
    shapes += [pdims.get(a.target, ()) for a in node.all_input_nodes if a.op == "get_attr"]
    return any(sympy.sympify(d).free_symbols & free for s in shapes for d in s)
