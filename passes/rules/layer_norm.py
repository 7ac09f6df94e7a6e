"""LayerNorm and RMSNorm: statistics across channels, exact with the dense divisor.

A norm over a channel dim mixes every channel into its statistics, but a channel that is exactly
zero adds nothing to the sums; only the divisor counts it. So the channels stay prunable: the
norm's input is a consumer that must read exact zeros there (a ``FOLD_ZERO`` site), its weight and
bias are affine slices of the same channels (zeroed with the producers, so the channel's output is zero
too: ``(0 - mean) / std * 0 + 0``), and input and output are the same channel. Shrink emits a norm
that keeps the dense width as divisor (``passes.dense_norm``). Every spelling: ``nn.LayerNorm``,
``nn.RMSNorm``, ``F.layer_norm``, ``F.rms_norm``, ``aten.layer_norm``, ``aten.native_layer_norm``,
``aten.rms_norm`` and the dense versions themselves (a shrunk graph analysed again).

What pins: statistics over channels along several dims, an affine computed rather than a
parameter, a LayerNorm without a weight (a removed channel would read ``-mean / std``), a norm
module or weight used elsewhere too, and everything when ``prune_hidden=False``.

Before: ``ln = layer_norm(x, [32], w, b)`` with channels 3 and 7 of ``x`` zero (and ``w``, ``b``).
After:  ``ln = dense_layer_norm(x, [30], w', b', dense=32)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.fx import Node

from .. import labels as lb
from ..dense_norm import (
    DenseLayerNorm,
    DenseRMSNorm,
    dense_layer_norm,
    dense_native_layer_norm,
    dense_rms_norm,
    rescaled_rms_norm,
)
from ..registry import RULES, PropagateContext, RewriteContext, aten, module_classes
from ..table import AFFINE, FOLD_ZERO

LAYER, RMS = "layer", "rms"
_LAYER_FUNCTIONS = (F.layer_norm, torch.layer_norm, *aten("layer_norm"), dense_layer_norm)
_RMS_FUNCTIONS = tuple(f for f in (getattr(F, "rms_norm", None), getattr(torch, "rms_norm", None),
                                   *aten("rms_norm"), dense_rms_norm) if f is not None)
_NATIVE = (*aten("native_layer_norm"), dense_native_layer_norm)


@dataclass
class NormCall:
    """One call of a norm: its kind, how many trailing dims it normalises, its affine
    parameters (canonical names, None when absent) and whether they can be sliced."""

    kind: str
    k: int
    weight: str | None
    bias: str | None
    computed: bool         # an affine argument that is not a parameter
    shared: bool           # the module or a weight is used elsewhere too


def _target(node: Node):
    return getattr(node.target, "overloadpacket", node.target)


def _kind(node: Node, module: torch.nn.Module | None = None) -> str:
    if module is not None:
        return RMS if isinstance(module, torch.nn.RMSNorm) else LAYER
    return RMS if node.target in _RMS_FUNCTIONS or _target(node) in _RMS_FUNCTIONS else LAYER


def _normalized_dims(ctx: PropagateContext | RewriteContext, module: torch.nn.Module | None = None) -> int:
    if module is not None:
        return len(module.normalized_shape)
    normalized = ctx.arg(1, "normalized_shape")
    return 1 if isinstance(normalized, int) else len(normalized)


def norm_call(ctx: PropagateContext, node: Node) -> NormCall:
    if node.op == "call_module":
        m = ctx.module(node)
        weight, bias = ctx.module_param("weight"), ctx.module_param("bias")
        shared = ctx.uses(node.target) > 1 or any(ctx.uses(n) > 0 for n in (weight, bias) if n)
        return NormCall(_kind(node, m), len(m.normalized_shape), weight, bias, False, shared)
    kind = _kind(node)
    args = [ctx.arg(2, "weight")] + ([ctx.arg(3, "bias")] if kind == LAYER else [None])
    names = [ctx.param_of(a) for a in args]
    computed = any(a is not None and n is None for a, n in zip(args, names))
    shared = any(n is not None and ctx.uses(n) > 1 for n in names)
    return NormCall(kind, _normalized_dims(ctx), names[0], names[1], computed, shared)


def _why_pinned(ctx: PropagateContext, call: NormCall, channel_dims: list[int]) -> str | None:
    what = "a layer norm" if call.kind == LAYER else "an RMS norm"
    if not ctx.prune_hidden:
        return f"{what} computes statistics across these channels (prune_hidden=False)"
    if len(channel_dims) > 1:
        return f"{what} computes statistics over channels along {len(channel_dims)} dims"
    if call.computed:
        return f"{what} whose weight or bias is computed, not a parameter"
    if call.kind == LAYER and call.weight is None:
        return (f"{what} without a weight: a removed channel would read -mean/std, which is not "
                "zero")
    if call.shared:
        return f"{what} whose module or weight is also used elsewhere"
    return None


def layer_norm_rewrite(ctx: RewriteContext, node: Node) -> None:
    """Give the norm the dense divisor once its input lost channels (see ``passes.dense_norm``)."""
    x = node.args[0]
    old, new = ctx.old_shape(x), ctx.new_shape(x)
    if old == new:
        return
    module = ctx.module(node) if node.op == "call_module" else None
    kind, k, nd = _kind(node, module), _normalized_dims(ctx, module), len(old)
    shape = tuple(new[nd - k:])
    dense = getattr(module, "dense", None) or node.kwargs.get("dense") or math.prod(old[nd - k:])
    if module is not None:
        _replace_module(ctx, node, shape, dense)
        return
    eps = ctx.arg(4 if kind == LAYER else 3, "eps")
    weight = ctx.arg(2, "weight")
    if kind == RMS:
        node.target, node.args = dense_rms_norm, (x, shape, weight, eps)
    else:
        native = node.target in _NATIVE or _target(node) in _NATIVE
        node.target = dense_native_layer_norm if native else dense_layer_norm
        node.args = (x, shape, weight, ctx.arg(3, "bias"), 1e-5 if eps is None else eps)
    node.kwargs = {"dense": dense}


@RULES.register(*module_classes("LayerNorm", "RMSNorm"), DenseLayerNorm, DenseRMSNorm,
                *_LAYER_FUNCTIONS, *_RMS_FUNCTIONS, *_NATIVE, rewrite=layer_norm_rewrite,
                reads_channels=True, name="layer_norm")
def layer_norm(ctx: PropagateContext, node: Node) -> torch.Tensor | tuple:
    x = node.args[0]
    L, shape = ctx.labels(x), ctx.shape(x)
    call = norm_call(ctx, node)
    nd = len(shape)
    channel_dims = [d for d in range(nd - call.k, nd) if L.size(d) > 1]
    out = L.clone()
    if channel_dims:
        why = _why_pinned(ctx, call, channel_dims)
        if why is not None:
            ctx.pin(L, why)
        else:
            out = _dense_channels(ctx, node, call, L, shape, channel_dims[0])
    if node.target in _NATIVE or _target(node) in _NATIVE:
        return (out, ctx.untracked(ctx.out_shape[1]), ctx.untracked(ctx.out_shape[2]))
    return out


def _dense_channels(ctx: PropagateContext, node: Node, call: NormCall, L: torch.Tensor, shape: torch.Size,
                    cdim: int) -> torch.Tensor:
    """The statistics see channel ``cdim``: one channel per position along it (coupled across
    the other dims), consumed as exact zeros, its weight and bias sliced with it."""
    for d in range(len(shape)):
        if d != cdim and L.size(d) > 1:
            L = ctx.couple_along(L, d, "a norm normalises these positions with data that has no "
                                 "channel")
    ids = lb.along(lb.materialize(L, shape, [cdim]), cdim)
    ctx.table.consume(node.name, 0, cdim, ids, FOLD_ZERO, out_dim=cdim)
    wdim = cdim - (len(shape) - call.k)
    for name in (call.weight, call.bias):
        if name is not None:
            ctx.table.bind_slices(name, wdim, ids, AFFINE)
    return L.clone()


def _replace_module(ctx: RewriteContext, node: Node, shape: tuple[int, ...], dense: int) -> None:
    m = ctx.module(node)
    if isinstance(m, (DenseLayerNorm, DenseRMSNorm)):
        m.normalized_shape = shape
        return
    if isinstance(m, torch.nn.RMSNorm) and m.weight is not None and m.eps is not None:
        rescaled_rms_norm(m, shape, dense)     # a stock RMSNorm stays one
        return
    affine = m.weight is not None
    if isinstance(m, torch.nn.RMSNorm):
        new = DenseRMSNorm(shape, dense, m.eps, affine)
    else:
        new = DenseLayerNorm(shape, dense, m.eps, affine, m.bias is not None)
    new.weight = m.weight
    if not isinstance(m, torch.nn.RMSNorm):
        new.bias = m.bias
    new.train(m.training)
    path, _, attr = node.target.rpartition(".")
    setattr(ctx.gm.get_submodule(path), attr, new)
