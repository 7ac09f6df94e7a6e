"""A grammar of random transformer models for the property tests.

A model is a ``TransformerSpec``: an input projection, a stack of blocks, a head. Each block draws
an attention spelling (separate q/k/v linears with view/transpose/matmul/softmax, a fused qkv
linear split by ``chunk`` or ``split``, ``F.scaled_dot_product_attention``, grouped-query heads
by expand+reshape or ``enable_gqa``, ``nn.MultiheadAttention``), a mask (none, additive causal,
``masked_fill``, ``is_causal``), rotary embeddings, a norm (LayerNorm, RMSNorm written with a free
``nn.Parameter``, torch's ``nn.RMSNorm``, none), pre- or post-norm, an MLP (GELU, SwiGLU gate,
none) and a layer scale. The model reads features through a linear layer and classifies their
mean, or is a language model: token embeddings, a final norm and an output layer tied to the
embedding (``tied``). A falsifying example prints its spec; ``RandomTransformer(spec)`` rebuilds
the model and ``example_input(spec, seed)`` its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from strategies_kinds import drew, grammar
from torch import nn

ATTENTIONS = ("manual", "chunk", "split", "sdpa", "gqa", "gqa_sdpa", "mha")
MASKS = ("none", "additive", "masked_fill", "is_causal")
NORMS = ("layernorm", "rmsnorm", "rmsnorm_stock", "none")
MLPS = ("gelu", "swiglu", "none")
grammar("transformer", [*(f"attention {a}" for a in ATTENTIONS), *(f"mask {m}" for m in MASKS),
                        *(f"norm {n}" for n in NORMS), *(f"mlp {m}" for m in MLPS), "pre-norm",
                        "post-norm", "rotary", "layer scale", "width from shape", "grouped kv heads",
                        "tied embeddings", *(f"final norm {n}" for n in NORMS)])


def kinds(spec: TransformerSpec) -> set[str]:
    """The kinds of the grammar ``spec`` holds."""
    out = {"tied embeddings"} if spec.tied else set()
    out.add(f"final norm {spec.final_norm}")
    for b in spec.blocks:
        out |= {f"attention {b.attention}", f"mask {b.mask}", f"norm {b.norm}", f"mlp {b.mlp}",
                "pre-norm" if b.pre_norm else "post-norm"}
        out |= {k for k, on in (("rotary", b.rotary), ("layer scale", b.layer_scale),
                                ("width from shape", b.width_from_shape),
                                ("grouped kv heads", b.kv_heads < b.heads)) if on}
    return out


@dataclass(frozen=True)
class BlockSpec:
    attention: str
    heads: int
    head_dim: int
    kv_heads: int
    mask: str
    rotary: bool
    norm: str
    pre_norm: bool
    mlp: str
    hidden: int
    layer_scale: bool
    width_from_shape: bool     # reshape(B, T, x.size(-1)) instead of a literal width


@dataclass(frozen=True)
class TransformerSpec:
    features: int
    width: int
    seq: int
    blocks: tuple[BlockSpec, ...]
    classes: int
    seed: int
    tied: bool = False          # token ids in, vocabulary (``features`` tokens) out, tied weights
    final_norm: str = "none"    # a norm of NORMS before the output layer


class RMSNorm(nn.Module):
    """RMSNorm written by hand with a free parameter (as Llama-style code does)."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def make_norm(kind: str, d: int) -> nn.Module:
    return {"layernorm": lambda: nn.LayerNorm(d), "rmsnorm": lambda: RMSNorm(d),
            "rmsnorm_stock": lambda: nn.RMSNorm(d, eps=1e-6), "none": lambda: nn.Identity()}[kind]()


