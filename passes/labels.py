"""Channel labels: the abstract value that the channels pass propagates through a graph.

A tensor of shape ``S`` is described by an int64 *label tensor* ``L`` with ``L.dim() == len(S)`` and
``L.size(d)`` either ``S[d]`` or 1 (1 means "the same label all along this dim", so a feature map
``(B, C, H, W)`` from a conv costs ``(1, C, 1, 1)`` labels). ``L[i]`` says which channel the element
at ``i`` belongs to:

* ``>= 0`` an id in the :class:`~otofx.passes.table.ChannelTable` (a channel, or an element of a
  constant such as a free ``nn.Parameter``),
* ``UNTRACKED`` (-1) data that depends on the inputs but is no channel of ours,
* ``CONSTANT`` (-2) input-independent data with no id (python scalars, ``torch.ones(...)``).

Layout ops (view, permute, cat, getitem, ...) are applied to ``L`` itself, so channel-major
flattens, channels-last permutes, head splits and channel shuffles come out exact by construction.

>>> L = torch.arange(4).view(1, 4, 1, 1)               # conv output, 4 channels, 8x8 spatial
>>> view(L, (2, 4, 8, 8), (2, 256)).shape               # flatten: each channel owns 64 columns
torch.Size([1, 256])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

UNTRACKED = -1
CONSTANT = -2


def full(shape: Sequence[int], value: int) -> torch.Tensor:
    """A compact label tensor of rank ``len(shape)`` holding ``value`` everywhere."""
    return torch.full((1,) * len(shape), value, dtype=torch.long)


def materialize(L: torch.Tensor, shape: Sequence[int], dims: Sequence[int]) -> torch.Tensor:
    """Expand the compact dims ``dims`` of ``L`` to their real size (a contiguous copy)."""
    target = list(L.shape)
    for d in dims:
        target[d] = shape[d]
    if list(L.shape) == target:
        return L
    return L.expand(target).contiguous()


def align(L: torch.Tensor, ndim: int) -> torch.Tensor:
    """Prepend broadcast dims so that ``L`` has rank ``ndim`` (numpy broadcasting rules)."""
    return L.reshape((1,) * (ndim - L.dim()) + tuple(L.shape))


def broadcast(labels: Sequence[torch.Tensor], shape: Sequence[int]) -> list[torch.Tensor]:
    """Bring label tensors of broadcastable operands to one compact shape for ``shape``."""
    aligned = [align(L, len(shape)) for L in labels]
    compact = [max(L.size(d) for L in aligned) for d in range(len(shape))]
    return [L.expand(compact) for L in aligned]


def view_groups(old: Sequence[int], new: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of ``old`` dims with runs of ``new`` dims that hold the same elements.

    >>> view_groups((2, 3, 4), (6, 2, 2))
    [([0, 1], [0]), ([2], [1, 2])]
    """
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(old) or j < len(new):
        ga: list[int] = []
        gb: list[int] = []
        pa = pb = 1
        if i < len(old):
            ga.append(i)
            pa *= old[i]
            i += 1
        if j < len(new):
            gb.append(j)
            pb *= new[j]
            j += 1
        while pa != pb:
            if pa < pb and i < len(old):
                ga.append(i)
                pa *= old[i]
                i += 1
            elif pb < pa and j < len(new):
                gb.append(j)
                pb *= new[j]
                j += 1
            else:
                raise ValueError(f"cannot view {tuple(old)} as {tuple(new)}")
        # size-1 dims that follow belong to the run just closed
        while i < len(old) and old[i] == 1 and (j >= len(new) or new[j] != 1):
            ga.append(i)
            i += 1
        while j < len(new) and new[j] == 1 and (i >= len(old) or old[i] != 1):
            gb.append(j)
            j += 1
        groups.append((ga, gb))
    return groups


def view(L: torch.Tensor, old: Sequence[int], new: Sequence[int]) -> torch.Tensor:
    """The labels of ``x.view(new)`` for ``x`` of shape ``old`` labelled ``L``."""
    groups = view_groups(old, new)
    active = [g for g in groups if any(L.size(d) > 1 for d in g[0])]
    L = materialize(L, old, [d for ga, _ in active for d in ga])
    target = [1] * len(new)
    for _, gb in active:
        for d in gb:
            target[d] = new[d]
    return L.reshape(target)


def split_dims(old: Sequence[int], new: Sequence[int]) -> list[tuple[int, list[int]]]:
    """The (old dim, new dims) pairs where a view splits one old dim into several new ones."""
    return [(ga[0], gb) for ga, gb in view_groups(old, new)
            if len(ga) == 1 and len([d for d in gb if new[d] > 1]) > 1]


def along(L: torch.Tensor, dim: int) -> torch.Tensor:
    """The label of each position along ``dim`` when it is the same across the other dims.

    Returns a 1-d tensor of length ``L.size(dim)``; positions whose labels differ across the
    other dims get ``UNTRACKED``.
    """
    moved = L.movedim(dim, 0).reshape(L.size(dim), -1)
    first = moved[:, 0]
    same = (moved == first[:, None]).all(dim=1)
    return torch.where(same, first, torch.full_like(first, UNTRACKED))


def compact(L: torch.Tensor) -> torch.Tensor:
    """``L`` with every dim along which all labels are equal shrunk to size 1."""
    for d in range(L.dim()):
        if L.size(d) > 1 and bool((L == L.narrow(d, 0, 1)).all()):
            L = L.narrow(d, 0, 1)
    return L
