"""Erasing structures inside shrink: which erasable structures are gone, and the graph edits.

A structure (``passes.erasable``) is erased when every parameter it owns is exactly zero, as
H2SPG leaves it (the erasable pass checked that its output is then exactly zero). A structure
whose output is zero while some of its parameters are not (a residual block whose last
BatchNorm starts at zero) is kept: its channels shrink as usual. Shrink calls
:func:`erase_plan` before it decides on channels and :func:`apply_erase` before the op rules
rewrite the graph:

* an add left with one operand becomes that operand; a sum loses the term,
* a cat loses the operand; the segment's channels are removed like zero channels
  (``ErasePlan.forced_roots``), so the cat's consumers lose the matching input slices,
* the region's nodes are deleted, then the submodules no node uses any more.

Erased structures are taken outer first, and one is skipped when erasing it with those already
taken would disconnect an output (``erasable.connected``), so the result is always a network.

Before: ``out = x + bn2(conv2(relu(bn1(conv1(x)))))`` with conv1..bn2 all zero.
After:  ``out = x``; conv1, bn1, conv2, bn2 are gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule, Node

from otofx.errors import ShrinkError

from .common import tensor_named
from .erasable import ErasableStructure, connected, join_kind, zero_literal
from .groups import PruningGroup
from .meta import STRUCTURES
from .table import PRODUCER


@dataclass
class ErasePlan:
    """The erased structures (outermost only), their nodes and parameters, and the channels of
    erased cat segments, which go whatever their group's other channels do."""

    structures: list[ErasableStructure] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)
    params: set[str] = field(default_factory=set)
    forced_roots: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __bool__(self) -> bool:
        return bool(self.structures)

    def owns(self, group: PruningGroup) -> bool:
        """Every producer of ``group`` is inside an erased structure: it vanishes with them."""
        producers = group.slices(PRODUCER)
        return bool(producers) and all(m.param in self.params for m in producers)


def is_zero(gm: GraphModule, s: ErasableStructure) -> bool:
    """Every parameter of ``s`` is exactly zero in ``gm``."""
    return all(not bool(tensor_named(gm, p).detach().ne(0).any()) for p in s.params)


def erase_plan(gm: GraphModule, analysis_gm: GraphModule) -> ErasePlan:
    """The structures of ``analysis_gm`` that are erased in ``gm``'s current weights."""
    plan = ErasePlan()
    for s in analysis_gm.meta.get(STRUCTURES, []):          # outer ones first
        if not s.erasable or set(s.nodes) <= plan.nodes or not is_zero(gm, s):
            continue
        if not connected(analysis_gm, plan.structures + [s]):
            continue
        plan.structures.append(s)
        plan.nodes |= set(s.nodes)
        plan.params |= set(s.params)
    roots = [s.roots for s in plan.structures if s.roots is not None]
    if roots:
        plan.forced_roots = torch.cat(roots).unique()
    return plan


def apply_erase(gm: GraphModule, plan: ErasePlan) -> None:
    """Delete the plan's structures from ``gm``'s graph and simplify the joins they fed."""
    nodes = {n.name: n for n in gm.graph.nodes}
    zero: set[Node] = set()
    for s in plan.structures:
        out, join = nodes[s.output], nodes[s.join]
        if s.kind == "cat operand":
            key = "tensors" if "tensors" in join.kwargs else None
            tensors = [t for t in (join.kwargs[key] if key else join.args[0]) if t is not out]
            if key:
                join.kwargs = {**join.kwargs, key: tensors}
            else:
                join.args = (tensors, *join.args[1:])
        else:
            zero.add(out)
    simplified: list[Node] = []
    for node in list(gm.graph.nodes):
        if node in zero or join_kind(gm, node) != "add" or not any(
                isinstance(a, Node) and a in zero for a in node.args):
            continue
        left = [a for a in node.args if not (isinstance(a, Node) and a in zero)
                and not zero_literal(a)]
        simplified.append(node)
        if not left:
            zero.add(node)
        elif len(left) == 1 and isinstance(left[0], Node):
            node.replace_all_uses_with(left[0])
        else:
            raise ShrinkError(f"erasing a term of '{node.name}' would leave {left[0]!r} alone; "
                              "this is an otofx bug: please report it.")
    for node in zero:
        if node.users and not all(u in zero or u in simplified for u in node.users):
            raise ShrinkError(f"'{node.name}' is erased but '{next(iter(node.users)).name}' still "
                              "reads it; this is an otofx bug: please report it.")
    doomed = {nodes[n] for n in plan.nodes} | set(simplified)
    for node in reversed(list(gm.graph.nodes)):
        if node in doomed and not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
