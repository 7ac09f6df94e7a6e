"""Grouped views: every prunable channel's parameter slices as index tensors, built once.

Channel ``c`` (global index over all prunable groups) owns rows of several parameters (a conv's
weight rows, its bias, the BatchNorm affine after it). For each (parameter, dim) the rows of all
channels are merged into one index tensor, so a per-channel quantity (squared norm, inner product
with the update direction) costs one ``index_select`` and one ``index_add_`` per parameter, not a
Python loop over channels or groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from otofx.passes.groups import PruningGroup
from otofx.passes.table import AFFINE, PRODUCER


@dataclass
class Saliencies:
    """Per-channel quantities the optimizers score channels with."""

    magnitude: torch.Tensor       # ||x_c||
    mean_magnitude: torch.Tensor  # ||x_c|| / |c|
    cosine: torch.Tensor          # cos(x_c, d_c)
    inner: torch.Tensor           # <x_c, d_c>

    def importance(self) -> torch.Tensor:
        """HESSO's five equally weighted, normalised saliencies (higher: more important)."""
        from otofx.partition import normalize
        terms = (self.magnitude, self.mean_magnitude, self.cosine + 1, self.inner.abs(),
                 0.5 * self.inner ** 2)
        return sum(normalize(t) for t in terms)


@dataclass
class _Rows:
    param: nn.Parameter
    name: str
    dim: int
    index: torch.Tensor      # rows along dim
    channel: torch.Tensor    # global channel of each row


def _rows_of(t: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """Slices ``index`` of ``t`` along ``dim``, one per row of a 2-d copy."""
    return t.detach().movedim(dim, 0).index_select(0, index.to(t.device)).reshape(index.numel(), -1)


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
        self.rows = [
            _Rows(params[name], name, dim, torch.cat([i for i, _ in parts]),
                  torch.cat([c for _, c in parts]))
            for (name, dim), parts in merged.items()
        ]
        counts = torch.zeros(self.num_channels)
        for r in self.rows:
            per_row = r.param.numel() // r.param.shape[r.dim]
            counts.index_add_(0, r.channel, torch.full((r.index.numel(),), float(per_row)))
        self.numel = counts           # elements per channel: |g| in the algorithms

    def _plan(self, channels: torch.Tensor | None) -> list[tuple[_Rows, torch.Tensor, torch.Tensor]]:
        """(rows, index, channel) restricted to ``channels`` (bool per channel; None: all),
        cached for the last few masks: the redundant or pruned set changes rarely."""
        if channels is None:
            return [(r, r.index, r.channel) for r in self.rows]
        cache = self.__dict__.setdefault("_plans", [])
        for mask, plan in cache:
            if torch.equal(mask, channels):
                return plan
        plan = []
        for r in self.rows:
            keep = channels[r.channel]
            if bool(keep.any()):
                plan.append((r, r.index[keep], r.channel[keep]))
        cache.insert(0, (channels.clone(), plan))
        del cache[4:]
        return plan

    def products(self, d: dict[int, torch.Tensor], channels: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per channel ``(<x, x>, <x, d>, <d, d>)`` for the parameters x and directions d, each
        slice read once; only ``channels`` (bool mask) when given, zeros elsewhere."""
        xx = torch.zeros(self.num_channels, dtype=torch.float64)
        xd, dd = torch.zeros_like(xx), torch.zeros_like(xx)
        for r, index, channel in self._plan(channels):
            x = _rows_of(r.param, r.dim, index)
            xx.index_add_(0, channel, (x * x).sum(dim=1).double().cpu())
            other = d.get(id(r.param))
            if other is not None:
                y = _rows_of(other, r.dim, index)
                xd.index_add_(0, channel, (x * y).sum(dim=1).double().cpu())
                dd.index_add_(0, channel, (y * y).sum(dim=1).double().cpu())
        return xx, xd, dd

    def saliencies(self, directions: dict[int, torch.Tensor]) -> Saliencies:
        xx, xd, dd = self.products(directions)
        xn, dn = xx.sqrt(), dd.sqrt()
        cos = torch.where((xn > 0) & (dn > 0), xd / (xn * dn).clamp_min(1e-30),
                          torch.zeros_like(xd))
        return Saliencies(xn, xn / self.numel.double(), cos, xd)

    @torch.no_grad()
    def scale(self, factor: torch.Tensor, channels: torch.Tensor | None = None) -> None:
        """Multiply every slice of channel c by ``factor[c]`` (only ``channels`` if given)."""
        for r in self.rows:
            index, channel = r.index, r.channel
            if channels is not None:
                keep = channels[channel]
                index, channel = index[keep], channel[keep]
                if index.numel() == 0:
                    continue
            view = r.param.movedim(r.dim, 0)
            f = factor[channel].to(view.dtype).to(view.device)
            view[index] = view[index] * f.view([-1] + [1] * (view.dim() - 1))

    @torch.no_grad()
    def combine(self, alpha: torch.Tensor, beta: torch.Tensor, others: dict[int, torch.Tensor],
                channels: torch.Tensor) -> None:
        """Slice of channel c becomes ``alpha[c] * slice + beta[c] * other_slice`` for the
        channels where ``channels`` is True (``others`` maps ``id(param)`` to a tensor)."""
        for r, index, channel in self._plan(channels):
            other = others.get(id(r.param))
            if other is None:
                continue
            index = index.to(r.param.device)
            view, oview = r.param.movedim(r.dim, 0), other.movedim(r.dim, 0)
            shape = [-1] + [1] * (view.dim() - 1)
            a = alpha[channel].to(view.dtype).to(view.device).view(shape)
            b = beta[channel].to(view.dtype).to(view.device).view(shape)
            view[index] = a * view[index] + b * oview[index]

    @torch.no_grad()
    def zero(self, channels: torch.Tensor) -> None:
        """Set every slice of the channels where ``channels`` (bool, per channel) is True to 0.

        The rows to zero are worked out once per distinct ``channels`` and reused, so holding
        pruned channels at zero costs one ``index_fill_`` per parameter and step."""
        cached = getattr(self, "_zero_mask", None)
        if cached is None or not torch.equal(cached, channels):
            self._zero_mask = channels.clone()
            self._zero_plan = [(r.param, r.dim, r.index[channels[r.channel]].to(r.param.device))
                               for r in self.rows]
            self._zero_plan = [plan for plan in self._zero_plan if plan[2].numel()]
        for param, dim, index in self._zero_plan:
            param.index_fill_(dim, index, 0.0)

    def is_zero(self) -> torch.Tensor:
        """Bool per channel: every slice exactly zero."""
        nonzero = torch.zeros(self.num_channels, dtype=torch.bool)
        for r in self.rows:
            x = _rows_of(r.param, r.dim, r.index)
            nz = (x != 0).any(dim=1).cpu()
            nonzero.index_put_((r.channel[nz],), torch.ones(int(nz.sum()), dtype=torch.bool))
        return ~nonzero
