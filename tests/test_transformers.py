"""Transformer patterns one at a time: embeddings, free parameters, recurrent layers, the
torch.export front end and how a head is grouped."""

import pytest
import torch
import torch.nn.functional as F
from helpers import roundtrip
from strategies_transformer import BlockSpec, RandomTransformer, TransformerSpec
from torch import nn

import otofx
from otofx.testing import zero_groups


def _group_of(analysis, param, dim=0):
    return next(g for g in analysis.groups if any(s.param == param and s.dim == dim for s in g.members))


class TiedLM(nn.Module):
    """Token + position embeddings, a class token, an MLP block with a layer scale, and an LM
    head that reuses the token embedding's weight."""

    def __init__(self, vocab=20, d=12, seq=5):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, seq + 1, d))
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.up, self.down = nn.Linear(d, 24), nn.Linear(24, d)
        self.gamma = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, ids):
        x = self.tok(ids)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = x + self.gamma * self.down(F.gelu(self.up(x)))
        return F.linear(x, self.tok.weight)


def test_tied_embeddings_couple_hidden_and_pin_vocabulary():
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (2, 5))
    gm, analysis, small = roundtrip(TiedLM(), ids)
    hidden = _group_of(analysis, "tok.weight", dim=1)
    # the hidden dim is one group with the class token, position embedding and layer scale
    assert {"cls", "pos", "gamma", "down.weight"} <= {s.param for s in hidden.members}
    assert hidden.prunable, hidden.why_pinned
    vocab = _group_of(analysis, "tok.weight", dim=0)
    assert not vocab.prunable and any("graph output" in w for w in vocab.why_pinned)
    assert small.tok.weight.shape[1] < 12 and small.tok.weight.shape[0] == 20


class RMSNormFree(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.w = nn.Parameter(torch.rand(d) + 0.5)
        self.fc = nn.Linear(d, 3)

    def forward(self, x):
        h = self.inp(x)
        h = self.w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))
        return self.fc(h)


def test_rmsnorm_with_a_free_parameter_shrinks_exactly_with_the_dense_mean():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)
    _, analysis, small = roundtrip(RMSNormFree(), x)
    group = _group_of(analysis, "inp.weight")
    assert group.prunable and {"w", "fc.weight"} <= {s.param for s in group.members}
    assert small.w.shape[0] == small.inp.out_features == small.fc.in_features < 8
    opted_out = otofx.analyze(otofx.trace(RMSNormFree()), (x,), prune_hidden=False)
    group = _group_of(opted_out, "inp.weight")
    assert not group.prunable and any("mean() across channels" in w for w in group.why_pinned)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, permute to channels-last, LayerNorm, MLP, layer scale, permute back."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.up, self.down = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.down(F.gelu(self.up(self.norm(y))))
        return self.head(x + y.permute(0, 3, 1, 2))


def test_channels_last_layernorm_shrinks_the_stream_and_the_mlp():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    _, analysis, small = roundtrip(ConvNeXtBlock(), x)
    stream = _group_of(analysis, "stem.weight")
    assert stream.prunable and {"norm.weight", "norm.bias", "gamma", "dw.weight"} <= {
        s.param for s in stream.members}
    assert _group_of(analysis, "up.weight").prunable
    assert small.up.out_features < 32
    assert small.stem.out_channels == small.norm.weight.shape[0] == small.head.in_channels < 8
    assert small.norm.dense == 8


def test_prune_hidden_false_pins_the_stream_at_the_layernorm():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    analysis = otofx.analyze(otofx.trace(ConvNeXtBlock()), (x,), prune_hidden=False)
    assert not _group_of(analysis, "stem.weight").prunable
    assert _group_of(analysis, "up.weight").prunable


class Recurrent(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.rnn = getattr(nn, kind)(8, 6, batch_first=True)
        self.mid = nn.Linear(6, 10)
        self.out = nn.Linear(10, 2)

    def forward(self, x):
        h, _ = self.rnn(self.inp(x))
        return self.out(torch.relu(self.mid(h)))


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_recurrent_layers_are_pinned_leaves_and_the_rest_shrinks(kind):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4)
    _, analysis, small = roundtrip(Recurrent(kind), x)
    assert not _group_of(analysis, "inp.weight").prunable
    assert _group_of(analysis, "mid.weight").prunable
    assert small.mid.out_features < 10


