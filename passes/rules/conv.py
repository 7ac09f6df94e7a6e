"""Convolutions (1d/2d/3d, transposed, grouped, depthwise): where channels are born and consumed.

A conv's out-channels are fresh channels produced by its weight rows (the bias and any norm after
it are affine slices); its in-channels are consumed by the weight's input columns. Grouped convs
remove one channel from every group at once (equal numbers per group); depthwise convs
(``groups == in_channels``) carry their input channels through, so in and out couple.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

from ..common import tensor_named
from ..registry import RULES, PropagateContext, RewriteContext, aten, module_classes
from ..table import AFFINE, CONSUMER, FOLD_BIAS, FOLD_ZERO, PRODUCER

CONVS = module_classes("Conv1d", "Conv2d", "Conv3d")
TRANSPOSED = module_classes("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
CONV_FNS = [F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d,
            *[k for d in (1, 2, 3) for k in aten(f"conv{d}d", "default")[1:]]]
TRANSPOSED_FNS = [F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
                  torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d,
                  *[k for d in (1, 2, 3) for k in aten(f"conv_transpose{d}d", "input")[1:]]]


def _call(ctx: PropagateContext, node: Node) -> tuple | None:
    """(weight name, bias name, groups, padding, transposed) of a conv call, or None."""
    if node.op == "call_module":
        m = ctx.module(node)
        return (ctx.module_param("weight"), ctx.module_param("bias"), m.groups, m.padding,
                isinstance(m, nn.modules.conv._ConvTransposeNd))
    transposed = node.target in TRANSPOSED_FNS
    weight, bias = ctx.arg(1, "weight"), ctx.arg(2, "bias")
    wname, bname = ctx.param_of(weight), ctx.param_of(bias)
    if wname is None or (bias is not None and bname is None):
        return None
    groups = ctx.arg(6, "groups", 1)
    padding = ctx.arg(4, "padding", 0)
    return wname, bname, groups, padding, transposed


def _no_padding(padding) -> bool:
    if isinstance(padding, str):
        return padding == "valid"
    if isinstance(padding, int):
        return padding == 0
    return all(p == 0 for p in padding)


def conv_rewrite(ctx: RewriteContext, node: Node) -> None:
    """New in/out channel counts; a depthwise conv's groups follow its channels."""
    x = node.args[0]
    old_in, new_in = ctx.old_shape(x), ctx.new_shape(x)
    new_out = ctx.new_shape(node)
    if node.op == "call_module":
        m = ctx.module(node)
        cdim = 1 if len(old_in) == m.weight.dim() else 0
        if m.groups == old_in[cdim] and m.groups > 1:
            m.groups = new_in[cdim]
        m.in_channels = new_in[cdim]
        m.out_channels = new_out[cdim]
        return
    cdim = 1 if len(old_in) == len(ctx.old_shape(node.args[1])) else 0
    groups = ctx.arg(6, "groups", 1)
    if groups == old_in[cdim] and groups > 1:
        ctx.set_arg(6, "groups", new_in[cdim])


@RULES.register(*CONVS, *TRANSPOSED, *CONV_FNS, *TRANSPOSED_FNS, rewrite=conv_rewrite, reads_channels=True,
                name="conv")
def conv(ctx: PropagateContext, node: Node) -> torch.Tensor:
    call = _call(ctx, node)
    if call is None:
        return ctx.unknown("a conv whose weight or bias is computed, not a parameter")
    wname, bname, groups, padding, transposed = call
    W = tensor_named(ctx.gm, wname)
    x = node.args[0]
    shape = ctx.shape(x)
    cdim = 1 if len(shape) == W.dim() else 0     # batched, or not
    _, ids_in = ctx.channels_along(x, cdim, "channels spread over the spatial dims of a conv input",
                                   others=range(cdim + 1, len(shape)))
    c_in = shape[cdim]
    c_out = W.shape[1] * groups if transposed else W.shape[0]
    table = ctx.table
    if groups == c_in and groups > 1:
        # depthwise: output channel o reads input channel o // multiplier only
        out_ids = ids_in.repeat_interleave(c_out // c_in)
        if transposed:
            table.read_slices(wname, 0, ids_in, AFFINE)
        else:
            table.read_slices(wname, 0, out_ids, AFFINE)
    else:
        per = c_in // groups
        grid = ids_in.view(groups, per)
        ctx.couple_along(grid, 0, "a grouped conv reads these channels beside data with no "
                         "channel in another group")
        if transposed:
            table.read_slices(wname, 0, ids_in, CONSUMER)
        else:
            table.read_slices(wname, 1, grid[0], CONSUMER)
        fold = FOLD_BIAS if not transposed and _no_padding(padding) else FOLD_ZERO
        table.consume(node.name, 0, cdim, ids_in, fold, out_dim=cdim)
        if transposed:
            out_ids = table.param_slices(wname, 1, c_out // groups, PRODUCER).repeat(groups)
        else:
            out_ids = table.param_slices(wname, 0, c_out, PRODUCER)
            ctx.couple_along(out_ids.view(groups, c_out // groups), 0, "grouped conv output")
    if bname is not None:
        table.bind_slices(bname, 0, out_ids, AFFINE)
    return ctx.output_along(out_ids, cdim)

