"""Layout ops: the same op is applied to the label tensor, so channels land where the data lands.

Flatten after conv (``c*H*W`` blocks), channels-last permutes, head splits, channel shuffles and
cat/split segments all follow from that. Literal arguments that count channels (``view`` sizes,
``split`` sizes, slice bounds) are rewritten by shrink from the new sizes.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.fx import Node

from .. import labels as lb
from ..common import SizeDep
from ..registry import RULES, PropagateContext, RewriteContext, aten, functions, module_classes
from .sizes import shape_of

# ---- view family: order-preserving reshapes ---------------------------------------------------

VIEWS = ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
         "reshape_as", "atleast_1d", "atleast_2d", "atleast_3d", "ravel")


def _shape_args(node: Node) -> list | None:
    """The size arguments of view/reshape/expand as a list (literal ints or nodes)."""
    if node.op == "call_module":
        return None
    rest = list(node.args[1:])
    if "shape" in node.kwargs or "size" in node.kwargs:
        rest = [node.kwargs.get("shape", node.kwargs.get("size"))]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        return list(rest[0])
    return rest


def _rectangular(ctx: PropagateContext, node: Node, L: torch.Tensor, old, new) -> torch.Tensor:
    """A view that splits one channel dim into several (heads x head_dim, groups x channels)
    keeps removal rectangular: channels are unified along all but one of the new dims.

    The kept dim is the first whose size argument is computed at run time (it adapts to the new
    count, e.g. ``c // groups`` in a channel shuffle), else the one before the innermost: the
    heads of ``(heads, head_dim)`` and of a fused ``(3, heads, head_dim)`` (whole heads; q, k and
    v of a head are coupled, as attention couples them anyway)."""
    args = _shape_args(node) if node.target in ("view", "reshape", torch.reshape) else None
    for _, dims in lb.split_dims(old, new):
        varying = [d for d in dims if L.size(d) > 1]
        if len(varying) < 2:
            continue
        keep = varying[-1] if ctx.attention_unit == "head_dim" else varying[-2]
        if args is not None and len(args) == len(new):
            dynamic = [d for d in varying if isinstance(args[d], Node)]
            if dynamic:
                keep = dynamic[0]
        for d in varying:
            if d != keep:
                L = ctx.couple_along(L, d, "a reshape splits these channels beside data with no "
                                     "channel")
    return L


def _view_rewrite(ctx: RewriteContext, node: Node) -> None:
    new = ctx.new_shape(node)
    if node.op == "call_module":
        module = ctx.module(node)
        if hasattr(module, "unflattened_size"):
            d = module.dim % len(new)
            module.unflattened_size = tuple(new[d: d + len(module.unflattened_size)])
        return
    if node.target in ("unflatten", torch.unflatten):
        dim = node.args[1] % len(new)
        sizes = node.args[2]
        fixed = [new[dim + i] if isinstance(s, int) and s != -1 else s for i, s in enumerate(sizes)]
        node.args = (node.args[0], node.args[1], type(sizes)(fixed))
        return
    _rewrite_sizes(ctx, node, new)


_SIZE_LIST_TARGETS = (torch.reshape, torch.broadcast_to, *aten("view", "default"),
                      *aten("reshape", "default"), *aten("_unsafe_view", "default"),
                      *aten("expand", "default"))


def _counts_channels(ctx: RewriteContext, size: Node) -> bool:
    """Whether a computed size counts channels (``x.size(1)``, ``c // groups``): its value in the
    smaller graph may differ from the size this dim gets, so the literal replaces it."""
    dep = ctx.labels(size)
    return isinstance(dep, SizeDep) and dep.ids.numel() > 0


def _rewrite_sizes(ctx: RewriteContext, node: Node, new) -> None:
    """Put the new sizes into a view/reshape/expand call: literal ints, and computed sizes of
    dims whose size changed (a channel count read off another tensor, e.g. ``x.size(-1)`` of a
    residual stream reused as the width of the heads)."""
    if node.target not in ("view", "reshape", "expand", "broadcast_to", *_SIZE_LIST_TARGETS):
        return
    args = _shape_args(node)
    if args is None or len(args) != len(new):
        return
    fixed = [new[i] if (isinstance(a, int) and a != -1) or (isinstance(a, Node) and _counts_channels(ctx, a))
             else a for i, a in enumerate(args)]
    kwargs = {k: v for k, v in node.kwargs.items() if k not in ("shape", "size")}
    if node.target in _SIZE_LIST_TARGETS:
        node.args = (node.args[0], list(fixed), *node.args[2:])
    else:
        node.args = (node.args[0], *fixed)
    node.kwargs = kwargs


@RULES.register(*functions(*VIEWS), *module_classes("Flatten", "Unflatten"),
                *[k for n in ("view", "_unsafe_view", "reshape", "squeeze", "unsqueeze", "flatten",
                              "unflatten") for k in aten(n)],
                rewrite=_view_rewrite, accepts_sizes=True, carries_soft=True, name="view")
def view(ctx: PropagateContext, node: Node) -> torch.Tensor:
    x = node.args[0]
    old, new = ctx.shape(x), ctx.out_shape
    L = lb.view(ctx.labels(x), old, new)
    return _rectangular(ctx, node, L, old, new).clone()

# ---- permutes -------------------------------------------------------------------------------


def _dims_list(args) -> list[int]:
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        return list(args[0])
    return list(args)


@RULES.register(*functions("permute"), *aten("permute", "default"), carries_soft=True, name="permute")
def permute(ctx: PropagateContext, node: Node) -> torch.Tensor:
    dims = _dims_list(node.args[1:]) if "dims" not in node.kwargs else list(node.kwargs["dims"])
    return ctx.labels(node.args[0]).permute(dims)


@RULES.register(*functions("transpose", "swapaxes", "swapdims"), *aten("transpose", "int"),
                carries_soft=True, name="transpose")
def transpose(ctx: PropagateContext, node: Node) -> torch.Tensor:
    d0, d1 = ctx.arg(1, "dim0"), ctx.arg(2, "dim1")
    return ctx.labels(node.args[0]).transpose(d0, d1)


@RULES.register(*functions("t"), *aten("t", "default"), carries_soft=True, name="t")
def t(ctx: PropagateContext, node: Node) -> torch.Tensor:
    return ctx.labels(node.args[0]).t()


@RULES.register(*functions("movedim", "moveaxis"), name="movedim")
def movedim(ctx: PropagateContext, node: Node) -> torch.Tensor:
    return ctx.labels(node.args[0]).movedim(ctx.arg(1, "source"), ctx.arg(2, "destination"))


# ---- broadcasting copies ----------------------------------------------------------------------


def _expand_rewrite(ctx: RewriteContext, node: Node) -> None:
    _rewrite_sizes(ctx, node, ctx.new_shape(node))


@RULES.register(*functions("expand", "expand_as", "broadcast_to"), *aten("expand", "default"),
                rewrite=_expand_rewrite, accepts_sizes=True, carries_soft=True, name="expand")
def expand(ctx: PropagateContext, node: Node) -> torch.Tensor:
    L = lb.align(ctx.labels(node.args[0]), len(ctx.out_shape))
    return L.clone()


@RULES.register(*functions("repeat", "tile"), accepts_sizes=True, name="repeat")
def repeat(ctx: PropagateContext, node: Node) -> torch.Tensor:
    reps = _dims_list(node.args[1:])
    L = lb.align(ctx.labels(node.args[0]), len(ctx.out_shape))
    reps = [1] * (L.dim() - len(reps)) + list(reps)
    return L.repeat([r if L.size(d) > 1 else 1 for d, r in enumerate(reps)])


# ---- cat / stack / split ---------------------------------------------------------------------


def _cat_labels(ctx: PropagateContext, tensors, dim, out_shape):
    Ls, shapes = [], []
    for t in tensors:
        L, shape = ctx.labels(t), ctx.shape(t)
        Ls.append(lb.materialize(L, shape, [dim]))
        shapes.append(shape)
    compact = [max(L.size(d) for L in Ls) if d != dim else None for d in range(len(out_shape))]
    Ls = [L.expand([L.size(d) if d == dim else compact[d] for d in range(L.dim())]) for L in Ls]
    return lb.compact(torch.cat(Ls, dim=dim)).clone()


@RULES.register(*functions("cat", "concat", "concatenate"), *aten("cat", "default"), name="cat")
def cat(ctx: PropagateContext, node: Node) -> torch.Tensor:
    """Along a channel dim, segments keep their channels side by side. Along any other dim
    (tokens: a class token before the patches) the segments share the other dims' channels,
    which are unified like operands of a join, so a channel leaves every segment at once."""
    tensors = ctx.arg(0, "tensors")
    out = ctx.out_shape
    dim = ctx.arg(1, "dim", 0) % len(out)
    Ls = [lb.align(ctx.labels(t), len(out)) for t in tensors]
    if all(L.size(dim) == 1 for L in Ls) and any(bool((L >= 0).any()) for L in Ls):
        ops = [(L, tuple(ctx.shape(t))) for L, t in zip(Ls, tensors)]
        return ctx.join(ops, out, [False] * len(ops))
    return _cat_labels(ctx, tensors, dim, out)


@RULES.register(*functions("stack"), *aten("stack", "default"), name="stack")
def stack(ctx: PropagateContext, node: Node) -> torch.Tensor:
    tensors = ctx.arg(0, "tensors")
    dim = ctx.arg(1, "dim", 0) % len(ctx.out_shape)
    Ls = [lb.align(ctx.labels(t), len(ctx.out_shape) - 1).unsqueeze(dim) for t in tensors]
    compact = [max(L.size(d) for L in Ls) for d in range(len(ctx.out_shape))]
    compact[dim] = 1
    return torch.cat([L.expand(compact) for L in Ls], dim=dim)


def _split_rewrite(ctx: RewriteContext, node: Node) -> None:
    if node.target in ("tensor_split", torch.tensor_split):
        if any(ctx.changed(x) for x in [node.args[0]]):
            raise NotImplementedError("tensor_split on a pruned dim")
        return
    shape = ctx.old_shape(node.args[0])
    dim = ctx.arg(2, "dim", 0) % len(shape)
    sizes = [int(s[dim]) for s in ctx.new_shape(node)]
    if node.op == "call_method":
        node.target = "split"
        node.args = (node.args[0], sizes, dim)
    else:
        node.target = torch.split
        node.args = (node.args[0], sizes, dim)
    node.kwargs = {}


@RULES.register(*functions("split", "chunk", "tensor_split", "split_with_sizes"),
                *aten("split", "Tensor"), *aten("split_with_sizes", "default"), *aten("chunk", "default"),
                rewrite=_split_rewrite, accepts_sizes=True, name="split")
def split(ctx: PropagateContext, node: Node) -> tuple:
    x = node.args[0]
    shape = ctx.shape(x)
    dim = ctx.arg(2, "dim", 0) % len(shape)
    L = lb.materialize(ctx.labels(x), shape, [dim])
    sizes = [s[dim] for s in ctx.out_shape]
    if L.size(dim) == 1:
        return tuple(L.clone() for _ in sizes)
    return tuple(p.clone() for p in torch.split(L, sizes, dim=dim))


@RULES.register(*functions("unbind"), *aten("unbind", "int"), name="unbind")
def unbind(ctx: PropagateContext, node: Node) -> tuple:
    x = node.args[0]
    shape = ctx.shape(x)
    dim = ctx.arg(1, "dim", 0) % len(shape)
    L = ctx.labels(x)
    if L.size(dim) == 1:
        return tuple(L.squeeze(dim).clone() for _ in ctx.out_shape)
    ctx.pin(L, "unbind along a channel dim")
    return tuple(p.clone() for p in torch.unbind(L, dim=dim))


# ---- indexing ---------------------------------------------------------------------------------


def _index_items(index, ndim):
    """Normalise a getitem index into a list of items, Ellipsis expanded to full slices."""
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    out = []
    for i in items:
        if i is Ellipsis:
            out += [slice(None)] * (ndim - consumed)
        else:
            out.append(i)
    return out


def _literal(v) -> bool:
    return v is None or isinstance(v, int)


def _kept_bounds(kept: torch.Tensor, start, stop) -> tuple[int, int]:
    """``start:stop`` along a dim that keeps the positions ``kept``, as bounds in the smaller dim."""
    s, e, _ = slice(start, stop).indices(kept.numel())
    before = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), kept.long()]), 0)
    return int(before[s]), int(before[max(e, s)])


def _getitem_rewrite(ctx: RewriteContext, node: Node) -> None:
    source, index = node.args[0], node.args[1]
    if not isinstance(ctx.old_shape(source), torch.Size):
        return
    items = _index_items(index, len(ctx.old_shape(source)))
    fixed, d = [], 0
    for item in items:
        if item is None:
            fixed.append(item)
            continue
        kept = ctx.kept_mask(source, d)
        if kept is not None and not bool(kept.all()):
            if isinstance(item, slice):
                item = slice(*_kept_bounds(kept, item.start, item.stop))
            elif isinstance(item, int):
                item = _kept_bounds(kept, item % kept.numel(), None)[0]
        fixed.append(item)
        d += 1
    node.args = (source, tuple(fixed) if isinstance(index, tuple) else fixed[0])


@RULES.register(operator.getitem, rewrite=_getitem_rewrite, accepts_sizes=True, name="getitem")
def getitem(ctx: PropagateContext, node: Node) -> Any:
    source, index = node.args[0], node.args[1]
    L = ctx.labels(source)
    if isinstance(L, (list, tuple)):
        return L[index]
    if not isinstance(L, torch.Tensor):
        if isinstance(L, SizeDep):
            return L
        return None
    shape = ctx.shape(source)
    items = _index_items(index, len(shape))
    d = 0
    for item in items:
        if item is None:
            L = L.unsqueeze(d)
            d += 1
        elif isinstance(item, slice):
            if L.size(d) > 1:
                if not all(_literal(v) for v in (item.start, item.stop, item.step)) or \
                        item.step not in (None, 1):
                    ctx.pin(L, "a slice across channels with a computed bound or a step")
                    return ctx.untracked()
                L = L[(slice(None),) * d + (item,)]
            d += 1
        elif isinstance(item, int):
            if L.size(d) > 1:
                ctx.pin(L.select(d, item), "a channel picked by index")
                L = L.select(d, item)
            else:
                L = L.select(d, 0)
        else:
            return ctx.unknown("indexing with a tensor or a computed index")
    out = ctx.out_shape
    if L.dim() != len(out) or any(L.size(i) not in (1, out[i]) for i in range(L.dim())):
        return ctx.unknown("indexing whose result shape could not be followed")
    return L.clone()


def _aten_slice_rewrite(ctx: RewriteContext, node: Node) -> None:
    x = node.args[0]
    shape = ctx.old_shape(x)
    dim = ctx.arg(1, "dim", 0) % len(shape)
    kept = ctx.kept_mask(x, dim)
    if kept is None or bool(kept.all()):
        return
    start, end = ctx.arg(2, "start"), ctx.arg(3, "end")
    args = list(node.args) + [None] * (4 - len(node.args))
    args[1] = dim
    args[2], args[3] = _kept_bounds(kept, start, end)
    node.args = tuple(args)


@RULES.register(*aten("slice", "Tensor"), rewrite=_aten_slice_rewrite, carries_soft=False, name="slice")
def aten_slice(ctx: PropagateContext, node: Node) -> torch.Tensor:
    """``aten.slice(x, dim, start, end, step)``: ``x[..., start:end:step]`` of export graphs."""
    x = node.args[0]
    L, shape = ctx.labels(x), ctx.shape(x)
    dim = ctx.arg(1, "dim", 0) % len(shape)
    start, end, step = ctx.arg(2, "start"), ctx.arg(3, "end"), ctx.arg(4, "step", 1)
    if L.size(dim) == 1:
        return L.clone()
    if not all(_literal(v) for v in (start, end)) or step != 1:
        ctx.pin(L, "a slice across channels with a computed bound or a step")
        return ctx.untracked()
    item = slice(start, end if end is None or end < shape[dim] else None)
    return L[(slice(None),) * dim + (item,)].clone()


@RULES.register(*functions("narrow"), *aten("narrow"), name="narrow")
def narrow(ctx: PropagateContext, node: Node) -> torch.Tensor:
    L = ctx.labels(node.args[0])
    dim, start, length = ctx.arg(1, "dim"), ctx.arg(2, "start"), ctx.arg(3, "length")
    dim %= L.dim()
    if L.size(dim) > 1:
        ctx.pin(L, "narrow across channels")
        return L.narrow(dim, start, length).clone()
    return L.clone()


@RULES.register(*functions("select"), *aten("select", "int"), name="select")
def select(ctx: PropagateContext, node: Node) -> torch.Tensor:
    L = ctx.labels(node.args[0])
    dim, index = ctx.arg(1, "dim") % L.dim(), ctx.arg(2, "index")
    if L.size(dim) > 1:
        ctx.pin(L, "a channel picked by index")
        return L.select(dim, index).clone()
    return L.select(dim, 0).clone()


# ---- reorderings applied to the materialised labels ---------------------------------------------


def _apply_to_labels(ctx: PropagateContext, node: Node, fn: Callable) -> torch.Tensor:
    x = node.args[0]
    L = lb.materialize(ctx.labels(x), ctx.shape(x), range(len(ctx.shape(x))))
    return fn(L)


@RULES.register(*functions("flip", "fliplr", "flipud"), name="flip")
def flip(ctx: PropagateContext, node: Node) -> torch.Tensor:
    dims = _dims_list(node.args[1:]) if len(node.args) > 1 else list(node.kwargs.get("dims", []))
    L = ctx.labels(node.args[0])
    if node.target in ("fliplr", torch.fliplr):
        dims = [1]
    elif node.target in ("flipud", torch.flipud):
        dims = [0]
    L = lb.materialize(L, ctx.shape(node.args[0]), [d for d in dims if L.size(d) > 1])
    return L.flip(dims)


@RULES.register(F.pixel_shuffle, F.pixel_unshuffle, torch.pixel_shuffle, torch.pixel_unshuffle,
                *module_classes("PixelShuffle", "PixelUnshuffle"), name="pixel_shuffle")
def pixel_shuffle(ctx: PropagateContext, node: Node) -> torch.Tensor:
    if node.op == "call_module":
        m = ctx.module(node)
        factor = getattr(m, "upscale_factor", getattr(m, "downscale_factor", None))
        fn = F.pixel_shuffle if hasattr(m, "upscale_factor") else F.pixel_unshuffle
    else:
        fn, factor = node.target, ctx.arg(1, "upscale_factor", ctx.arg(1, "downscale_factor"))
    # sub-pixel channels land on spatial positions: their consumers pin them
    return _apply_to_labels(ctx, node, lambda full: fn(full, factor))


@RULES.register(*module_classes("ChannelShuffle"), getattr(F, "channel_shuffle", None),
                getattr(torch, "channel_shuffle", None), name="channel_shuffle")
def channel_shuffle(ctx: PropagateContext, node: Node) -> torch.Tensor:
    """groups x (C/groups) transposed: channel j of every group is removed together."""
    x = node.args[0]
    groups = ctx.module(node).groups if node.op == "call_module" else ctx.arg(1, "groups")
    shape = ctx.shape(x)
    L = lb.materialize(ctx.labels(x), shape, [1])
    blocks = L.reshape(L.size(0), groups, -1, *L.shape[2:])
    ctx.couple_along(blocks, 1, "a channel shuffle mixes these channels with data that has no "
                     "channel")
    return blocks.transpose(1, 2).reshape(L.shape).clone()


@RULES.register(builtins.getattr, accepts_sizes=True, name="getattr")
def tensor_attribute(ctx: PropagateContext, node: Node) -> Any:
    """``x.shape``, ``x.T``, ``x.mT``, ``x.data``, ``x.dtype`` reached through getattr."""
    x, attr = node.args[0], node.args[1]
    L = ctx.labels(x)
    if not isinstance(L, torch.Tensor):
        return None
    if attr == "shape":
        return shape_of(ctx, x)
    if attr == "T":
        return L.permute(*reversed(range(L.dim())))
    if attr == "mT":
        return L.transpose(-2, -1)
    if attr == "data":
        return L.clone()
    if attr in ("dtype", "device", "is_cuda", "ndim", "requires_grad", "layout"):
        return None
    return ctx.unknown(f"tensor attribute .{attr}")

