"""The groups pass: channels that must go together, gathered into ``PruningGroup``s.

After the channels pass every channel is a union-find set of ids. Channels that meet the same
parameter slices and consumer sites the same number of times (conv1's 64 out-channels, with
bn1's affine and conv2's input columns) form one ``PruningGroup`` of ``size`` channels: OTO's
zero-invariant groups. Each group lists its ``members`` as ``ChannelSlice``s with an index tensor
``(size, k)``: row ``i`` holds the positions of channel ``i`` along ``dim`` of ``param``, so an
optimizer can read the whole group with one ``index_select``.

A channel pinned anywhere (graph output, unknown op, ...) pins its group; ``why_pinned`` says why.
Result: ``gm.meta["otofx.groups"]`` and, per node, ``node.meta["otofx.dims"]`` (the sympy size of
every dim in terms of the groups' kept counts).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import sympy
import torch
from torch.fx import GraphModule
from torch.fx.passes.infra.pass_base import PassResult

from . import labels as lb
from .common import tensor_named
from .meta import DIMS, GROUPS, LABELS, SHAPE, TABLE
from .table import AFFINE, PRODUCER, member_mask, stable_argsort


@dataclass
class ChannelSlice:
    """Positions ``index[i]`` along ``dim`` of parameter/buffer ``param`` belong to channel i."""

    param: str
    dim: int
    role: str
    index: torch.Tensor

    def __repr__(self) -> str:
        return f"{self.param}[dim {self.dim}, {self.role}, {tuple(self.index.shape)}]"


@dataclass
class PruningGroup:
    """Channels removed together; ``size`` of them, each removable on its own."""

    name: str
    size: int
    prunable: bool
    why_pinned: list[str]
    members: list[ChannelSlice]
    consumers: list[str] = field(default_factory=list)
    roots: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long),
                                repr=False)

    @property
    def symbol(self) -> sympy.Symbol:
        """The number of channels kept, as it appears in ``node.meta["otofx.dims"]``."""
        return sympy.Symbol(self.name.replace(".", "_"), integer=True, positive=True)

    def slices(self, *roles: str) -> list[ChannelSlice]:
        return [m for m in self.members if not roles or m.role in roles]

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"pinned: {'; '.join(self.why_pinned[:2])}"
        return f"PruningGroup({self.name!r}, size={self.size}, {state})"


@dataclass
class _Record:
    key: tuple
    role: str
    roots: torch.Tensor     # root id of each position along the dim


_FROZEN = "parameter '{}' is frozen (requires_grad=False): training cannot drive it to zero"


def _frozen(gm: GraphModule, name: str) -> bool:
    t = tensor_named(gm, name)
    return isinstance(t, torch.nn.Parameter) and not t.requires_grad


def _records(gm: GraphModule, table, units: torch.Tensor
             ) -> tuple[list[_Record], list[tuple[torch.Tensor, str]]]:
    uf = table.uf
    keys = list(table.slice_ids)
    records = [_Record(key, table.slice_roles[key], r)
               for key, r in zip(keys, _batched_roots(uf, [table.slice_ids[k] for k in keys]))]
    extra_pins = [(r.roots, _FROZEN.format(r.key[0])) for r in records
                  if r.role in (PRODUCER, AFFINE) and _frozen(gm, r.key[0])]
    sliced = {name for name, _ in table.slice_ids}
    for name, ids in table.element_ids.items():
        roots = uf.roots(ids)
        if not bool(member_mask(roots.reshape(-1), units).any()):
            continue                      # a constant that no channel reaches
        if name in sliced:
            extra_pins.append((roots, f"parameter '{name}' is used both by a layer and as a tensor"))
            continue
        for d in range(roots.dim()):
            if roots.size(d) > 1 and bool((lb.along(roots, d) >= 0).all()):
                records.append(_Record((name, d), AFFINE, lb.along(roots, d)))
                break
        else:
            extra_pins.append((roots, f"free parameter '{name}' cannot be sliced along one dim"))
        if _frozen(gm, name):
            extra_pins.append((roots, _FROZEN.format(name)))
    for site, r in zip(table.consumers, _batched_roots(uf, [site.ids for site in table.consumers])):
        records.append(_Record(("node", site.node, site.arg, site.dim), "site", r))
    return records, extra_pins


def _pins(table, units: torch.Tensor, extra: list[tuple[torch.Tensor, str]]
          ) -> dict[int, list[str]]:
    """Reasons per pinned channel (root id): the first 8 distinct ones, in the order the pins
    were made; only channels (not constants) are listed."""
    texts: dict[str, int] = {}
    parts = []
    for order, (ids, why) in enumerate(extra + table.pins):
        if ids.numel():
            n = ids.numel()
            parts.append(torch.stack([ids.reshape(-1), torch.full((n,), texts.setdefault(why, len(texts))),
                                      torch.full((n,), order)]))
    if not parts:
        return {}
    ids, text, order = torch.cat(parts, dim=1)
    roots = table.uf.roots(ids)
    keep = member_mask(roots, units)
    roots, text, order = roots[keep], text[keep], order[keep]
    pair, index = torch.unique(roots * len(texts) + text, return_inverse=True)   # (root, text)
    first = torch.full((pair.numel(),), order.max().item() + 1 if order.numel() else 0, dtype=torch.long)
    first.scatter_reduce_(0, index, order, reduce="amin")    # the pin that first gave it
    root, text = pair // len(texts), pair % len(texts)
    ranked = stable_argsort(root * (int(first.max()) + 1) + first) if pair.numel() else pair
    root, text = root[ranked], text[ranked]
    rank = torch.arange(root.numel()) - torch.searchsorted(root, root)
    names = list(texts)
    reasons: dict[int, list[str]] = defaultdict(list)
    for r, w in zip(root[rank < 8].tolist(), text[rank < 8].tolist()):
        reasons[r].append(names[w])
    return reasons


def _merge_twins(records: list[_Record]) -> tuple[list[_Record], list[int], dict[int, list[tuple[int, _Record]]]]:
    """Records whose positions hold exactly the same channels (a conv's rows, the norm's weight,
    bias and running stats after it) always meet a channel together: only the first of them takes
    part in the grouping, the others (``twins[k]``) are listed beside it. Returns the records
    kept, each one's place in the original list, and the twins with theirs."""
    kept: list[_Record] = []
    first_index: list[int] = []
    twins: dict[int, list[tuple[int, _Record]]] = {}
    seen: dict[bytes, int] = {}
    for i, r in enumerate(records):
        key = r.roots.numpy().tobytes() if r.role != "site" else None
        if key is not None and key in seen:
            twins.setdefault(seen[key], []).append((i, r))
            continue
        if key is not None:
            seen[key] = len(kept)
        kept.append(r)
        first_index.append(i)
    return kept, first_index, twins


