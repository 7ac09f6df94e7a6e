"""Reductions: sum, mean, max, ... over some dims.

Over dims that carry no channel they keep the channel labels (global pooling as ``x.mean((2, 3))``).
A ``sum`` across channels consumes them: a removed channel must be exactly zero there. So does a
``mean`` (a hand-written RMSNorm's ``x.pow(2).mean(-1, keepdim=True)``): shrink turns it into the
sum over the kept channels divided by the dense count (``passes.dense_norm.dense_mean``), unless
``prune_hidden=False``. Other reductions across channels (max may pick a zero, var centres on the
mean) pin them.
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node

from .. import labels as lb
from ..dense_norm import dense_mean
from ..registry import RULES, PropagateContext, RewriteContext, aten, functions
from ..table import FOLD_ZERO

REDUCTIONS = ("sum", "nansum", "mean", "nanmean", "amax", "amin", "max", "min", "prod", "std",
              "var", "norm", "logsumexp", "all", "any", "argmax", "argmin", "median",
              "count_nonzero")


def _dims(ctx: PropagateContext, node: Node, ndim: int) -> list[int]:
    dim = ctx.arg(1, "dim")
    if node.target in ("norm", torch.norm):
        dim = ctx.arg(2, "dim")
    if dim is None:
        return list(range(ndim))
    if isinstance(dim, int):
        return [dim % ndim]
    return [d % ndim for d in dim]


def _name(node: Node) -> str:
    if node.target is dense_mean:
        return "mean"
    return getattr(getattr(node.target, "overloadpacket", node.target), "__name__", node.target)


def reduce_rewrite(ctx: RewriteContext, node: Node) -> None:
    """A ``mean`` whose reduced dims lost (zero) channels: the sum over the kept ones divided by
    the dense count of elements it reduced."""
    if _name(node) != "mean":
        return
    x = node.args[0]
    old, new = ctx.old_shape(x), ctx.new_shape(x)
    dims = sorted({d % len(old) for d in _mean_dims(ctx, len(old))})
    if all(old[d] == new[d] for d in dims):
        return
    keepdim = ctx.arg(2, "keepdim", False)
    dense = node.kwargs.get("dense") if node.target is dense_mean else math.prod(old[d] for d in dims)
    dtype = ctx.arg(3, "dtype") if node.target is dense_mean else node.kwargs.get("dtype")
    node.op, node.target = "call_function", dense_mean
    node.args, node.kwargs = (x, dims, keepdim), {"dense": dense, "dtype": dtype}


def _mean_dims(ctx: RewriteContext, ndim: int) -> list[int]:
    dim = ctx.arg(1, "dim")
    if dim is None:
        return list(range(ndim))
    return [dim] if isinstance(dim, int) else list(dim)


@RULES.register(*functions(*REDUCTIONS), *[k for n in REDUCTIONS for k in aten(n)], dense_mean,
                rewrite=reduce_rewrite, reads_channels=True, name="reduce")
def reduce(ctx: PropagateContext, node: Node) -> torch.Tensor | tuple:
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
    name = _name(node)
    zero_invariant = ("sum", "nansum", "mean") if ctx.prune_hidden else ("sum", "nansum")
    if across:
        if name in zero_invariant and len(across) == 1 and all(
                L.size(d) == 1 for d in range(L.dim()) if d not in across):
            ids = lb.along(L, across[0])
            ctx.table.consume(node.name, 0, across[0], ids, FOLD_ZERO, out_dim=-1)
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