def _block(**kw):
    spec = dict(attention="manual", heads=4, head_dim=4, kv_heads=4, mask="additive", rotary=False,
                norm="layernorm", pre_norm=True, mlp="gelu", hidden=16, layer_scale=False,
                width_from_shape=False)
    spec.update(kw)
    return TransformerSpec(features=3, width=16, seq=5, blocks=(BlockSpec(**spec),), classes=2, seed=0)


@pytest.mark.parametrize("attention", ["manual", "sdpa", "chunk", "mha", "gqa_sdpa"])
def test_head_groups_hold_q_k_v_rows_and_o_columns(attention):
    spec = _block(attention=attention, kv_heads=2 if attention.startswith("gqa") else 4)
    x = torch.randn(2, 5, 3)
    analysis = otofx.analyze(otofx.trace(RandomTransformer(spec).eval()), (x,))
    names = {"manual": ("blocks.0.q.weight", "blocks.0.o.weight"),
             "sdpa": ("blocks.0.q.weight", "blocks.0.o.weight"),
             "gqa_sdpa": ("blocks.0.q.weight", "blocks.0.o.weight"),
             "chunk": ("blocks.0.qkv.weight", "blocks.0.o.weight"),
             "mha": ("blocks.0.mha.in_proj_weight", "blocks.0.mha.out_proj.weight")}[attention]
    group = _group_of(analysis, names[0])
    assert group.prunable, group.why_pinned
    rows = {s.param: s.index.numel() for s in group.members if s.dim == 0 and s.role == "producer"}
    cols = [s for s in group.members if s.param == names[1] and s.dim == 1]
    assert cols and cols[0].index.shape == (group.size, 16 // group.size)
    assert sum(rows.values()) == 3 * 16 if attention != "gqa_sdpa" else 16 + 2 * 8


def test_a_model_fx_cannot_trace_goes_through_torch_export():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            if x.shape[0] > 1:                 # fx cannot trace this; export specialises it
                x = self.drop(torch.relu(self.a(x)))
            return self.b(x)

    torch.manual_seed(0)
    x = torch.randn(3, 4)
    with pytest.raises(otofx.TraceError, match="example inputs"):
        otofx.trace(DataDependent())
    gm = otofx.trace(DataDependent(), (x,))
    assert any(n.op == "call_function" and "aten" in str(n.target) for n in gm.graph.nodes)
    gm.train()
    assert not torch.equal(gm(x), gm(x))        # dropout follows the module's mode again
    gm.eval()
    torch.testing.assert_close(gm(x), gm(x))
    analysis = otofx.analyze(gm, (x,))
    zero_groups(gm, analysis, 0.5)
    small = otofx.shrink(gm, analysis)
    torch.testing.assert_close(small(x), gm(x))
    assert small.get_parameter("a.weight").shape[0] == 4


def test_neither_fx_nor_export_gives_both_causes():
    class Hopeless(nn.Module):
        def forward(self, x):
            if x.sum() > 0:                          # a branch on data: neither can trace it
                return x * 2
            return x

    with pytest.raises(otofx.TraceError) as info:
        otofx.trace(Hopeless(), (torch.randn(2),))
    message = str(info.value)
    assert "torch.fx" in message and "torch.export" in message and "Hopeless" in message


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_multihead_attention_in_a_prunable_stream_is_rebuilt(fraction):
    """Regression (fuzz): with no norm pinning the residual stream, its channels leave the
    nn.MultiheadAttention's input and output too; the rebuilt layer is exact."""
    spec = _block(attention="mha", heads=2, head_dim=8, kv_heads=2, norm="none", pre_norm=False,
                  mask="none")
    x = torch.randn(2, 5, 3)
    gm, analysis, small = roundtrip(RandomTransformer(spec).eval(), x, fraction=fraction)
    assert _group_of(analysis, "embed.weight").prunable
    assert small.get_submodule("blocks.0.mha").in_proj_weight.shape[1] < 16