def _group_index(h0: torch.Tensor, h1: torch.Tensor, pinned: torch.Tensor) -> torch.Tensor:
    """Group of each channel: one per distinct (h0, h1, pinned). A 1-d unique over h0 and the
    pinned bit, checked against h1 (a 64-bit collision would show there and take the slow way)."""
    first_key = h0 * 2 + pinned.long()        # wraps around: still a function of (h0, pinned)
    uniq, index = torch.unique(first_key, return_inverse=True)
    lead = torch.full((uniq.numel(),), -1, dtype=torch.long)
    lead.scatter_reduce_(0, index, torch.arange(index.numel()), reduce="amax", include_self=True)
    same = (h1 == h1[lead[index]]) & (pinned == pinned[lead[index]]) & (h0 == h0[lead[index]])
    if bool(same.all()):
        return index
    key = torch.stack([h0, h1, pinned.long()], dim=1)
    return torch.unique(key, dim=0, return_inverse=True)[1]


def build_groups(gm: GraphModule) -> list[PruningGroup]:
    table = gm.meta[TABLE]
    uf = table.uf
    if not table.channel_ids:
        return []
    units = uf.roots(torch.cat(table.channel_ids)).unique()
    records, extra = _records(gm, table, units)
    pins = _pins(table, units, extra)
    records, first_index, twins = _merge_twins(records)
    K = len(records)
    roots = torch.cat([r.roots for r in records])
    kinds = torch.cat([torch.full_like(r.roots, k) for k, r in enumerate(records)])
    pos = torch.cat([torch.arange(r.roots.numel()) for r in records])
    mask = member_mask(roots, units)
    roots, kinds, pos = roots[mask], kinds[mask], pos[mask]
    order = stable_argsort(roots * K + kinds)
    roots, kinds, pos = roots[order], kinds[order], pos[order]
    pairs, counts = torch.unique_consecutive(roots * K + kinds, return_counts=True)
    pair_root, pair_kind = pairs // K, pairs % K

    # channels with the same signature (the same records, each the same number of times) and
    # the same pinned state form a group: hashed, two independent 64-bit hashes per channel
    gen = torch.Generator().manual_seed(0)
    salt = torch.randint(-2 ** 62, 2 ** 62, (2, K), generator=gen)
    hashes = torch.zeros(2, uf.size, dtype=torch.long)
    for i in range(2):
        hashes[i].index_add_(0, pair_root, salt[i][pair_kind] * (counts + 1))
    pinned = member_mask(units, torch.tensor(sorted(pins), dtype=torch.long))
    group_index = _group_index(hashes[0][units], hashes[1][units], pinned)
    first_root = torch.full((int(group_index.max()) + 1,), uf.size, dtype=torch.long)
    first_root.scatter_reduce_(0, group_index, units, reduce="amin")
    order_of_groups = torch.argsort(first_root)            # groups in channel-creation order
    rank = torch.empty_like(order_of_groups)
    rank[order_of_groups] = torch.arange(len(order_of_groups))
    group_index = rank[group_index]

    # every (group, record) block of entries, channels in root order, positions in order
    group_of = torch.full((uf.size,), -1, dtype=torch.long)
    group_of[units] = group_index
    block = group_of[roots] * K + kinds
    order = stable_argsort(block)
    block, pos = block[order], pos[order]
    starts: dict[int, int] = {}
    offset = 0
    for b, n in zip(*[t.tolist() for t in torch.unique_consecutive(block, return_counts=True)]):
        starts[b] = offset
        offset += n
    members_of = [units[group_index == gi] for gi in range(len(order_of_groups))]

    groups: list[PruningGroup] = []
    names: dict[str, int] = defaultdict(int)
    for gi, group_roots in enumerate(members_of):
        size = group_roots.numel()
        rep = int(group_roots[0])
        lo, hi = (int(torch.searchsorted(pair_root, rep, right=r)) for r in (False, True))
        sig = list(zip(pair_kind[lo:hi].tolist(), counts[lo:hi].tolist()))
        is_pinned = rep in pins
        numbered, consumers = [], []
        for k, count in sig:
            rec = records[k]
            if rec.role == "site":
                consumers.append(rec.key[1])
                continue
            start = starts[gi * K + k]
            index = pos[start: start + size * count].view(size, count)
            for j, r in [(first_index[k], rec), *twins.get(k, [])]:
                numbered.append((j, ChannelSlice(r.key[0], r.key[1], r.role, index)))
        members = [m for _, m in sorted(numbered, key=lambda jm: jm[0])]
        producers = [m for m in members if m.role == PRODUCER]
        base = (producers or members)[0].param.rsplit(".", 1)[0] if members else "group"
        names[base] += 1
        name = base if names[base] == 1 else f"{base}#{names[base]}"
        why = sorted({w for r in group_roots.tolist() for w in pins.get(r, [])})[:8] \
            if is_pinned else []
        if not is_pinned and size < 2:
            why = ["a single channel: removing it would leave the dim empty"]
        groups.append(PruningGroup(name, size, not why, why, members, sorted(set(consumers)),
                                   group_roots))
    return groups


