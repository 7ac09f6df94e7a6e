"""Reductions: sum, mean, max, ... over some dims.

Over dims that carry no channel they keep the channel labels (global pooling as ``x.mean((2, 3))``).
A ``sum`` across channels consumes them: a removed channel must be exactly zero there. Other
reductions across channels (mean divides by the count, max may pick a zero) pin them.
"""

from __future__ import annotations

import torch

from .. import labels as lb
from ..registry import RULES, aten, functions

REDUCTIONS = ("sum", "nansum", "mean", "nanmean", "amax", "amin", "max", "min", "prod", "std",
              "var", "norm", "logsumexp", "all", "any", "argmax", "argmin", "median",
              "count_nonzero")


def _dims(ctx, node, ndim: int) -> list[int]:
    dim = ctx.arg(1, "dim")
    if node.target in ("norm", torch.norm):
        dim = ctx.arg(2, "dim")
    if dim is None:
        return list(range(ndim))
    if isinstance(dim, int):
        return [dim % ndim]
    return [d % ndim for d in dim]


@RULES.register(*functions(*REDUCTIONS), *[k for n in REDUCTIONS for k in aten(n)], reads_channels=True,
                name="reduce")
def reduce(ctx, node):
    x = node.args[0]
    L, shape = ctx.labels(x), ctx.shape(x)
    out = ctx.out_shape
    if isinstance(out, tuple) and not isinstance(out, torch.Size):
        values_shape = out[0]
    else:
        values_shape = out
    if not isinstance(values_shape, torch.Size):
        return ctx.unknown("a reduction with an unexpected result")
    if node.target in ("max", "min", torch.max, torch.min) and ctx.is_tensor(ctx.arg(1, "other")):
        return ctx.combine([x, ctx.arg(1, "other")])
    dims = _dims(ctx, node, len(shape))
    across = [d for d in dims if L.size(d) > 1]
    name = getattr(getattr(node.target, "overloadpacket", node.target), "__name__", node.target)
    if across:
        if name in ("sum", "nansum") and len(across) == 1 and all(
                L.size(d) == 1 for d in range(L.dim()) if d not in across):
            ids = lb.along(L, across[0])
            ctx.table.consume(node.name, 0, across[0], ids, "zero", out_dim=-1)
        else:
            ctx.pin(L, f"{name}() across channels")
        result = lb.full(values_shape, lb.UNTRACKED)
    elif len(values_shape) == L.dim():        # keepdim: the reduced dims are size 1 already
        result = L.clone()
    else:
        result = L.reshape([L.size(i) for i in range(L.dim()) if i not in dims]).clone()
    if values_shape is not out:
        return (result, ctx.untracked(out[1]))
    return result
