"""The channel table: every channel id the channels pass hands out, and what ties them together.

One table per analysed graph (``gm.meta["otofx.table"]``). It owns

* a union-find over ids (unified ids are one channel: removing one removes all),
* the canonical ids of parameter slices: ``slice_ids[(param, dim)][i]`` is the channel that slice
  ``i`` of ``param`` along ``dim`` belongs to. Every use of a parameter unifies with these ids, so a
  weight shared by two layers couples their channels by construction,
* element ids of free parameters (``nn.Parameter`` reached through ``get_attr``), sliced later
  along whichever dim their channels turn out to run,
* consumer sites (where a removed channel's value is read, so a constant can be folded),
* pins: ids that must never be removed, each with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PRODUCER = "producer"      # weight rows whose zeroing makes the channel input-independent
AFFINE = "affine"          # per-channel parameters zeroed with the producers (bias, norm affine)
BUFFER = "buffer"          # per-channel buffers removed with the channel (running stats)
CONSUMER = "consumer"      # input slices of the next layers, removed with the channel
ROLES = (PRODUCER, AFFINE, BUFFER, CONSUMER)

FOLD_BIAS = "bias"         # a consumer site whose removed channels' constant joins the node's bias
FOLD_ZERO = "zero"         # a consumer site that only exactly-zero channels may leave


class UnionFind:
    """Vectorised union-find over int64 ids; the root of a set is its smallest id.

    ``union`` only records the pairs; they are joined all at once, in a few vectorised rounds,
    the next time a root is asked for (the channels pass unifies thousands of small label
    tensors and reads no root until it is done)."""

    def __init__(self) -> None:
        self._parent = torch.empty(0, dtype=torch.long)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._all: torch.Tensor | None = None
        self.size = 0

    def new(self, n: int) -> torch.Tensor:
        self._all = None
        ids = torch.arange(self.size, self.size + n, dtype=torch.long)
        if self.size + n > self._parent.numel():
            grown = torch.arange(max(2 * (self.size + n), 1024), dtype=torch.long)
            grown[: self.size] = self._parent[: self.size]
            self._parent = grown
        self.size += n
        return ids

    def _find(self, x: torch.Tensor) -> torch.Tensor:
        r = self._parent[x]
        while True:
            r2 = self._parent[r]
            if torch.equal(r2, r):
                break
            r = r2
        self._parent[x] = r          # path compression
        return r

    def roots(self, ids: torch.Tensor) -> torch.Tensor:
        """Roots of ``ids``; negative entries (untracked/constant) are returned unchanged."""
        if self._pending:
            self._join_pending()
        flat = ids.reshape(-1)
        if flat.numel() == 0:
            return ids.clone()
        valid = flat >= 0
        if bool(valid.all()):
            return self._find(flat).reshape(ids.shape)
        out = flat.clone()
        if bool(valid.any()):
            out[valid] = self._find(flat[valid])
        return out.reshape(ids.shape)

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Unify ``a[i]`` with ``b[i]`` for every i where both are ids (>= 0)."""
        if a.numel():     # copies: the caller may reuse its tensors
            self._all = None
            self._pending.append((a.reshape(-1).clone(), b.reshape(-1).clone()))

    def all_roots(self) -> torch.Tensor:
        """The root of every id, ``all_roots()[i]``: one walk, kept until ids or unions are added."""
        if self._all is None:
            self._all = self.roots(torch.arange(self.size))
        return self._all

    def _join_pending(self) -> None:
        a = torch.cat([p[0] for p in self._pending])
        b = torch.cat([p[1] for p in self._pending])
        self._pending = []
        keep = (a >= 0) & (b >= 0) & (a != b)
        a, b = a[keep], b[keep]
        while a.numel():
            ra, rb = self._find(a), self._find(b)
            differ = ra != rb
            if not bool(differ.any()):
                return
            ra, rb = ra[differ], rb[differ]
            lo, hi = torch.minimum(ra, rb), torch.maximum(ra, rb)
            self._parent.scatter_reduce_(0, hi, lo, reduce="amin")
            if torch.equal(self._parent[hi], lo):
                return          # every root got the link it asked for: all pairs are joined
            a, b = a[differ], b[differ]


def _in_ranges(ids: torch.Tensor, ranges: list[tuple[int, int]]) -> torch.Tensor:
    """Which ``ids`` fall in one of the half-open ``ranges`` (disjoint, in increasing order: ids
    are handed out in order), by one binary search per id."""
    if not ranges:
        return torch.zeros_like(ids, dtype=torch.bool)
    bounds = torch.tensor(ranges, dtype=torch.long)
    i = torch.searchsorted(bounds[:, 0].contiguous(), ids.contiguous(), right=True) - 1
    return (i >= 0) & (ids < bounds[:, 1][i.clamp(min=0)])