class Block(nn.Module):
    def __init__(self, d: int, s: BlockSpec):
        super().__init__()
        self.s = s
        h, dh, kv = s.heads, s.head_dim, s.kv_heads
        inner = h * dh
        if s.attention == "mha":
            self.mha = nn.MultiheadAttention(d, h, batch_first=True)
        elif s.attention in ("chunk", "split"):
            self.qkv = nn.Linear(d, 3 * inner)
        else:
            self.q = nn.Linear(d, inner)
            self.k = nn.Linear(d, kv * dh)
            self.v = nn.Linear(d, kv * dh)
        if s.attention != "mha":
            self.o = nn.Linear(inner, d)
        self.n1, self.n2 = make_norm(s.norm, d), make_norm(s.norm, d)
        if s.mlp != "none":
            self.up = nn.Linear(d, s.hidden)
            self.down = nn.Linear(s.hidden, d)
            if s.mlp == "swiglu":
                self.gate = nn.Linear(d, s.hidden, bias=False)
        if s.layer_scale:
            self.gamma = nn.Parameter(torch.rand(d) + 0.5)

    def attend(self, x):
        s = self.s
        B, T, _ = x.shape
        h, dh, kv = s.heads, s.head_dim, s.kv_heads
        if s.attention == "mha":
            mask = torch.triu(torch.full((T, T), float("-inf")), 1) if s.mask != "none" else None
            return self.mha(x, x, x, attn_mask=mask, need_weights=False)[0]
        if s.attention == "chunk":
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        elif s.attention == "split":
            q, k, v = self.qkv(x).split(h * dh, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        heads_kv = kv if s.attention.startswith("gqa") else h
        q = q.view(B, T, h, dh).transpose(1, 2)
        k = k.view(B, T, heads_kv, dh).transpose(1, 2)
        v = v.view(B, T, heads_kv, dh).transpose(1, 2)
        if s.rotary:
            pos = torch.arange(T, dtype=x.dtype)[:, None] * torch.arange(dh, dtype=x.dtype)[None] / dh
            cos, sin = pos.cos(), pos.sin()
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        if s.attention in ("sdpa", "gqa_sdpa"):
            mask = None
            if s.mask in ("additive", "masked_fill"):
                mask = torch.triu(torch.full((T, T), float("-inf")), 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=s.mask == "is_causal",
                                                 enable_gqa=heads_kv != h)
        else:
            if heads_kv != h:
                rep = h // heads_kv
                k = k[:, :, None].expand(B, heads_kv, rep, T, dh).reshape(B, h, T, dh)
                v = v[:, :, None].expand(B, heads_kv, rep, T, dh).reshape(B, h, T, dh)
            scores = q @ k.transpose(-2, -1) / math.sqrt(dh)
            if s.mask in ("additive", "is_causal"):
                scores = scores + torch.triu(torch.full((T, T), float("-inf")), 1)
            elif s.mask == "masked_fill":
                causal = torch.full((T, T), True, dtype=torch.bool).triu(1)
                scores = scores.masked_fill(causal, float("-inf"))
            out = torch.softmax(scores, dim=-1) @ v
        width = x.size(-1) if s.width_from_shape else h * dh
        out = out.transpose(1, 2).reshape(B, T, width)
        return self.o(out)

    def mlp(self, x):
        s = self.s
        if s.mlp == "gelu":
            return self.down(F.gelu(self.up(x)))
        return self.down(F.silu(self.gate(x)) * self.up(x))

    def forward(self, x):
        s = self.s
        a = self.attend(self.n1(x) if s.pre_norm else x)
        if s.layer_scale:
            a = self.gamma * a
        x = x + a
        if not s.pre_norm:
            x = self.n1(x)
        if s.mlp != "none":
            x = x + self.mlp(self.n2(x) if s.pre_norm else x)
            if not s.pre_norm:
                x = self.n2(x)
        return x


class RandomTransformer(nn.Module):
    def __init__(self, spec: TransformerSpec):
        super().__init__()
        self.tied = spec.tied
        if spec.tied:
            self.embed = nn.Embedding(spec.features, spec.width)
        else:
            self.embed = nn.Linear(spec.features, spec.width)
            self.head = nn.Linear(spec.width, spec.classes)
        self.blocks = nn.Sequential(*[Block(spec.width, b) for b in spec.blocks])
        self.final = make_norm(spec.final_norm, spec.width)
        g = torch.Generator().manual_seed(spec.seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(1, p.shape[-1])))

    def forward(self, x):
        h = self.final(self.blocks(self.embed(x)))
        if self.tied:
            return F.linear(h, self.embed.weight)
        return self.head(h.mean(1))


def example_input(spec: TransformerSpec, seed: int, batch: int = 2) -> torch.Tensor:
    """Token ids (a tied language model) or features for ``RandomTransformer(spec)``."""
    g = torch.Generator().manual_seed(seed)
    if spec.tied:
        return torch.randint(0, spec.features, (batch, spec.seq), generator=g)
    return torch.randn(batch, spec.seq, spec.features, generator=g)


@st.composite
def block_specs(draw, width: int) -> BlockSpec:
    attention = draw(st.sampled_from(ATTENTIONS))
    heads = draw(st.sampled_from([h for h in (1, 2, 4, 8) if width % h == 0]))
    if attention == "mha":
        head_dim = width // heads
    else:
        head_dim = draw(st.sampled_from([2, 4, 8])) if not draw(st.booleans()) else width // heads
    kv = heads
    if attention.startswith("gqa"):
        kv = draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0]))
    mask = draw(st.sampled_from(MASKS))
    return BlockSpec(
        attention=attention, heads=heads, head_dim=head_dim, kv_heads=kv, mask=mask,
        rotary=attention != "mha" and head_dim % 2 == 0 and draw(st.booleans()),
        norm=draw(st.sampled_from(NORMS)), pre_norm=draw(st.booleans()),
        mlp=draw(st.sampled_from(MLPS)), hidden=draw(st.sampled_from([8, 16, 24])),
        layer_scale=draw(st.booleans()),
        width_from_shape=heads * head_dim == width and draw(st.booleans()))


@st.composite
def transformer_specs(draw, max_blocks: int = 3) -> TransformerSpec:
    width = draw(st.sampled_from([8, 16, 24]))
    blocks = tuple(draw(block_specs(width)) for _ in range(draw(st.integers(1, max_blocks))))
    tied = draw(st.booleans())
    spec = TransformerSpec(features=draw(st.sampled_from([7, 11] if tied else [3, 6])), width=width,
                           seq=draw(st.integers(2, 6)), blocks=blocks,
                           classes=draw(st.sampled_from([2, 5])), seed=draw(st.integers(0, 2**16)),
                           tied=tied, final_norm=draw(st.sampled_from(NORMS)))
    drew("transformer", kinds(spec))
    return spec
