"""The channels pass: give every tensor of the graph its channel labels.

Each prunable dimension gets fresh channel ids at the op that creates it (the out-channels of a
conv or linear, an embedding's width); op rules from ``passes.registry`` carry labels forward,
unify channels at joins and record which parameter slices produce and consume each channel.
Results: ``node.meta["otofx.labels"]`` (see ``passes.labels``) and ``gm.meta["otofx.table"]``.

Conservative by construction: an op with no rule, a rule that fails, a graph output and a join
with untracked data pin the channels they touch, and the pin says why.

Before::

    conv1 = self.conv1(x); relu = torch.relu(conv1); conv2 = self.conv2(relu)

After: ``conv1.meta["otofx.labels"]`` is ``(1, C, 1, 1)`` with C fresh ids; ``relu`` carries the
same ids; ``conv2`` records them as consumers of ``conv2.weight`` along dim 1.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.passes.infra.pass_base import PassResult

from . import labels as lb
from . import rules  # noqa: F401  (registers the op rules)
from .common import SizeDep, label_tensors
from .meta import LABELS, SHAPE, TABLE
from .registry import RULES, arg_of
from .table import ChannelTable

log = logging.getLogger(__name__)


@dataclass
class LazyElements:
    """Labels of a parameter read through ``get_attr``, allocated on first use: most such reads
    feed a layer that records slices by name and never need per-element ids."""

    name: str
    shape: torch.Size


class ChannelContext:
    """What a rule's ``propagate`` sees (``registry.PropagateContext``): labels and shapes of
    arguments, the table, the module."""

    def __init__(self, gm: GraphModule, table: ChannelTable) -> None:
        self.gm = gm
        self.table = table
        self.attention_unit = "head"
        self.prune_hidden = True
        self.node: Node | None = None
        self._uses: dict[str, int] | None = None
        self._alias: dict[str, str] = {}
        canonical: dict[int, str] = {}
        for name, t in list(gm.named_parameters(remove_duplicate=False)) + list(
                gm.named_buffers(remove_duplicate=False)):
            self._alias[name] = canonical.setdefault(id(t), name)

    # ---- arguments -------------------------------------------------------------------------
    def labels(self, arg: Any) -> Any:
        if isinstance(arg, Node):
            L = arg.meta.get(LABELS)
            if isinstance(L, LazyElements):
                L = arg.meta[LABELS] = self.table.param_elements(L.name, L.shape).clone()
            return L
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.labels(a) for a in arg)
        return None

    def shape(self, arg: Any) -> Any:
        """The real shape of a tensor argument (``torch.Size``), ``()`` for numbers, else None."""
        if isinstance(arg, Node):
            return arg.meta.get(SHAPE)
        if isinstance(arg, (int, float, bool)):
            return torch.Size(())
        return None

    def is_tensor(self, arg: Any) -> bool:
        return isinstance(arg, Node) and isinstance(arg.meta.get(LABELS),
                                                    (torch.Tensor, LazyElements))

    @property
    def out_shape(self) -> Any:
        return self.node.meta.get(SHAPE)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """The node's argument by position or keyword."""
        return arg_of(self.node, index, name, default)

    def channels_along(self, arg: Any, dim: int, why: str, others: Iterable[int] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """For an op that handles channels along one ``dim`` of a tensor argument only (a
        layer's features, a norm's channels): ``(labels, ids)``, ``ids`` the 1-d channel of each
        position along ``dim`` (``UNTRACKED`` where a position has none). Channels along the
        other dims (only those in ``others``, when given) are pinned with ``why``, and then
        ``labels`` (else the argument's own) are untracked data of its shape."""
        L, shape = self.labels(arg), self.shape(arg)
        dim %= len(shape)
        others = [d for d in range(len(shape)) if d != dim] if others is None else others
        if any(L.size(d) > 1 for d in others):
            self.pin(L, why)
            L = lb.full(shape, lb.UNTRACKED)
        return L, lb.along(lb.materialize(L, shape, [dim]), dim)

    def output_along(self, ids: torch.Tensor, dim: int, ndim: int | None = None) -> torch.Tensor:
        """Output labels holding ``ids`` along ``dim`` and size 1 along the other dims, of
        which there are ``ndim`` in all (default: the node's output rank)."""
        shape = [1] * (len(self.out_shape) if ndim is None else ndim)
        shape[dim] = ids.numel()
        return ids.view(shape).clone()

    def module(self, node: Node | None = None) -> torch.nn.Module:
        return self.gm.get_submodule((node or self.node).target)

    def param_of(self, arg: Any) -> str | None:
        """Canonical name of the parameter or buffer a ``get_attr`` argument reads, else None."""
        if isinstance(arg, Node) and arg.op == "get_attr":
            return self._alias.get(arg.target)
        return None

    def module_param(self, attr: str, node: Node | None = None) -> str | None:
        """Canonical name of ``module.attr`` for the current call_module node, if it is a tensor."""
        node = node or self.node
        return self.param_named(f"{node.target}.{attr}" if node.target else attr)

    def param_named(self, name: str) -> str | None:
        """Canonical name of the parameter or buffer ``name`` (a shared tensor has one), or None
        when there is no such tensor (e.g. a module's ``bias=None``)."""
        return self._alias.get(name)

    def uses(self, target: str) -> int:
        """How many nodes call the module ``target`` or read the tensor ``target`` (canonical
        name) through ``get_attr``, plus the other names the tensor has (a weight tied to
        another module's): more than one means it is shared."""
        if self._uses is None:
            self._uses = {}
            for name, canonical in self._alias.items():
                if name != canonical:
                    self._uses[canonical] = self._uses.get(canonical, 0) + 1
            for n in self.gm.graph.nodes:
                if n.op == "call_module":
                    self._uses[n.target] = self._uses.get(n.target, 0) + 1
                elif n.op == "get_attr":
                    name = self._alias.get(n.target, n.target)
                    self._uses[name] = self._uses.get(name, 0) + 1
        return self._uses.get(target, 0)

    # ---- effects -----------------------------------------------------------------------------
    def pin(self, L: Any, reason: str) -> None:
        for t in label_tensors(L):
            self.table.pin(t, f"{reason} (at node '{self.node.name}')")

    def pin_soft(self, labels: Any, what: str) -> None:
        """Pin the soft ids in ``labels`` (an op that does not carry them), saying where they
        began."""
        if not self.table.has_soft:
            return
        for t in label_tensors(labels):
            soft = self.table.is_soft(t)
            if bool(soft.any()):
                for ids, origin in self.table.soft_origins(t[soft]):
                    self.pin(ids, f"{origin}, {what}")

    def couple_along(self, L: torch.Tensor, dim: int, reason: str) -> torch.Tensor:
        """All channels on each line of ``L`` along ``dim`` become one (removed together); a
        line that also holds data with no channel cannot be removed, so its channels are pinned.

        Returns the labels with ``dim`` compacted to size 1 when every position holds a channel
        (one channel per line now), else ``L`` itself."""
        if L.size(dim) == 1:
            return L
        self.table.unify(L, L.narrow(dim, 0, 1).expand_as(L))
        mixed = (L < 0).any(dim=dim, keepdim=True).expand_as(L) & (L >= 0)
        self.pin(L[mixed], reason)
        return L.narrow(dim, 0, 1) if bool((L >= 0).all()) else L

    def untracked(self, shape: Any = ...) -> Any:
        """Labels of data we do not follow, shaped like ``shape`` (default: the node's output)."""
        if shape is ...:
            shape = self.out_shape
        if isinstance(shape, torch.Size):
            return lb.full(shape, lb.UNTRACKED)
        if isinstance(shape, (tuple, list)):
            return type(shape)(self.untracked(s) for s in shape)
        return None

    def unknown(self, reason: str) -> Any:
        """Treat the current node as an op without a rule: pin all it touches."""
        for a in _flat_args(self.node):
            L = _stored(a)
            self.pin(L, reason)
            if isinstance(L, SizeDep):
                self.table.pin(L.ids, f"{reason} (at node '{self.node.name}')")
        return self.untracked()

    def combine(self, args: list[Any], zero_preserving: tuple[int, ...] = ()) -> torch.Tensor:
        """Labels of an elementwise op over broadcast ``args``: joins unify their channels.

        ``zero_preserving``: positions in ``args`` of operands whose zeros stay zeros (both
        factors of ``mul``, the numerator of ``div``). See :meth:`join`."""
        tensor_args = [(i, a) for i, a in enumerate(args) if self.is_tensor(a)]
        ops = [(self.labels(a), self.shape(a)) for _, a in tensor_args]
        return self.join(ops, self.out_shape, [i in zero_preserving for i, _ in tensor_args])

    def join(self, ops: list[tuple[torch.Tensor, Any]], shape: Any,
             keeps_zero: list[bool]) -> torch.Tensor:
        """Labels of an elementwise join of ``ops`` (label tensor, real shape) into ``shape``.

        Channels meeting at a position are unified. A channel joined with data that has no
        channel: where every other operand keeps zeros (a product), the result is still zero
        when the channel is, so it keeps the channel; otherwise the result is not zero but may
        still be irrelevant (attention scores plus a mask, weighed against a head's values), so
        it gets *soft* ids (``ChannelTable.new_soft``) that any op not known to carry them to
        such a product pins. The other operand must broadcast along the channel dims (it is not
        sliced); if not, the channel is pinned at once."""
        if not ops:
            return lb.full(shape, lb.CONSTANT)
        same = self._join_same_channels(ops, shape)
        if same is not None:
            return same
        nd = len(shape)
        Ls = [L.clone() for L in lb.broadcast([L for L, _ in ops], shape)]
        varying = [d for d in range(nd) if Ls[0].size(d) > 1]
        broadcasts = []
        for L, (_, real) in zip(Ls, ops):
            real = (1,) * (nd - len(real)) + tuple(real)
            broadcasts.append(all(real[d] == 1 for d in varying))
            if any(real[d] == 1 for d in varying):
                # this operand is broadcast across positions that carry different labels
                has_ids = L >= 0
                if bool(has_ids.any()):
                    element = self.table.is_element(L)
                    self.pin(L[has_ids & ~element], "broadcast across the channels of another tensor")
                    L[has_ids & element] = lb.CONSTANT
                    L[has_ids & ~element] = lb.UNTRACKED
        ref = functools.reduce(torch.maximum, Ls)
        for L in Ls:
            self.table.unify(ref, L)
        untracked = functools.reduce(torch.logical_or, [L == lb.UNTRACKED for L in Ls])
        fill = torch.where(untracked, lb.UNTRACKED, lb.CONSTANT)
        if not bool((ref >= 0).any()):
            return torch.where(ref >= 0, ref, fill)
        soft = [self.table.is_soft(L) if self.table.has_soft else torch.zeros_like(L, dtype=torch.bool)
                for L in Ls]
        if all(keeps_zero) and len(Ls) > 1:
            # a product: zero wherever one factor is a (non-soft) channel that is zero
            hard = [(L >= 0) & ~s for L, s in zip(Ls, soft)]
            out = ref.clone()
            for L, h in zip(Ls, hard):
                out = torch.where(h, L, out)
            any_hard = functools.reduce(torch.logical_or, hard)
            went_soft = (ref >= 0) & ~any_hard
        else:
            # a channel id where the positions hold one (not an element id of a free parameter)
            out = ref.clone()
            for L, s in zip(Ls, soft):
                out = torch.where((L >= 0) & ~s & ~self.table.is_element(L), L, out)
            went_soft = functools.reduce(torch.logical_or, soft)
        cut = torch.zeros_like(untracked)
        for j, (L, broadcast) in enumerate(zip(Ls, broadcasts)):
            here = L == lb.UNTRACKED
            if not broadcast:
                cut |= here                          # it would need slicing with the channel
            elif not all(k for i, k in enumerate(keeps_zero) if i != j):
                went_soft |= here
        self.pin(ref[cut & (ref >= 0)], "joined with data that carries no channel")
        went_soft &= (out >= 0) & ~cut
        if bool(went_soft.any()):
            out = self.soften(out, went_soft, "joined with data that carries no channel")
        return lb.compact(torch.where(out >= 0, out, fill)).clone()

    def _join_same_channels(self, ops: list[tuple[torch.Tensor, Any]], shape: Any
                            ) -> torch.Tensor | None:
        """:meth:`join`'s result for its common case (a residual add), in a few tensor ops: every
        operand has the output's real shape, and label tensors of one shape holding hard
        channel ids only (no untracked or constant position, no soft id, no element id). The
        channels meeting at each position are unified; the result is the last operand's labels.
        None when the case does not apply."""
        first = ops[0][0]
        if not isinstance(shape, torch.Size) or first.dim() != len(shape) or any(
                L.shape != first.shape or real != shape for L, real in ops):
            return None
        stacked = torch.stack([L for L, _ in ops])
        if not bool((stacked >= 0).all()):
            return None
        if self.table.has_soft and bool(self.table.is_soft(stacked).any()):
            return None
        if self.table.has_elements and bool(self.table.is_element(stacked).any()):
            return None
        ref = stacked.amax(dim=0)
        for L, _ in ops:
            self.table.unify(ref, L)
        return lb.compact(ops[-1][0]).clone()

    def soften(self, L: torch.Tensor, where: torch.Tensor, reason: str) -> torch.Tensor:
        """``L`` with the ids at ``where`` replaced by soft ids of the same channels."""
        ids = L[where]
        already = self.table.is_soft(ids)
        uniq = ids[~already].unique()
        if uniq.numel() == 0:
            return L
        fresh = self.table.new_soft(uniq.numel(), f"{reason} (at node '{self.node.name}')")
        self.table.unify(fresh, uniq)
        out = L.clone()
        mapped = ids.clone()
        mapped[~already] = fresh[torch.searchsorted(uniq, ids[~already])]
        out[where] = mapped
        return out


def _stored(arg: Any) -> Any:
    """An argument's labels as stored, without allocating a parameter's lazy element labels
    (for checks that only look for sizes, soft ids or pins)."""
    return arg.meta.get(LABELS) if isinstance(arg, Node) else None


def _flat_args(node: Node) -> list[Any]:
    out: list[Any] = []
    torch.fx.node.map_arg((node.args, node.kwargs), out.append)
    return out


def _size_deps(ctx: ChannelContext, node: Node) -> list[SizeDep]:
    found = []
    for a in _flat_args(node):
        L = _stored(a)
        if isinstance(L, SizeDep):
            found.append(L)
        elif isinstance(L, (list, tuple)):
            found += [x for x in L if isinstance(x, SizeDep)]
    return found


def propagate_node(ctx: ChannelContext, node: Node) -> Any:
    ctx.node = node
    if node.op == "placeholder":
        return ctx.untracked()
    if node.op == "get_attr":
        name = ctx.param_of(node)
        shape = node.meta.get(SHAPE)
        if name is not None and isinstance(shape, torch.Size):
            return LazyElements(name, shape)
        return ctx.untracked() if isinstance(shape, torch.Size) else None
    if node.op == "output":
        labels = torch.fx.node.map_aggregate(node.args[0], _stored)
        ctx.pin_soft(labels, "then reaches a graph output")
        ctx.pin(labels, "reaches a graph output")
        return None
    rule = RULES.lookup(ctx.gm, node)
    if rule is None:
        return ctx.unknown(f"no rule for {RULES.describe(ctx.gm, node)}")
    try:
        out = rule.propagate(ctx, node)
    except Exception as exc:  # a rule that cannot handle this call pins instead of guessing
        log.debug("rule %s failed on %s", rule.name, node.name, exc_info=True)
        return ctx.unknown(f"rule '{rule.name}' cannot handle this call ({type(exc).__name__}: {exc})")
    if ctx.table.has_soft and not rule.carries_soft:
        for a in _flat_args(node):
            ctx.pin_soft(_stored(a), f"then reaches {RULES.describe(ctx.gm, node)}")
    if not rule.accepts_sizes:
        for dep in _size_deps(ctx, node):
            ctx.table.pin(dep.ids, f"a channel count is used as a value (at node '{node.name}')")
    return out


ATTENTION_UNITS = ("head", "head_dim")


def channels_pass(gm: GraphModule, attention_unit: str = "head", prune_hidden: bool = True
                  ) -> PassResult:
    """Label every node (``node.meta["otofx.labels"]``) and build ``gm.meta["otofx.table"]``.

    Needs ``node.meta["otofx.shape"]`` from the shapes pass. ``attention_unit``: what a head split
    (``view(B, T, heads, head_dim)``) makes prunable: whole ``"head"``s (default), or
    ``"head_dim"`` channels removed uniformly from every head. ``prune_hidden``: LayerNorm,
    RMSNorm and ``mean`` over a channel dim keep their channels prunable (shrink gives them the
    dense divisor, ``passes.dense_norm``), so a transformer's residual stream can shrink; False
    pins the channels they compute statistics over.
    """
    if attention_unit not in ATTENTION_UNITS:
        raise ValueError(f"attention_unit must be one of {ATTENTION_UNITS}, got {attention_unit!r}")
    table = ChannelTable()
    ctx = ChannelContext(gm, table)
    ctx.attention_unit = attention_unit
    ctx.prune_hidden = prune_hidden
    for node in gm.graph.nodes:
        node.meta[LABELS] = propagate_node(ctx, node)
    gm.meta[TABLE] = table
    return PassResult(gm, False)