def member_mask(ids: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """``torch.isin(ids, members)`` for non-negative ids, by a lookup table (linear time)."""
    if ids.numel() == 0:
        return torch.zeros_like(ids, dtype=torch.bool)
    top = int(max(ids.max().item(), members.max().item() if members.numel() else 0)) + 1
    table = torch.zeros(top, dtype=torch.bool)
    table[members] = True
    return (ids >= 0) & table[ids.clamp(min=0)]


def stable_argsort(keys: torch.Tensor) -> torch.Tensor:
    """A stable argsort of int64 keys (numpy's radix sort is several times faster than torch's)."""
    return torch.from_numpy(keys.numpy().argsort(kind="stable"))


@dataclass
class ConsumerSite:
    """A place that reads channels: ``node``'s input ``arg`` along ``dim``, one id per position.

    ``fold`` says what a removed channel whose value is a non-zero constant may do here:
    ``FOLD_BIAS`` (its contribution, when uniform along every dim but ``out_dim``, is added to the
    node's bias) or ``FOLD_ZERO`` (only channels that are exactly zero may be removed).
    """

    node: str
    arg: int
    dim: int
    ids: torch.Tensor
    fold: str
    out_dim: int = 1


@dataclass
class ChannelTable:
    uf: UnionFind = field(default_factory=UnionFind)
    slice_ids: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    slice_roles: dict[tuple[str, int], str] = field(default_factory=dict)
    element_ids: dict[str, torch.Tensor] = field(default_factory=dict)
    channel_ids: list[torch.Tensor] = field(default_factory=list)
    consumers: list[ConsumerSite] = field(default_factory=list)
    pins: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    _element_ranges: list[tuple[int, int]] = field(default_factory=list)
    _soft_ranges: list[tuple[int, int, str]] = field(default_factory=list)

    def new_channels(self, n: int) -> torch.Tensor:
        """Fresh channel ids: the origin of a prunable dimension."""
        ids = self.uf.new(n)
        self.channel_ids.append(ids)
        return ids

    def param_slices(self, param: str, dim: int, n: int, role: str) -> torch.Tensor:
        """Canonical channel ids of the ``n`` slices of ``param`` along ``dim``."""
        key = (param, dim)
        if key not in self.slice_ids:
            self.slice_ids[key] = self.new_channels(n) if role == PRODUCER else self.uf.new(n)
            self.slice_roles[key] = role
        elif role == PRODUCER and self.slice_roles[key] != PRODUCER:
            self.channel_ids.append(self.slice_ids[key])
            self.slice_roles[key] = PRODUCER
        return self.slice_ids[key]

    def bind_slices(self, param: str, dim: int, ids: torch.Tensor, role: str) -> torch.Tensor:
        """Slice ``i`` of ``param`` along ``dim`` belongs to channel ``ids[i]`` (unified with it);
        returns the slices' canonical ids. Slices seen for the first time, all with a channel, take
        ``ids`` themselves: no fresh ids and no unions (a norm's four slices per channel)."""
        key = (param, dim)
        flat = ids.reshape(-1)
        if key not in self.slice_ids and role != PRODUCER and flat.numel() and bool((flat >= 0).all()):
            self.slice_ids[key] = flat.clone()
            self.slice_roles[key] = role
            return self.slice_ids[key]
        slices = self.param_slices(param, dim, flat.numel(), role)
        self.unify(slices, flat)
        return slices

    def read_slices(self, param: str, dim: int, ids: torch.Tensor, role: str) -> None:
        """Slice ``i`` of ``param`` along ``dim`` is used with channel ``ids[i]``. A slice used
        with data that has no channel (``ids[i] < 0``) is pinned: it matters when the weight is
        shared with another use whose input does have channels."""
        slices = self.bind_slices(param, dim, ids, role)
        self.pin(slices[ids.reshape(-1) < 0], f"'{param}' is shared with a use whose input has no "
                 "channel")

    def param_elements(self, param: str, shape: torch.Size) -> torch.Tensor:
        """One id per element of a free parameter or buffer (same ids on every use)."""
        if param not in self.element_ids:
            ids = self.uf.new(max(1, shape.numel()))
            self._element_ranges.append((int(ids[0]), int(ids[-1]) + 1))
            self.element_ids[param] = ids.view(shape)
        return self.element_ids[param]

    def new_soft(self, n: int, origin: str = "") -> torch.Tensor:
        """Fresh *soft* ids: data whose value is irrelevant once its channel is removed, because
        it only reaches a product with data of the same channel that is then exactly zero
        (attention scores of a head, multiplied with that head's values). Joins with data that
        has no channel keep soft ids instead of pinning; any op not known to carry them to that
        product pins them (``passes.channels``)."""
        ids = self.uf.new(n)
        if n:
            self._soft_ranges.append((int(ids[0]), int(ids[-1]) + 1, origin))
        return ids

    def soft_origins(self, ids: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
        """``ids`` (all soft) grouped by the reason they became soft."""
        out = []
        for lo, hi, origin in self._soft_ranges:
            here = ids[(ids >= lo) & (ids < hi)]
            if here.numel():
                out.append((here, origin))
        return out

    @property
    def has_soft(self) -> bool:
        return bool(self._soft_ranges)

    @property
    def has_elements(self) -> bool:
        return bool(self._element_ranges)

    def is_soft(self, ids: torch.Tensor) -> torch.Tensor:
        """Which ids are soft (see ``new_soft``)."""
        return _in_ranges(ids, [r[:2] for r in self._soft_ranges])

    def is_element(self, ids: torch.Tensor) -> torch.Tensor:
        """Which ids are elements of constants (free parameters), not channels."""
        return _in_ranges(ids, self._element_ranges)

    def unify(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.uf.union(a, b)

    def pin(self, ids: torch.Tensor, reason: str) -> None:
        ids = ids.reshape(-1)
        ids = ids[ids >= 0]
        if ids.numel():
            self.pins.append((ids.unique(), reason))

    def consume(self, node: str, arg: int, dim: int, ids: torch.Tensor, fold: str,
                out_dim: int = 1) -> None:
        if bool((ids >= 0).any()):
            self.consumers.append(ConsumerSite(node, arg, dim, ids.clone(), fold, out_dim))
