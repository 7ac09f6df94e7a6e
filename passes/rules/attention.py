"""Attention: products of two activations, and scaled_dot_product_attention. Heads are channels.

A head split (``view(B, T, H, Dh)``) couples each head's ``Dh`` channels into one (see
``layout._rectangular``), so q, k and v carry one channel per head along the head dim.

* ``q @ k.transpose(-2, -1)``: a product over head_dim. q's head h and k's head h are unified, and
  the scores of head h belong to that channel (zero when q and k of the head are).
* ``scores + mask``, ``softmax``, ``dropout``: the scores of a removed head are no longer zero, only
  irrelevant: they get *soft* ids (``ChannelTable.new_soft``) that elementwise and layout ops carry.
* ``attn @ v``: the product of head h is zero once v's head h is zero, whatever attn holds; the
  soft scores are unified with v's head and the result carries v's channel, which the output
  projection consumes. A head is one group: its q, k, v slices produce it, the output projection's
  columns consume it, and every literal head count (``view`` sizes) is rewritten by shrink.
* ``F.scaled_dot_product_attention(q, k, v, mask)`` does all of that in one op, grouped-query
  attention included (q heads ``h`` share kv head ``h // (Hq // Hkv)``).

Any op the scores reach that is not known to carry soft ids pins the head (``passes.channels``).
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch.fx import Node

from .. import labels as lb
from ..modules import HeadPrunedAttention
from ..registry import RULES, PropagateContext, RewriteContext, aten
from ..table import AFFINE, CONSUMER, FOLD_ZERO, PRODUCER


def _whole_rows(ctx: PropagateContext, L: torch.Tensor, dim: int, why: str) -> torch.Tensor | None:
    """Couple the channels of ``L`` along ``dim`` (one channel per head); None if some of those
    lines also hold data without a channel (then they are pinned)."""
    L = ctx.couple_along(L, dim, why)
    return L if L.size(dim) == 1 else None


def product(ctx: PropagateContext, node: Node, a: Node, b: Node) -> torch.Tensor:
    """Labels of ``a @ b`` (batched) when channels run along batch, row or column dims.

    Each output element ``[..., m, n]`` is zero when row ``m`` of ``a`` or column ``n`` of ``b``
    is a zero channel, so the output is the elementwise product of a's row labels and b's column
    labels (``ChannelContext.join`` with both factors keeping zeros). Channels along the
    contracted dim are coupled per row (whole heads)."""
    sa, sb, out = ctx.shape(a), ctx.shape(b), ctx.out_shape
    nd = len(out)
    La, Lb = lb.align(ctx.labels(a), nd), lb.align(ctx.labels(b), nd)
    ra = (1,) * (nd - len(sa)) + tuple(sa)
    rb = (1,) * (nd - len(sb)) + tuple(sb)
    La = _whole_rows(ctx, La.clone(), nd - 1, "a product sums these channels with data that has "
                     "no channel")
    Lb = _whole_rows(ctx, Lb.clone(), nd - 2, "a product sums these channels with data that has "
                     "no channel")
    if La is None or Lb is None:
        ctx.pin([x for x in (ctx.labels(a), ctx.labels(b))], "a product of channels with data that "
                "has no channel")
        return ctx.untracked()
    rows = (La, ra[:-1] + (1,))
    cols = (Lb, rb[:-2] + (1, rb[-1]))
    return ctx.join([rows, cols], out, [True, True])


def _heads(ctx: PropagateContext, L: torch.Tensor, shape, what: str) -> torch.Tensor | None:
    """One label per head of a (..., H, T, D) attention operand; None (pinned) if labels vary
    along batch or sequence dims or part of a head has no channel."""
    nd = len(shape)
    L = lb.align(L, nd)
    L = _whole_rows(ctx, L.clone(), nd - 1, f"the {what} of a head mix channels and data "
                    "without one")
    if L is None:
        return None
    if any(L.size(d) > 1 for d in range(nd - 3)) or L.size(nd - 2) > 1:
        ctx.pin(L, f"channels of the attention {what} along a batch or sequence dim")
        return None
    return lb.along(L, nd - 3) if L.size(nd - 3) > 1 else L.reshape(-1)[:1].expand(shape[nd - 3])


def _sdpa_rewrite(ctx: RewriteContext, node: Node) -> None:
    """Fewer head_dim channels change the default scale ``1/sqrt(E)``: keep the original one."""
    q = node.args[0]
    old, new = ctx.old_shape(q)[-1], ctx.new_shape(q)[-1]
    if old != new and len(node.args) < 7 and node.kwargs.get("scale") is None:
        node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(old)}


@RULES.register(F.scaled_dot_product_attention, *aten("scaled_dot_product_attention"),
                rewrite=_sdpa_rewrite, reads_channels=True, name="scaled_dot_product_attention")
def sdpa(ctx: PropagateContext, node: Node) -> torch.Tensor:
    q, k, v = node.args[0], ctx.arg(1, "key"), ctx.arg(2, "value")
    mask = ctx.arg(3, "attn_mask")
    sq, sk, sv = ctx.shape(q), ctx.shape(k), ctx.shape(v)
    if min(len(sq), len(sk), len(sv)) < 3:
        return ctx.unknown("attention without a head dim")
    if ctx.attention_unit == "head_dim":
        return _sdpa_head_dim(ctx, q, k, v)
    heads = [_heads(ctx, ctx.labels(x), s, what) for x, s, what in
             ((q, sq, "queries"), (k, sk, "keys"), (v, sv, "values"))]
    if any(h is None for h in heads):
        ctx.pin([ctx.labels(x) for x in (q, k, v)], "an attention whose heads cannot be followed")
        return ctx.untracked()
    hq, hk, hv = heads
    n = hq.numel()
    if hk.numel() != n:
        if n % hk.numel():
            return ctx.unknown("query heads not a multiple of key/value heads")
        rep = n // hk.numel()
        hk, hv = hk.repeat_interleave(rep), hv.repeat_interleave(rep)
    tracked = (hq >= 0) | (hk >= 0) | (hv >= 0)
    whole = (hq >= 0) & (hk >= 0) & (hv >= 0)
    ctx.pin(torch.cat([hq[tracked & ~whole], hk[tracked & ~whole], hv[tracked & ~whole]]),
            "an attention head whose queries, keys or values carry no channel")
    if isinstance(mask, torch.fx.Node) and ctx.is_tensor(mask):
        sm = ctx.shape(mask)
        if len(sm) >= 3 and sm[-3] > 1:
            ctx.pin(hv, "a per-head attention mask (it would need slicing with the heads)")
        if bool((ctx.labels(mask) >= 0).any()):
            ctx.pin(ctx.labels(mask), "channels in an attention mask")
    ctx.table.unify(hq, hk)
    ctx.table.unify(hq, hv)
    return ctx.output_along(torch.where(whole, hv, torch.full_like(hv, lb.UNTRACKED)), -3)


def _sdpa_head_dim(ctx: PropagateContext, q: Node, k: Node, v: Node) -> torch.Tensor:
    """head_dim as the unit: q and k channel ``d`` are summed over in the scores (removable once
    zero, coupled), v's channel ``d`` goes to the output. Channels must not vary across heads."""
    dims = []
    for x, what in ((q, "queries"), (k, "keys"), (v, "values")):
        L = lb.align(ctx.labels(x), len(ctx.shape(x)))
        if any(L.size(d) > 1 for d in range(L.dim() - 1)):
            ctx.pin([ctx.labels(y) for y in (q, k, v)], f"head_dim channels of the {what} differ "
                     "across heads or positions")
            return ctx.untracked()
        dims.append(lb.along(lb.materialize(L, ctx.shape(x), [L.dim() - 1]), L.dim() - 1))
    dq, dk, dv = dims
    if dq.numel() != dk.numel():
        return ctx.unknown("queries and keys of different head_dim")
    both = (dq >= 0) & (dk >= 0)
    ctx.pin(torch.cat([dq[~both], dk[~both]]), "a query/key channel whose partner carries no channel")
    ctx.table.unify(dq, dk)
    ctx.table.consume(ctx.node.name, 0, len(ctx.shape(q)) - 1, dq, FOLD_ZERO, out_dim=-1)
    ctx.table.consume(ctx.node.name, 1, len(ctx.shape(k)) - 1, dk, FOLD_ZERO, out_dim=-1)
    return ctx.output_along(dv, -1)