def _batched_roots(uf, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``uf.roots`` of each tensor, found in one vectorised call."""
    if not tensors:
        return []
    flat = uf.roots(torch.cat([t.reshape(-1) for t in tensors]))
    return [r.view(t.shape) for r, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def _dim_exprs(gm: GraphModule, groups: list[PruningGroup]) -> None:
    """``node.meta["otofx.dims"]``: each dim's size as ``constant + sum(k_g * S_g)``, ``S_g`` the
    channels group g keeps. A dim holding only some of a group's channels (one piece of a split)
    counts them as a constant: the expression is exact for the groups it names."""
    table = gm.meta[TABLE]
    group_of = torch.full((table.uf.size + 1,), -1, dtype=torch.long)
    for gi, g in enumerate(groups):
        group_of[g.roots] = gi
    symbols = [g.symbol for g in groups]
    todo = []
    for node in gm.graph.nodes:
        L, shape = node.meta.get(LABELS), node.meta.get(SHAPE)
        if isinstance(L, torch.Tensor) and isinstance(shape, torch.Size):
            todo.append((node, L, shape))
    tracked = [bool((L >= 0).any()) for _, L, _ in todo]
    roots = iter(_batched_roots(table.uf, [L for (_, L, _), t in zip(todo, tracked) if t]))
    known: dict[tuple, tuple] = {}       # the same labels (a conv, its norm, its activation)
    for (node, _, shape), has_ids in zip(todo, tracked):
        if not has_ids:
            node.meta[DIMS] = tuple(sympy.Integer(s) for s in shape)
            continue
        R = next(roots)
        key = (tuple(shape), tuple(R.shape), R.numpy().tobytes())
        if key not in known:
            known[key] = tuple(_dim_expr(R, d, shape[d], group_of, groups, symbols)
                               for d in range(len(shape)))
        node.meta[DIMS] = known[key]


def _dim_expr(R: torch.Tensor, d: int, size: int, group_of: torch.Tensor, groups: list[PruningGroup],
              symbols: list[sympy.Symbol]) -> sympy.Expr:
    if R.size(d) == 1:
        return sympy.Integer(size)      # the same labels all along d: this dim never shrinks
    per_pos = lb.along(R, d)
    gid = torch.where(per_pos >= 0, group_of[per_pos.clamp(min=0)], -1)
    terms = [sympy.Integer(int((gid < 0).sum()))]
    for gi, n in zip(*[t.tolist() for t in torch.unique(gid[gid >= 0], return_counts=True)]):
        size_g = groups[gi].size
        terms.append((n // size_g) * symbols[gi] if n % size_g == 0 else sympy.Integer(n))
    return sympy.Add(*terms)


def groups_pass(gm: GraphModule) -> PassResult:
    """Build ``gm.meta["otofx.groups"]`` from the channel table; annotate ``otofx.dims``."""
    groups = build_groups(gm)
    gm.meta[GROUPS] = groups
    _dim_exprs(gm, groups)
    return PassResult(gm, False)
