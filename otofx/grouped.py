"""Grouped views: every prunable channel's parameter slices as index tensors, built once.

Channel ``c`` (global index over all prunable groups) owns rows of several parameters (a conv's
weight rows, its bias, the BatchNorm affine after it). Per-channel quantities are read through
whole-parameter views, never by gathering rows: each parameter is seen as ``(rows, -1)`` along the
channel dim (``p.view(n, -1)`` for the usual dim 0, no copy), per-row norms and inner products
are a few reductions over that view, and one ``index_add_`` over all parameters' rows sums them
per channel. Updates go the other way: per-channel coefficients become per-row coefficients by
one gather over a table built once per mask, and the optimizer applies them as broadcast
multiplies (``x.mul_(a).addcmul_(d, b)``), so a pruning step costs a few passes over each
parameter, like the base optimizer's step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from otofx.passes.groups import PruningGroup
from otofx.passes.table import AFFINE, PRODUCER

CHUNK = 1 << 19     # elements per chunk of a per-row inner product on CPU (stays in cache)


@dataclass
class Saliencies:
    """Per-channel quantities the optimizers score channels with."""

    magnitude: torch.Tensor       # ||x_c||
    mean_magnitude: torch.Tensor  # ||x_c|| / |c|
    cosine: torch.Tensor          # cos(x_c, d_c)
    inner: torch.Tensor           # <x_c, d_c>

    def importance(self, alive: torch.Tensor | None = None) -> torch.Tensor:
        """HESSO's five equally weighted, normalised saliencies (higher: more important). With
        ``alive`` (bool per channel) each saliency is normalised over those channels only, so
        channels already pruned (all zero) do not set the scale of the rest."""
        from otofx.partition import normalize
        terms = (self.magnitude, self.mean_magnitude, self.cosine + 1, self.inner.abs(),
                 0.5 * self.inner ** 2)
        among = None if alive is None else alive.to(self.magnitude.device)
        return sum(normalize(t, among) for t in terms)


class Direction:
    """A parameter's update direction ``d = num / den / divisor + decay * x`` (``den`` None:
    1), the base step being ``x - lr * d``. Adam's ``num / den`` is divided out (into ``den``'s
    memory) only when a per-row product or coefficient needs it."""

    __slots__ = ("num", "den", "divisor", "decay")

    def __init__(self, num: torch.Tensor, den: torch.Tensor | None = None, divisor: float = 1.0,
                 decay: float = 0.0) -> None:
        self.num, self.den, self.divisor, self.decay = num, den, divisor, decay

    @property
    def tensor(self) -> torch.Tensor:
        """``num / den``: ``d`` without ``divisor`` and ``decay``."""
        if self.den is not None:
            self.num = torch.div(self.num, self.den, out=self.den)
            self.den = None
        return self.num


@dataclass
class _Rows:
    param: nn.Parameter
    name: str
    dim: int
    index: torch.Tensor      # rows along dim
    channel: torch.Tensor    # global channel of each row
    offset: int = 0          # where this parameter's rows start in the views' row vector

    @property
    def n(self) -> int:
        return self.param.shape[self.dim]

    def shape(self) -> list[int]:
        """A per-row vector reshaped to broadcast against the parameter."""
        s = [1] * self.param.dim()
        s[self.dim] = self.n
        return s


def _as_rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` as (rows along ``dim``, everything else): a view for dim 0 of a contiguous tensor."""
    n = t.shape[dim]
    if dim == 0 and t.is_contiguous():
        return t.view(n, -1)
    return t.movedim(dim, 0).reshape(n, -1)