# ---- nn.MultiheadAttention ----------------------------------------------------------------------


def multihead_attention_rewrite(ctx: RewriteContext, node: Node) -> None:
    m = ctx.module(node)
    if not isinstance(m, torch.nn.MultiheadAttention):
        return
    rows, width = m.in_proj_weight.shape[0] // 3, m.in_proj_weight.shape[1]
    if rows == m.embed_dim and width == m.embed_dim:
        return
    # fewer heads, or a narrower stream around the attention: nn.MultiheadAttention ties both
    Dh = m.embed_dim // m.num_heads
    m.out_proj.in_features, m.out_proj.out_features = rows, m.out_proj.weight.shape[0]
    new = HeadPrunedAttention(width, rows // Dh, Dh, m.in_proj_weight, m.in_proj_bias, m.out_proj,
                              m.dropout, m.batch_first)
    new.train(m.training)
    ctx.gm.add_submodule(node.target, new)


@RULES.register(torch.nn.MultiheadAttention, rewrite=multihead_attention_rewrite,
                name="multihead_attention")
def multihead_attention(ctx: PropagateContext, node: Node) -> tuple:
    """Self-attention through ``nn.MultiheadAttention``: each head's rows of the packed q/k/v
    projection (and bias) produce one channel, the out projection's columns consume it; the input
    is consumed by the projection's columns, the output is a fresh channel per out feature."""
    m = ctx.module(node)
    query = node.args[0]
    key, value = ctx.arg(1, "key"), ctx.arg(2, "value")
    if key is not query or value is not query or not m._qkv_same_embed_dim or m.bias_k is not None \
            or m.add_zero_attn:
        return ctx.unknown("a MultiheadAttention that is not plain self-attention")
    E, H = m.embed_dim, m.num_heads
    Dh = E // H
    table = ctx.table
    _, x_ids = ctx.channels_along(query, -1, "channels along a dim that attention treats as a "
                                  "batch or sequence dim")
    in_w = ctx.module_param("in_proj_weight")
    out_w, out_b = (ctx.param_named(f"{node.target}.out_proj.{n}") for n in ("weight", "bias"))
    table.read_slices(in_w, 1, x_ids, CONSUMER)
    rows = table.param_slices(in_w, 0, 3 * E, PRODUCER).view(3, H, Dh)
    heads = rows[0, :, 0].clone()
    table.unify(rows, heads.view(1, H, 1).expand(3, H, Dh))
    if m.in_proj_bias is not None:
        table.unify(table.param_slices(ctx.module_param("in_proj_bias"), 0, 3 * E, AFFINE).view(3, H, Dh),
                    heads.view(1, H, 1).expand(3, H, Dh))
    cols = table.param_slices(out_w, 1, E, CONSUMER).view(H, Dh)
    table.unify(cols, heads.view(H, 1).expand(H, Dh))
    mask = ctx.arg(5, "attn_mask")
    if isinstance(mask, torch.fx.Node) and len(ctx.shape(mask)) == 3:
        ctx.pin(heads, "a per-head attention mask (it would need slicing with the heads)")
    if any(u.op != "call_function" or u.target is not operator.getitem or u.args[1] != 0
           for u in node.users) and ctx.arg(4, "need_weights", True):
        ctx.pin(heads, "the attention weights, averaged over heads, are used")
    out_ids = table.param_slices(out_w, 0, E, PRODUCER)
    if out_b is not None:
        table.unify(table.param_slices(out_b, 0, E, AFFINE), out_ids)
    weights = ctx.untracked(ctx.out_shape[1]) if isinstance(ctx.out_shape, tuple) and len(
        ctx.out_shape) > 1 else None
    return ctx.output_along(out_ids, -1, len(ctx.shape(query))), weights
