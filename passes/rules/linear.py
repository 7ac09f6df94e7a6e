"""Linear layers, embeddings and matrix products over the last dim.

``Linear``: out-features are fresh channels (weight rows produce, bias is affine), in-features are
consumed by weight columns. ``Embedding``: its width is a fresh channel per weight column. Products
of two activations consume the contracted channels (removable only when exactly zero).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch.fx import Node

from .. import labels as lb
from ..common import tensor_named
from ..registry import RULES, Method, PropagateContext, RewriteContext, aten, module_classes
from ..table import AFFINE, CONSUMER, FOLD_BIAS, FOLD_ZERO, PRODUCER
from .attention import product


def _last_dim_ids(ctx: PropagateContext, x: Node, what: str) -> torch.Tensor:
    """Channel ids along the last dim of ``x``; channels along other dims are pinned."""
    return ctx.channels_along(x, -1, f"channels along a dim that {what} treats as a batch dim")[1]


def _features(ctx: PropagateContext, node: Node, ids_in: torch.Tensor, wname: str, bname: str | None,
              in_dim: int, out_dim: int, fold: str, arg: int = 0) -> torch.Tensor:
    W = tensor_named(ctx.gm, wname)
    table = ctx.table
    table.read_slices(wname, in_dim, ids_in, CONSUMER)
    table.consume(node.name, arg, len(ctx.shape(node.args[arg])) - 1, ids_in, fold, out_dim=-1)
    out_ids = table.param_slices(wname, out_dim, W.shape[out_dim], PRODUCER)
    if bname is not None:
        table.bind_slices(bname, 0, out_ids, AFFINE)
    return ctx.output_along(out_ids, -1)


def linear_rewrite(ctx: RewriteContext, node: Node) -> None:
    if node.op == "call_module":
        m = ctx.module(node)
        m.out_features, m.in_features = m.weight.shape


@RULES.register(*module_classes("Linear"), F.linear, torch._C._nn.linear, *aten("linear"),
                rewrite=linear_rewrite, reads_channels=True, name="linear")
def linear(ctx: PropagateContext, node: Node) -> torch.Tensor:
    if node.op == "call_module":
        wname, bname = ctx.module_param("weight"), ctx.module_param("bias")
    else:
        weight, bias = ctx.arg(1, "weight"), ctx.arg(2, "bias")
        wname, bname = ctx.param_of(weight), ctx.param_of(bias)
        if wname is None or (bias is not None and bname is None):
            return ctx.unknown("a linear whose weight or bias is computed, not a parameter")
    ids_in = _last_dim_ids(ctx, node.args[0], "a linear layer")
    return _features(ctx, node, ids_in, wname, bname, 1, 0, FOLD_BIAS)


def embedding_rewrite(ctx: RewriteContext, node: Node) -> None:
    if node.op == "call_module":
        m = ctx.module(node)
        m.embedding_dim = m.weight.shape[1]


@RULES.register(*module_classes("Embedding"), F.embedding, *aten("embedding"), rewrite=embedding_rewrite,
                name="embedding")
def embedding(ctx: PropagateContext, node: Node) -> torch.Tensor:
    if node.op == "call_module":
        wname = ctx.module_param("weight")
    elif isinstance(node.target, torch._ops.OpOverload):      # aten.embedding(weight, indices)
        wname = ctx.param_of(node.args[0])
    else:
        wname = ctx.param_of(ctx.arg(1, "weight"))
        if wname is None:
            return ctx.unknown("an embedding whose table is computed, not a parameter")
    W = tensor_named(ctx.gm, wname)
    return ctx.output_along(ctx.table.param_slices(wname, 1, W.shape[1], PRODUCER), -1)


@RULES.register(torch.addmm, Method("addmm"), *aten("addmm"), reads_channels=True, name="addmm")
def addmm(ctx: PropagateContext, node: Node) -> torch.Tensor:
    """``addmm(bias, x, W)`` with parameters ``W`` (in, out) and ``bias``: a linear layer
    (HF GPT-2's Conv1D)."""
    bias, x, w = node.args[:3]
    wname, bname = ctx.param_of(w), ctx.param_of(bias)
    if wname is None or bname is None or node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
        return ctx.unknown("an addmm whose weight or bias is computed, not a parameter")
    if len(ctx.shape(bias)) != 1:
        return ctx.unknown("an addmm with a 2-d bias")
    ids_in = _last_dim_ids(ctx, x, "a matmul")
    return _features(ctx, node, ids_in, wname, bname, 0, 1, FOLD_ZERO, arg=1)


@RULES.register(torch.matmul, torch.mm, torch.bmm, operator.matmul, Method("matmul"),
                Method("mm"), Method("bmm"), Method("__matmul__"), *aten("matmul"), *aten("mm"),
                *aten("bmm"), carries_soft=True, reads_channels=True, name="matmul")
def matmul(ctx: PropagateContext, node: Node) -> torch.Tensor:
    a, b = node.args[0], node.args[1]
    sa, sb = ctx.shape(a), ctx.shape(b)
    if len(sa) < 2 or len(sb) < 2:
        return ctx.unknown("a matmul with a vector operand")
    wname = ctx.param_of(b)
    if wname is not None and len(sb) == 2:
        # x @ W with a free parameter W of shape (in, out): a linear layer without bias
        ids_in = _last_dim_ids(ctx, a, "a matmul")
        return _features(ctx, node, ids_in, wname, None, 0, 1, FOLD_ZERO)
    La, Lb = ctx.labels(a), ctx.labels(b)
    ka = lb.along(lb.materialize(La, sa, [len(sa) - 1]), len(sa) - 1)
    kb = lb.along(lb.materialize(Lb, sb, [len(sb) - 2]), len(sb) - 2)
    rest_a = [d for d in range(len(sa) - 1) if La.size(d) > 1]
    rest_b = [d for d in range(len(sb)) if d != len(sb) - 2 and Lb.size(d) > 1]
    if rest_a or rest_b:
        return product(ctx, node, a, b)         # heads: channels along batch, row or column dims
    ctx.pin_soft([La, Lb], f"then reaches the contracted dim of {node.name}")
    ctx.table.unify(ka, kb)
    ctx.table.consume(node.name, 0, len(sa) - 1, ka, FOLD_ZERO, out_dim=-1)
    ctx.table.consume(node.name, 1, len(sb) - 2, kb, FOLD_ZERO, out_dim=-1)
    return ctx.untracked()
