"""What a removed channel still contributes: the value each consumer reads at it.

A channel whose producer slices are all exactly zero (``dead_channels``) is a removal candidate.
Downstream of its producers its value no longer depends on the input: it is zero, or a constant
(a BatchNorm shift through an activation). Shrink needs, at every consumer site reading a
candidate, that value (to fold it into the consumer's bias) and whether it really is one value
everywhere (if not, the channel stays). ``Capture`` holds exactly that, one scalar and one flag
per position, taken from a run of the graph on the example inputs.

The run is either a fresh one (``record``) or the analysis' own shapes run: ``reference_pass``
summarises it for the channels that are dead at analysis time and keeps the outputs, stamped
with the identity, version and norm of every weight and input (``Reference``). Shrink reuses it when
nothing changed since, which saves one forward pass of the full model; when the stamp differs
it runs the graph itself.

Before: conv1 (rows 3, 7 zero) -> bn1 -> relu -> conv2. After: a ``Capture`` at conv2's input
with positions [3, 7], ``first`` = relu(bn1's shift) there and ``varies`` = [False, False].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter, Node
from torch.fx.passes.infra.pass_base import PassResult

from .common import evaluation, tensor_named
from .groups import PruningGroup
from .meta import GROUPS, OUTPUT, REFERENCE, TABLE, VALUES
from .table import PRODUCER, ChannelTable, ConsumerSite
from .trace import held_tensors


def dead_channels(gm: GraphModule, group: PruningGroup,
                  nonzero: dict[tuple[str, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Bool per channel of ``group``: every producer slice exactly zero in ``gm``'s weights.
    ``nonzero`` caches, per (parameter, dim), which slices hold a non-zero element."""
    nonzero = {} if nonzero is None else nonzero
    alive = torch.zeros(group.size, dtype=torch.bool)
    for m in group.slices(PRODUCER):
        key = (m.param, m.dim)
        if key not in nonzero:
            nonzero[key] = _nonzero_slices(tensor_named(gm, m.param).detach(), m.dim)
        alive |= nonzero[key][m.index].reshape(group.size, -1).any(dim=1)
    return ~alive


def _nonzero_slices(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Bool per slice of ``t`` along ``dim``: it holds an element that is not zero (NaN counts).
    Floats: max and min both zero, two vectorised reductions, faster than ``any``."""
    others = tuple(d for d in range(t.dim()) if d != dim % t.dim())
    if not others:
        return (t != 0).cpu()
    if t.is_floating_point():
        return ~((t.amax(dim=others) == 0) & (t.amin(dim=others) == 0)).cpu()
    return t.any(dim=others).cpu()


@dataclass
class Capture:
    """What consumer ``site`` reads at ``positions`` (along ``site.dim``) on the example inputs:
    the value at the first element of each position and whether any other element differs."""

    site: ConsumerSite
    positions: torch.Tensor
    first: torch.Tensor | None = None
    varies: torch.Tensor | None = None
    shape: torch.Size | None = None

    def take(self, x: torch.Tensor) -> None:
        dim = self.site.dim % x.dim()
        flat = x.detach().index_select(dim, self.positions.to(x.device)).movedim(dim, 0)
        flat = flat.reshape(self.positions.numel(), -1)
        if flat.size(1) == 0:
            self.first = torch.zeros(flat.size(0), dtype=x.dtype, device=x.device)
            self.varies = torch.zeros(flat.size(0), dtype=torch.bool)
        else:
            self.first = flat[:, 0].clone()
            self.varies = (flat != flat[:, :1]).any(dim=1).cpu()
        self.shape = x.shape


def captures_for(table: ChannelTable, removed: torch.Tensor, skip: set[str] = frozenset()
                 ) -> dict[str, list[Capture]]:
    """Per node, the consumer sites that read one of the ``removed`` channels (root ids)."""
    captures: dict[str, list[Capture]] = {}
    root_of = table.uf.all_roots()
    gone = torch.zeros(table.uf.size + 1, dtype=torch.bool)
    gone[removed] = True
    for site in table.consumers:
        if site.node in skip:
            continue
        positions = torch.nonzero((site.ids >= 0) & gone[root_of[site.ids.clamp(min=0)]]).view(-1)
        if positions.numel():
            captures.setdefault(site.node, []).append(Capture(site, positions))
    return captures


class _Recorder(Interpreter):
    """Runs the graph; fills each capture from the input its consumer reads."""

    def __init__(self, gm: GraphModule, captures: dict[str, list[Capture]]):
        super().__init__(gm)
        self.captures = captures

    def run_node(self, n: Node) -> Any:
        for cap in self.captures.get(n.name, []):
            x = self.env[n.args[cap.site.arg]] if cap.site.arg < len(n.args) else None
            if isinstance(x, torch.Tensor):
                cap.take(x)
        return super().run_node(n)


def record(gm: GraphModule, captures: dict[str, list[Capture]], example_inputs: Any) -> Any:
    """Run ``gm`` (eval mode, no grad) on the inputs, filling ``captures``; returns its output."""
    with evaluation(gm):
        return _Recorder(gm, captures).run(*example_inputs)


@torch.no_grad()
def _checksums(tensors: list[torch.Tensor]) -> list[float]:
    """A content checksum per tensor (``.data`` writes bypass the version counter): the L2 norm
    of every element, floating tensors of one dtype and device in one multi-tensor kernel."""
    sums = [0.0] * len(tensors)
    by_kind: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        if t.is_floating_point() and t.numel():
            by_kind.setdefault((t.dtype, t.device), []).append(i)
        elif t.numel():
            sums[i] = float(t.detach().abs().sum() if t.is_complex() else t.detach().sum())
    for members in by_kind.values():
        norms = torch._foreach_norm([tensors[i] for i in members])
        for i, v in zip(members, torch.stack(norms).double().tolist()):
            sums[i] = v
    return sums


@dataclass
class Stamp:
    """What ``gm``'s run depends on: the identity, version, storage, shape and dtype of every
    tensor it computes from and of the inputs (``ids``), the inputs that are not tensors
    (``others``), and a norm of every tensor's content (``sums``: ``.data`` writes bypass the
    version counter). Two stamps are equal when all three are; the norms, the costly part, are
    compared only when the rest agrees (``Reference.holds_for``)."""

    ids: list[Any]
    others: list[Any]
    tensors: list[torch.Tensor] = field(repr=False, compare=False)
    sums: list[float] | None = None

    def checksums(self) -> list[float]:
        if self.sums is None:
            self.sums = _checksums(self.tensors)
        return self.sums


def stamp(gm: torch.nn.Module, example_inputs: Any) -> Stamp:
    """The ``Stamp`` of ``gm`` and the inputs: it changes when a weight, buffer or input is
    replaced or written in place. Its norms are computed on first use."""
    tensors = held_tensors(gm) + [x for x in example_inputs if isinstance(x, torch.Tensor)]
    ids: list[Any] = [(id(t), t._version, t.data_ptr(), t.shape, t.dtype) for t in tensors]
    others: list[Any] = []
    for x in example_inputs:
        if x is None or isinstance(x, (bool, int, float, str)):
            others.append((type(x), x))
        elif not isinstance(x, torch.Tensor):
            others.append(object())       # never equal: no reuse for inputs we cannot compare
    return Stamp(ids, others, tensors)


@dataclass
class Reference:
    """The analysis run, kept for shrink: candidates dead at analysis time (per group), the
    captures at their consumers, the graph's output, and the ``stamp`` they hold for."""

    stamp: Stamp
    dead: dict[str, torch.Tensor]
    captures: dict[str, list[Capture]]
    output: Any

    def holds_for(self, gm: torch.nn.Module, example_inputs: Any) -> bool:
        now = stamp(gm, example_inputs)
        return (now.ids == self.stamp.ids and now.others == self.stamp.others
                and now.checksums() == self.stamp.checksums())


