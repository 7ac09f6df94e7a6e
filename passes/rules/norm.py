"""Normalisation layers.

BatchNorm and InstanceNorm work per channel: their affine parameters and running stats are sliced
with the channel. GroupNorm normalises over groups of channels, so a whole group is one channel
unit (``num_groups`` stays valid); with one group it is a LayerNorm over (C, H, W), whose channels
stay prunable with the dense divisor (``passes.dense_norm.dense_group_norm``) unless
``prune_hidden=False`` or it has no weight. LayerNorm and RMSNorm: ``rules/layer_norm.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.fx import Node

from ..common import tensor_named
from ..dense_norm import DenseGroupNorm, dense_group_norm
from ..registry import RULES, PropagateContext, RewriteContext, aten, module_classes
from ..table import AFFINE, BUFFER, FOLD_ZERO

BATCH_NORMS = module_classes("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm")
INSTANCE_NORMS = module_classes("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")


def _channel_ids(ctx: PropagateContext, x: Node, cdim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return ctx.channels_along(x, cdim, "channels along a dim a norm layer computes statistics over")


def _slice_params(ctx: PropagateContext, ids: torch.Tensor, params: dict[str, str]) -> None:
    for name, role in params.items():
        if name is not None:
            n = tensor_named(ctx.gm, name).shape[0]
            if ids.numel() == n:
                ctx.table.bind_slices(name, 0, ids, role)
            else:
                ctx.table.unify(ctx.table.param_slices(name, 0, n, role), ids)


def per_channel_norm_rewrite(ctx: RewriteContext, node: Node) -> None:
    if node.op == "call_module":
        m = ctx.module(node)
        new = ctx.new_shape(node.args[0])
        cdim = 0 if len(new) == getattr(m, "_get_no_batch_dim", lambda: -1)() else 1
        m.num_features = new[cdim]


@RULES.register(*BATCH_NORMS, *INSTANCE_NORMS, F.batch_norm, F.instance_norm, torch.batch_norm,
                rewrite=per_channel_norm_rewrite, name="batch_norm")
def per_channel_norm(ctx: PropagateContext, node: Node) -> torch.Tensor:
    x = node.args[0]
    shape = ctx.shape(x)
    if node.op == "call_module":
        m = ctx.module(node)
        unbatched = type(m) in INSTANCE_NORMS and len(shape) == m._get_no_batch_dim()
        cdim = 0 if unbatched else 1
        params = {ctx.module_param("weight"): AFFINE, ctx.module_param("bias"): AFFINE,
                  ctx.module_param("running_mean"): BUFFER, ctx.module_param("running_var"): BUFFER}
    else:
        cdim = 1
        names = ("running_mean", "running_var", "weight", "bias")
        index = (3, 4, 1, 2) if node.target is torch.batch_norm else (1, 2, 3, 4)  # F.*: stats first
        args = [ctx.arg(i, n) for i, n in zip(index, names)]
        if any(a is not None and ctx.param_of(a) is None for a in args):
            return ctx.unknown("a norm whose statistics or affine are computed")
        params = {ctx.param_of(a): (BUFFER if n.startswith("running") else AFFINE)
                  for a, n in zip(args, names) if a is not None}
    L, ids = _channel_ids(ctx, x, cdim)
    _slice_params(ctx, ids, params)
    return L.clone()


def group_norm_rewrite(ctx: RewriteContext, node: Node) -> None:
    old, new = ctx.old_shape(node.args[0])[1], ctx.new_shape(node.args[0])[1]
    groups = ctx.module(node).num_groups if node.op == "call_module" else ctx.arg(1, "num_groups")
    if groups == 1 and old != new:
        _one_group_rewrite(ctx, node, new, old)
        return
    if node.op == "call_module":
        m = ctx.module(node)
        m.num_groups = new // (old // m.num_groups)
        m.num_channels = new
    else:
        ctx.set_arg(1, "num_groups", new // (old // groups))


def _one_group_rewrite(ctx: RewriteContext, node: Node, new: int, old: int) -> None:
    """A one-group norm that lost (zero) channels keeps the dense channel count as divisor."""
    if node.op == "call_module":
        m = ctx.module(node)
        if isinstance(m, DenseGroupNorm):
            m.num_channels = new
            return
        dense = DenseGroupNorm(new, old, m.eps, m.affine)
        dense.weight, dense.bias = m.weight, m.bias
        dense.train(m.training)
        path, _, attr = node.target.rpartition(".")
        setattr(ctx.gm.get_submodule(path), attr, dense)
        return
    dense = node.kwargs.get("dense_channels") or old
    node.target = dense_group_norm
    node.args = (node.args[0], 1, ctx.arg(2, "weight"), ctx.arg(3, "bias"), ctx.arg(4, "eps", 1e-5))
    node.kwargs = {"dense_channels": dense}


@RULES.register(*module_classes("GroupNorm"), F.group_norm, torch.group_norm, *aten("group_norm"),
                DenseGroupNorm, dense_group_norm, rewrite=group_norm_rewrite, reads_channels=True,
                name="group_norm")
def group_norm(ctx: PropagateContext, node: Node) -> torch.Tensor:
    x = node.args[0]
    if node.op == "call_module":
        m = ctx.module(node)
        groups = m.num_groups
        weight_name = ctx.module_param("weight")
        params = {weight_name: AFFINE, ctx.module_param("bias"): AFFINE}
    else:
        groups = ctx.arg(1, "num_groups")
        weight, bias = ctx.arg(2, "weight"), ctx.arg(3, "bias")
        if any(a is not None and ctx.param_of(a) is None for a in (weight, bias)):
            return ctx.unknown("a group norm whose affine is computed")
        weight_name = ctx.param_of(weight)
        params = {weight_name: AFFINE, ctx.param_of(bias): AFFINE}
    L, ids = _channel_ids(ctx, x, 1)
    if groups == 1 and ctx.prune_hidden and ids.numel() > 1 and weight_name is not None:
        ctx.table.consume(node.name, 0, 1, ids, FOLD_ZERO, out_dim=1)     # exact with the dense count
        _slice_params(ctx, ids, params)
        return L.clone()
    grid = ids.view(groups, -1)
    ctx.couple_along(grid, 1, "a group norm normalises these channels with data that has no "
                     "channel")
    _slice_params(ctx, ids, params)
    return L.clone()


@RULES.register("timm.layers.norm_act.BatchNormAct2d", rewrite=per_channel_norm_rewrite,
                name="batch_norm_act")
def norm_act(ctx: PropagateContext, node: Node) -> torch.Tensor:
    """timm's ``BatchNormAct2d``: a batch norm, then dropout and an activation submodule. Each
    channel stays itself when the two are elementwise (the constant a removed channel leaves is
    folded by shrink like any activation's)."""
    m = ctx.module(node)
    for part in (getattr(m, "drop", None), getattr(m, "act", None)):
        rule = None if part is None else RULES.module_rule(part)
        if part is not None and (rule is None or rule.name not in ("elementwise", "passthrough")):
            return ctx.unknown(f"{type(m).__name__} with a {type(part).__name__} that is not elementwise")
    return per_channel_norm(ctx, node)
