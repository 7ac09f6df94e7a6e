"""Layers shrink emits where a torch module cannot express the smaller layer.

``nn.MultiheadAttention`` ties its inner width to ``embed_dim`` (the query's width), so once heads
are removed it cannot hold the smaller projections: shrink puts a ``HeadPrunedAttention`` in its
place, which computes the same thing with ``num_heads`` heads of the original ``head_dim`` while
reading and writing ``embed_dim``-wide tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HeadPrunedAttention(nn.Module):
    """Self-attention with packed q/k/v projections of ``num_heads * head_dim`` rows each.

    Same call signature and results as ``nn.MultiheadAttention`` for self-attention without
    ``add_bias_kv``/``add_zero_attn``; the returned attention weights (``need_weights=True``)
    are those of the kept heads.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, in_proj_weight: nn.Parameter,
                 in_proj_bias: nn.Parameter | None, out_proj: nn.Linear, dropout: float,
                 batch_first: bool) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.in_proj_weight = in_proj_weight
        self.in_proj_bias = in_proj_bias
        self.out_proj = out_proj
        self.dropout, self.batch_first = dropout, batch_first

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        x = query if self.batch_first or query.dim() == 2 else query.transpose(0, 1)
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
        B, T, _ = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        mask = _merged_mask(attn_mask, key_padding_mask, B, self.num_heads, T, q.dtype, unbatched)
        p = self.dropout if self.training else 0.0
        if not need_weights:      # the fused kernel, as nn.MultiheadAttention takes it here
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=is_causal and mask is None)
            return self._project(out, B, T, unbatched), None
        scores = (q @ k.transpose(-2, -1)) / (self.head_dim ** 0.5)
        if mask is not None:
            scores = scores + mask
        elif is_causal:
            scores = scores + torch.triu(torch.full((T, T), float("-inf"), dtype=q.dtype,
                                                    device=q.device), 1)
        weights = F.dropout(torch.softmax(scores, dim=-1), p)
        out = self._project(weights @ v, B, T, unbatched)
        if unbatched:
            weights = weights.squeeze(0)
        return out, (weights.mean(dim=-3) if average_attn_weights else weights)

    def _project(self, heads: torch.Tensor, B: int, T: int, unbatched: bool) -> torch.Tensor:
        """(B, heads, T, head_dim) to the out projection, in the caller's layout."""
        out = self.out_proj(heads.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        if unbatched:
            return out.squeeze(0)
        return out if self.batch_first else out.transpose(0, 1)


def _merged_mask(attn_mask, key_padding_mask, B, H, T, dtype, unbatched):
    """Additive float mask of shape broadcastable to (B, H, T, T), or None."""
    mask = None
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf"))
        if m.dim() == 3:                       # (B * H, T, S)
            m = m.view(B, H, T, -1)
        mask = m.to(dtype)
    if key_padding_mask is not None:
        k = key_padding_mask
        if unbatched:
            k = k.unsqueeze(0)
        if k.dtype == torch.bool:
            k = torch.zeros_like(k, dtype=dtype).masked_fill(k, float("-inf"))
        k = k.to(dtype).view(B, 1, 1, -1)
        mask = k if mask is None else mask + k
    return mask