def candidates_of(gm: GraphModule, groups: list[PruningGroup], skip=lambda g: False
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Dead channels per prunable group (one channel always stays: no dim may become empty)
    and their root ids."""
    dead: dict[str, torch.Tensor] = {}
    nonzero: dict[tuple[str, int], torch.Tensor] = {}
    for g in groups:
        if g.prunable and not skip(g):
            d = dead_channels(gm, g, nonzero)
            if bool(d.all()):
                d[0] = False
            if bool(d.any()):
                dead[g.name] = d
    return dead, dead_roots(groups, dead)


def dead_roots(groups: list[PruningGroup], dead: dict[str, torch.Tensor]) -> torch.Tensor:
    """The root ids of the channels ``dead[group name]`` (bool per channel)."""
    roots = [g.roots[dead[g.name]] for g in groups if g.name in dead]
    return torch.cat(roots) if roots else torch.empty(0, dtype=torch.long)


def reference_pass(work: GraphModule, user_gm: torch.nn.Module, example_inputs: Any) -> PassResult:
    """Turn the values the shapes pass kept (``work.meta["otofx.values"]``, dropped here) into a
    ``Reference`` for ``user_gm``'s current weights, in ``work.meta["otofx.reference"]``."""
    kept = work.meta.pop(VALUES, None)
    output = work.meta.pop(OUTPUT, None)
    if kept is None:
        return PassResult(work, False)
    values, read_versions = kept
    dead, candidates = candidates_of(work, work.meta[GROUPS])
    captures = captures_for(work.meta[TABLE], candidates)
    nodes = {n.name: n for n in work.graph.nodes}
    for name, caps in captures.items():
        node = nodes[name]
        for cap in caps:
            arg = node.args[cap.site.arg] if cap.site.arg < len(node.args) else None
            x = values.get(arg.name) if isinstance(arg, Node) else None
            if not isinstance(x, torch.Tensor) or x._version != read_versions.get((name, cap.site.arg)):
                return PassResult(work, False)      # not kept, or written since: shrink records it
            cap.take(x)
    taken = stamp(user_gm, example_inputs)
    taken.checksums()                     # now: the weights may change in place later
    taken.tensors = []                    # the stamp holds no tensor alive
    work.meta[REFERENCE] = Reference(taken, dead, captures, output)
    return PassResult(work, False)
