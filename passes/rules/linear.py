"""Linear layers, embeddings and matrix products over the last dim.

``Linear``: out-features are fresh channels (weight rows produce, bias is affine), in-features are
consumed by weight columns. ``Embedding``: its width is a fresh channel per weight column. Products
of two activations consume the contracted channels (removable only when exactly zero).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from .. import labels as lb
from ..channels import pin_soft, tensor_named
from ..registry import RULES, Method, aten, module_classes
from ..table import AFFINE, CONSUMER, PRODUCER
from .attention import product


def _last_dim_ids(ctx, x, what: str) -> torch.Tensor:
    """Channel ids along the last dim of ``x``; channels along other dims are pinned."""
    L, shape = ctx.labels(x), ctx.shape(x)
    if any(L.size(d) > 1 for d in range(len(shape) - 1)):
        ctx.pin(L, f"channels along a dim that {what} treats as a batch dim")
        L = lb.full(shape, lb.UNTRACKED)
    return lb.along(lb.materialize(L, shape, [len(shape) - 1]), len(shape) - 1)


def _features(ctx, node, ids_in, wname, bname, in_dim: int, out_dim: int, fold: str, arg: int = 0):
    W = tensor_named(ctx.gm, wname)
    table = ctx.table
    table.read_slices(wname, in_dim, ids_in, CONSUMER)
    table.consume(node.name, arg, len(ctx.shape(node.args[arg])) - 1, ids_in, fold, out_dim=-1)
    out_ids = table.param_slices(wname, out_dim, W.shape[out_dim], PRODUCER)
    if bname is not None:
        table.bind_slices(bname, 0, out_ids, AFFINE)
    out = [1] * len(ctx.out_shape)
    out[-1] = W.shape[out_dim]
    return out_ids.view(out).clone()


def linear(ctx, node):
    if node.op == "call_module":
        wname, bname = ctx.module_param("weight"), ctx.module_param("bias")
    else:
        weight, bias = ctx.arg(1, "weight"), ctx.arg(2, "bias")
        wname, bname = ctx.param_of(weight), ctx.param_of(bias)
        if wname is None or (bias is not None and bname is None):
            return ctx.unknown("a linear whose weight or bias is computed, not a parameter")
    ids_in = _last_dim_ids(ctx, node.args[0], "a linear layer")
    return _features(ctx, node, ids_in, wname, bname, 1, 0, "bias")


def linear_rewrite(ctx, node):
    if node.op == "call_module":
        m = ctx.module(node)
        m.out_features, m.in_features = m.weight.shape


RULES.register(*module_classes("Linear"), F.linear, torch._C._nn.linear, *aten("linear"),
               rewrite=linear_rewrite, reads_channels=True, name="linear")(linear)


def embedding(ctx, node):
    if node.op == "call_module":
        wname = ctx.module_param("weight")
    elif isinstance(node.target, torch._ops.OpOverload):      # aten.embedding(weight, indices)
        wname = ctx.param_of(node.args[0])
    else:
        wname = ctx.param_of(ctx.arg(1, "weight"))
        if wname is None:
            return ctx.unknown("an embedding whose table is computed, not a parameter")
    W = tensor_named(ctx.gm, wname)
    out_ids = ctx.table.param_slices(wname, 1, W.shape[1], PRODUCER)
    out = [1] * len(ctx.out_shape)
    out[-1] = W.shape[1]
    return out_ids.view(out).clone()


def embedding_rewrite(ctx, node):
    if node.op == "call_module":
        m = ctx.module(node)
        m.embedding_dim = m.weight.shape[1]


RULES.register(*module_classes("Embedding"), F.embedding, *aten("embedding"), rewrite=embedding_rewrite,
               name="embedding")(embedding)


@RULES.register(torch.addmm, Method("addmm"), *aten("addmm"), reads_channels=True, name="addmm")
def addmm(ctx, node):
    """``addmm(bias, x, W)`` with parameters ``W`` (in, out) and ``bias``: a linear layer
    (HF GPT-2's Conv1D)."""
    bias, x, w = node.args[:3]
    wname, bname = ctx.param_of(w), ctx.param_of(bias)
    if wname is None or bname is None or node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
        return ctx.unknown("an addmm whose weight or bias is computed, not a parameter")
    if len(ctx.shape(bias)) != 1:
        return ctx.unknown("an addmm with a 2-d bias")
    ids_in = _last_dim_ids(ctx, x, "a matmul")
    return _features(ctx, node, ids_in, wname, bname, 0, 1, "zero", arg=1)


@RULES.register(torch.matmul, torch.mm, torch.bmm, operator.matmul, Method("matmul"),
                Method("mm"), Method("bmm"), Method("__matmul__"), *aten("matmul"), *aten("mm"),
                *aten("bmm"), carries_soft=True, reads_channels=True, name="matmul")
def matmul(ctx, node):
    a, b = node.args[0], node.args[1]
    sa, sb = ctx.shape(a), ctx.shape(b)
    if len(sa) < 2 or len(sb) < 2:
        return ctx.unknown("a matmul with a vector operand")
    wname = ctx.param_of(b)
    if wname is not None and len(sb) == 2:
        # x @ W with a free parameter W of shape (in, out): a linear layer without bias
        ids_in = _last_dim_ids(ctx, a, "a matmul")
        return _features(ctx, node, ids_in, wname, None, 0, 1, "zero")
    La, Lb = ctx.labels(a), ctx.labels(b)
    ka = lb.along(lb.materialize(La, sa, [len(sa) - 1]), len(sa) - 1)
    kb = lb.along(lb.materialize(Lb, sb, [len(sb) - 2]), len(sb) - 2)
    rest_a = [d for d in range(len(sa) - 1) if La.size(d) > 1]
    rest_b = [d for d in range(len(sb)) if d != len(sb) - 2 and Lb.size(d) > 1]
    if rest_a or rest_b:
        return product(ctx, node, a, b)         # heads: channels along batch, row or column dims
    pin_soft(ctx, [La, Lb], f"then reaches the contracted dim of {node.name}")
    ctx.table.unify(ka, kb)
    ctx.table.consume(node.name, 0, len(sa) - 1, ka, "zero", out_dim=-1)
    ctx.table.consume(node.name, 1, len(sb) - 2, kb, "zero", out_dim=-1)
    return ctx.untracked()
