"""Spatial ops: pooling, adaptive pooling, interpolation and padding of the trailing dims.

They act on each channel's spatial map alone, so labels pass through unchanged, provided no
channel is spread over the spatial dims they mix (then those channels are pinned).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch.fx import Node

from ..registry import RULES, PropagateContext, aten, module_classes

_POOLS = ("MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "LPPool")
POOL_MODULES = module_classes(*[f"{p}{d}d" for p in _POOLS for d in (1, 2, 3)])
PAD_MODULES = module_classes(*[f"{p}{d}d" for p in ("ZeroPad", "ConstantPad", "ReflectionPad",
                                                     "ReplicationPad", "CircularPad")
                               for d in (1, 2, 3)])
UPSAMPLE_MODULES = module_classes("Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d")
POOL_FNS = [getattr(F, f"{p}{d}d") for p in ("max_pool", "avg_pool", "adaptive_avg_pool",
                                              "adaptive_max_pool", "lp_pool") for d in (1, 2, 3)
            if hasattr(F, f"{p}{d}d")]
POOL_FNS += [getattr(torch, f"{p}{d}d") for p in ("max_pool", "avg_pool", "adaptive_avg_pool")
             for d in (1, 2, 3) if hasattr(torch, f"{p}{d}d")]
UPSAMPLE_FNS = [F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear]


def _spatial_rank(ctx: PropagateContext, node: Node) -> int:
    if node.op == "call_module":
        m = ctx.module(node)
        if hasattr(m, "padding") and type(m) in PAD_MODULES:
            return len(m.padding) // 2
        found = re.search(r"(\d)d$", type(m).__name__)
        if found:
            return int(found.group(1))
        return len(ctx.out_shape) - 2
    name = getattr(getattr(node.target, "overloadpacket", node.target), "__name__", "")
    if node.target is F.pad or name in ("pad", "constant_pad_nd"):
        return len(ctx.arg(1, "pad")) // 2
    found = re.search(r"(\d)d$", name)
    return int(found.group(1)) if found else len(ctx.out_shape) - 2


ATEN_SPATIAL = [k for p in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool",
                             "max_pool{}_with_indices", "reflection_pad", "replication_pad",
                             "upsample_nearest", "upsample_bilinear", "upsample_bicubic")
                for d in (1, 2, 3) for k in aten(p.format(d) if "{}" in p else f"{p}{d}d")]
ATEN_SPATIAL += aten("pad") + aten("constant_pad_nd") + aten("upsample_trilinear3d") + aten(
    "_adaptive_avg_pool2d")


@RULES.register(*POOL_MODULES, *PAD_MODULES, *UPSAMPLE_MODULES, *POOL_FNS, *UPSAMPLE_FNS, F.pad, torch._C._nn.pad,
                *ATEN_SPATIAL, name="spatial")
def spatial(ctx: PropagateContext, node: Node) -> torch.Tensor | tuple:
    x = node.args[0]
    L = ctx.labels(x)
    k = _spatial_rank(ctx, node)
    if any(L.size(d) > 1 for d in range(L.dim() - k, L.dim())):
        ctx.pin(L, "channels spread over dims that a pooling, resize or pad mixes")
        return ctx.untracked()
    out = ctx.out_shape
    if isinstance(out, tuple) and not isinstance(out, torch.Size):   # (values, indices)
        return (L.clone(), ctx.untracked(out[1]))
    return L.clone()