def _row_products(x: torch.Tensor, u: torch.Tensor | None, xx: torch.Tensor, xu: torch.Tensor,
                  uu: torch.Tensor) -> None:
    """Per row of the 2-d ``x`` and ``u``: <x, x>, <x, u>, <u, u> into the float32 vectors
    ``xx``, ``xu``, ``uu``. On the CPU the rows go in chunks that stay in cache, the elementwise
    product into one reused buffer."""
    n, k = x.shape
    f32 = torch.float32
    if u is None:
        torch.linalg.vector_norm(x, dim=1, dtype=f32, out=xx).square_()
        xu.zero_()
        uu.zero_()
        return
    if x.device.type != "cpu":
        torch.linalg.vector_norm(x, dim=1, dtype=f32, out=xx).square_()
        torch.linalg.vector_norm(u, dim=1, dtype=f32, out=uu).square_()
        xu.copy_(torch.linalg.vecdot(x, u))
        return
    rows = max(1, CHUNK // k)
    work = torch.empty(min(n, rows) * k, dtype=torch.promote_types(x.dtype, u.dtype))
    for i in range(0, n, rows):
        a, b = x[i:i + rows], u[i:i + rows]
        r = a.shape[0]
        torch.linalg.vector_norm(a, dim=1, dtype=f32, out=xx[i:i + r])
        torch.linalg.vector_norm(b, dim=1, dtype=f32, out=uu[i:i + r])
        torch.sum(torch.mul(a, b, out=work[:r * k].view(r, k)), 1, dtype=f32, out=xu[i:i + r])
    xx.square_()
    uu.square_()


class GroupedViews:
    """Index tensors over ``module``'s parameters for the prunable ``groups``."""

    def __init__(self, module: nn.Module, groups: list[PruningGroup]) -> None:
        params = dict(module.named_parameters())
        self.groups = [g for g in groups if g.prunable]
        self.sizes = torch.tensor([g.size for g in self.groups], dtype=torch.long)
        self.offsets = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), self.sizes]), 0)
        self.num_channels = int(self.sizes.sum())
        self.group_of = torch.repeat_interleave(torch.arange(len(self.groups)), self.sizes)
        merged: dict[tuple[str, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for gi, g in enumerate(self.groups):
            channel = torch.arange(g.size) + self.offsets[gi]
            for m in g.slices(PRODUCER, AFFINE):
                if m.param not in params:          # buffers are not trained
                    continue
                k = m.index.shape[1]
                merged.setdefault((m.param, m.dim), []).append(
                    (m.index.reshape(-1), channel.repeat_interleave(k)))
        self.rows: list[_Rows] = []
        offset = 0
        for (name, dim), parts in merged.items():
            r = _Rows(params[name], name, dim, torch.cat([i for i, _ in parts]),
                      torch.cat([c for _, c in parts]), offset)
            self.rows.append(r)
            offset += r.n
        self.num_rows = offset
        counts = torch.zeros(self.num_channels)
        for r in self.rows:
            per_row = r.param.numel() // r.n
            counts.index_add_(0, r.channel, torch.full((r.index.numel(),), float(per_row)))
        self.numel = counts           # elements per channel: |g| in the algorithms
        self.position = torch.cat([r.offset + r.index for r in self.rows]) if self.rows \
            else torch.zeros(0, dtype=torch.long)
        self.channel = torch.cat([r.channel for r in self.rows]) if self.rows \
            else torch.zeros(0, dtype=torch.long)
        # every (parameter, channel) pair with a row: which parameters a set of channels touches
        # (a 1-d unique of entry * channels + channel: unique over dim=1 took 0.25 s on vit_b_16)
        width = max(1, self.num_channels)
        pairs = torch.unique(torch.cat([i * width + r.channel for i, r in enumerate(self.rows)])) \
            if self.rows else torch.zeros(0, dtype=torch.long)
        self._pair_entry, self._pair_channel = pairs // width, pairs % width
        self._cache: dict = {}

    @property
    def device(self) -> torch.device:
        """Where per-channel quantities live: the device of the parameters."""
        return self.rows[0].param.device if self.rows else torch.device("cpu")

    def _on_device(self, name: str, t: torch.Tensor) -> torch.Tensor:
        key = (name, self.device)
        if key not in self._cache:
            self._cache[key] = t.to(self.device)
        return self._cache[key]

    def _touching(self, channels: torch.Tensor | None) -> list[_Rows]:
        """The parameters with a row of ``channels`` (bool per channel; None: all)."""
        if channels is None:
            return self.rows
        key = ("touching", channels.numpy().tobytes())
        return self._cached(key, lambda: [self.rows[i] for i in self._entries(channels).tolist()])

    def _entries(self, channels: torch.Tensor) -> torch.Tensor:
        """Indices (into ``self.rows``) of the parameters with a row of ``channels``."""
        hits = torch.zeros(len(self.rows), dtype=torch.long)
        hits.index_add_(0, self._pair_entry, channels[self._pair_channel].long())
        return torch.nonzero(hits).view(-1)

    def _cached(self, key, build):
        """``build()`` remembered for the last few masks (they change rarely: at the partition,
        a period start, when a channel is projected to zero)."""
        cache = self._cache.setdefault("masks", {})
        if key not in cache:
            cache[key] = build()
            while len(cache) > 16:
                del cache[next(iter(cache))]
        return cache[key]

    # ---- per-channel products -------------------------------------------------------------------
    def products(self, d: dict[int, Direction], channels: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per channel ``(<x, x>, <x, d>, <d, d>)`` (float64, on ``self.device``) for the
        parameters x and directions d; only ``channels`` (bool mask) when given, zeros elsewhere.
        Each parameter is read once, as a whole; products of every channel taken with the
        same ``d`` before (a partition step: scores, then the update) are reused."""
        memo = self._cache.get("memo")
        if memo is not None and memo[0] is d:
            return tuple(t if channels is None else
                         torch.where(self._mask(channels), t, torch.zeros_like(t)) for t in memo[1])
        out = self._products(d, channels)
        if channels is None:
            self._cache["memo"] = (d, out)      # until forget(): holds d alive, so ``is`` is safe
        return out

    def forget(self) -> None:
        """Drop what ``products`` remembers of this step's directions."""
        self._cache.pop("memo", None)

    def _products(self, d: dict[int, Direction], channels: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dev = self.device
        xx_r, xu_r, uu_r = torch.zeros(3, self.num_rows, dtype=torch.float32, device=dev)
        mixes: dict[tuple[float, float], list[slice]] = {}
        touched = self._touching(channels)
        prepare = getattr(d, "prepare", None)      # the optimizer's lazy directions: in one go
        if prepare is not None:
            prepare([r.param for r in touched])
        vectors: list[tuple[_Rows, Direction]] = []    # one element per row: all in one go
        for r in touched:
            direction = d.get(id(r.param))
            span = slice(r.offset, r.offset + r.n)
            if direction is not None:
                mixes.setdefault((direction.divisor, direction.decay), []).append(span)
                if r.param.numel() == r.n:
                    vectors.append((r, direction))
                    continue
            u = None if direction is None else _as_rows(direction.tensor, r.dim)
            _row_products(_as_rows(r.param.detach(), r.dim), u, xx_r[span], xu_r[span],
                          uu_r[span])
        if vectors:
            self._vector_products(vectors, xx_r, xu_r, uu_r)
        xx_r, xu_r, uu_r = xx_r.double(), xu_r.double(), uu_r.double()
        for (divisor, w), spans in mixes.items():       # d = s u + w x
            if (divisor, w) == (1.0, 0.0):
                continue
            s = 1 / divisor
            whole = len(mixes) == 1 and len(spans) == len(touched)
            for span in [slice(None)] if whole else spans:
                xx, xu, uu = xx_r[span], xu_r[span], uu_r[span]
                xu_r[span], uu_r[span] = s * xu + w * xx, s * s * uu + 2 * s * w * xu + w * w * xx
        pos, ch = self._on_device("position", self.position), self._on_device("channel", self.channel)
        out = []
        for rows in (xx_r, xu_r, uu_r):
            acc = torch.zeros(self.num_channels, dtype=torch.float64, device=dev)
            acc.index_add_(0, ch, rows.index_select(0, pos))
            if channels is not None:
                acc = torch.where(self._mask(channels), acc, torch.zeros_like(acc))
            out.append(acc)
        return tuple(out)

    def _vector_products(self, vectors: list[tuple[_Rows, Direction]], xx_r: torch.Tensor,
                         xu_r: torch.Tensor, uu_r: torch.Tensor) -> None:
        """``_row_products`` of parameters with one element per row (biases, norm affines), all
        at once: concatenated, three elementwise products copied to their rows."""
        def build() -> torch.Tensor:
            return torch.cat([torch.arange(r.offset, r.offset + r.n) for r, _ in vectors]
                             ).to(self.device)
        rows = self._cached(("vectors", tuple(id(r) for r, _ in vectors), str(self.device)), build)
        x = torch.cat([r.param.detach().reshape(-1) for r, _ in vectors]).float()
        u = torch.cat([d.tensor.reshape(-1) for _, d in vectors]).float()
        xx_r.index_copy_(0, rows, x * x)
        xu_r.index_copy_(0, rows, x * u)
        uu_r.index_copy_(0, rows, u * u)

    def _mask(self, channels: torch.Tensor) -> torch.Tensor:
        return channels.to(self.device, non_blocking=True)

    def saliencies(self, directions: dict[int, Direction]) -> Saliencies:
        xx, xd, dd = self.products(directions)
        xn, dn = xx.sqrt(), dd.sqrt()
        cos = torch.where((xn > 0) & (dn > 0), xd / (xn * dn).clamp_min(1e-30),
                          torch.zeros_like(xd))
        return Saliencies(xn, xn / self._on_device("numel", self.numel.double()), cos, xd)

    # ---- per-row coefficients ---------------------------------------------------------------
    def _touched(self, active: torch.Tensor, scaled: torch.Tensor, frozen: torch.Tensor
                 ) -> tuple[list[_Rows], list[bool]]:
        """The parameters with a row of an ``active`` or ``frozen`` channel, and for each
        whether it has a row of a ``scaled`` channel not frozen (it needs ``A``). Remembered
        per masks (bool per channel, CPU)."""
        def build() -> tuple[list[_Rows], list[bool]]:
            entries = self._entries(active | frozen)
            needs_a = torch.zeros(len(self.rows), dtype=torch.bool)
            needs_a[self._entries(scaled & ~frozen)] = True
            return [self.rows[i] for i in entries.tolist()], needs_a[entries].tolist()
        key = ("touched", active.numpy().tobytes(), scaled.numpy().tobytes(),
               frozen.numpy().tobytes())
        return self._cached(key, build)

    def coefficients(self, a: torch.Tensor | float, b: torch.Tensor | float, active: torch.Tensor,
                     scaled: torch.Tensor, frozen: torch.Tensor, lr_of: dict[int, float]
                     ) -> list[tuple[nn.Parameter, torch.Tensor | None, torch.Tensor]]:
        """``(param, A, B)`` for every parameter with a row of an ``active`` or ``frozen``
        channel (bool per channel, CPU): its rows become ``A * x + B * d`` (``A`` None: 1), each
        shaped to broadcast against the parameter, in its dtype. A row of an active channel c
        takes the update ``x -> a[c] * (x - lr * d) + b[c] * d``, a row of a frozen channel none
        at all (``A = 1``, ``B = 0``), any other row the base step (``1``, ``-lr``; ``lr`` from
        ``lr_of[id(param)]``). ``a[c]`` may differ from 1 only for ``scaled`` channels.

        The rows' ``(A, B)`` are a few vector ops over the fixed (row, channel) pairs, the
        same whatever the masks, on the parameters' device: a step whose masks changed (a
        channel projected to zero) builds no table and waits for no device."""
        touched, needs_a = self._touched(active, scaled, frozen)
        if not touched:
            return []
        lrs = tuple(lr_of[id(r.param)] for r in touched)
        if isinstance(a, float) and isinstance(b, float):   # the same every step: remember it
            key = ("rows", active.numpy().tobytes(), scaled.numpy().tobytes(),
                   frozen.numpy().tobytes(), a, b, lrs)
            return self._cached(key, lambda: self._coefficients(a, b, active, frozen, touched,
                                                                needs_a, lrs))
        return self._coefficients(a, b, active, frozen, touched, needs_a, lrs)

    def _per_row(self, value: torch.Tensor | float, channels: torch.Tensor, default: float
                 ) -> torch.Tensor:
        """Per row of the row vector (float64, on ``self.device``): ``value[c]`` (per channel,
        or one float) for a row of a channel ``c`` in ``channels`` (bool per channel, CPU), else
        ``default``. A few vector ops over the fixed (row, channel) pairs whatever the mask: no
        table to build, no wait for the device; a row of several channels (nested structures)
        takes the one value given to it."""
        dev, f64 = self.device, torch.float64
        pos, ch = self._on_device("position", self.position), self._on_device("channel", self.channel)
        on = self._mask(channels)[ch]
        per_channel = torch.as_tensor(value, dtype=f64, device=dev).expand(self.num_channels)
        zeros = torch.zeros(self.num_rows, dtype=f64, device=dev)
        hit = zeros.clone().index_add_(0, pos, on.to(f64))
        got = zeros.index_add_(0, pos, torch.where(on, per_channel[ch], zeros.new_zeros(())))
        return torch.where(hit > 0, got, zeros.new_full((), default))

    def _coefficients(self, a, b, active, frozen, touched, needs_a, lrs):
        move = active & ~frozen
        rows_a, rows_b = self._per_row(a, move, 1.0), self._per_row(b, move, 0.0)
        if len(set(lrs)) == 1:
            rows_b.sub_(rows_a, alpha=lrs[0])
        else:
            for r, lr in zip(touched, lrs):
                span = slice(r.offset, r.offset + r.n)
                rows_b[span].sub_(rows_a[span], alpha=lr)
        if bool(frozen.any()):
            still = self._per_row(1.0, frozen, 0.0) > 0
            rows_a.masked_fill_(still, 1.0)
            rows_b.masked_fill_(still, 0.0)
        dtypes = {r.param.dtype for r in touched}
        if len(dtypes) == 1:
            rows_a, rows_b = rows_a.to(next(iter(dtypes))), rows_b.to(next(iter(dtypes)))
        out = []
        for r, scale in zip(touched, needs_a):
            shape = r.shape()
            span = slice(r.offset, r.offset + r.n)
            ra, rb = rows_a[span].view(shape), rows_b[span].view(shape)
            if ra.dtype != r.param.dtype:          # parameters of several dtypes
                ra, rb = ra.to(r.param.dtype), rb.to(r.param.dtype)
            out.append((r.param, ra if scale else None, rb))
        return out

    def scale_rows(self, factor: torch.Tensor, channels: torch.Tensor) -> None:
        """Multiply every row of ``channels`` (bool per channel, CPU) by its channel's ``factor``
        (per channel, on ``self.device``), in place: one multiply by a per-row vector per
        parameter with such a row (cheaper on CPU than ``index_fill_`` or an index assignment
        of the rows), the vectors from one pass over the (row, channel) pairs. Used after a
        plain base step: ``factor`` 0 puts the rows of pruned channels back at exactly zero."""
        touched = self._touching(channels)
        if not touched:
            return
        per_row = self._per_row(factor, channels, 1.0)
        dtypes = {r.param.dtype for r in touched}
        if len(dtypes) == 1:
            per_row = per_row.to(next(iter(dtypes)))
        for r in touched:
            x = r.param.detach()
            x.mul_(per_row[r.offset:r.offset + r.n].to(x.dtype).view(r.shape()))

    # ---- reading ----------------------------------------------------------------------------
    def is_zero(self) -> torch.Tensor:
        """Bool per channel (on the CPU): every slice exactly zero."""
        nonzero = torch.zeros(self.num_rows, dtype=torch.long)
        for r in self.rows:
            count = torch.count_nonzero(_as_rows(r.param.detach(), r.dim), dim=1)
            nonzero[r.offset:r.offset + r.n] = count.cpu()
        per_channel = torch.zeros(self.num_channels, dtype=torch.long)
        per_channel.index_add_(0, self.channel, nonzero.index_select(0, self.position))
        return per_channel == 0
