"""The hidden size: norms over channels with the dense divisor (``passes.dense_norm``), every
spelling of LayerNorm and RMSNorm, what still pins (and says why), and the ``prune_hidden`` opt-out."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import roundtrip
from otofx.passes.dense_norm import (
    DenseGroupNorm,
    DenseLayerNorm,
    DenseRMSNorm,
    dense_group_norm,
    dense_layer_norm,
    dense_mean,
    dense_native_layer_norm,
    dense_rms_norm,
    rescaled_rms_norm,
)
from torch import nn

import otofx
from otofx.errors import AnalysisError
from otofx.testing import zero_groups

D = 16
KEPT = torch.tensor([0, 2, 3, 5, 8, 9, 10, 13, 15])


def _with_zeros(dtype=torch.float32, seed=0):
    """Inputs whose channels outside ``KEPT`` are exactly zero, and those kept."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, D, generator=g).to(dtype)
    mask = torch.zeros(D, dtype=torch.bool)
    mask[KEPT] = True
    return x * mask, x[..., KEPT]


def _tol(dtype):
    return {"rtol": 1.6e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_layer_norm_of_the_kept_channels_is_the_layer_norm_of_all(dtype):
    full, kept = _with_zeros(dtype)
    w, b = torch.randn(D).to(dtype), torch.randn(D).to(dtype)
    expected = F.layer_norm(full, (D,), w, b)[..., KEPT]
    got = dense_layer_norm(kept, (len(KEPT),), w[KEPT], b[KEPT], dense=D)
    torch.testing.assert_close(got, expected, **_tol(dtype))
    assert got.dtype == dtype
    out, mean, rstd = dense_native_layer_norm(kept, [len(KEPT)], w[KEPT], b[KEPT], 1e-5, D)
    ref = torch.ops.aten.native_layer_norm(full, [D], w, b, 1e-5)
    torch.testing.assert_close(out, ref[0][..., KEPT], **_tol(dtype))
    torch.testing.assert_close(mean.to(ref[1].dtype), ref[1], **_tol(dtype))
    # the plain layer norm of the kept channels is not it: the divisor matters
    assert not torch.allclose(F.layer_norm(kept.float(), (len(KEPT),)), F.layer_norm(full.float(), (D,))[..., KEPT])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rescaled_stock_rmsnorm_is_exact_within_the_dtype_tolerance(dtype):
    """weight * sqrt(d/d') and eps * d/d' make a stock nn.RMSNorm over d' channels compute the
    RMSNorm over d channels of which the others are zero."""
    full, kept = _with_zeros(dtype)
    norm = nn.RMSNorm(D, eps=1e-6, dtype=dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(D) + 0.5)
    small = copy.deepcopy(norm)
    small.weight = nn.Parameter(small.weight.detach()[KEPT].clone())
    rescaled_rms_norm(small, (len(KEPT),), D)
    assert type(small) is nn.RMSNorm and small.eps == pytest.approx(1e-6 * D / len(KEPT))
    with torch.no_grad():
        torch.testing.assert_close(small(kept), norm(full)[..., KEPT], **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_rms_norm_and_mean(dtype):
    """Against the float64 RMSNorm over all channels (eps=None: the input dtype's epsilon)."""
    full, kept = _with_zeros(dtype)
    for weight in (None, torch.rand(D).to(dtype) + 0.5):
        for eps in (None, 1e-5):
            w = None if weight is None else weight[KEPT]
            expected = F.rms_norm(full.double(), (D,), None if weight is None else weight.double(),
                                  torch.finfo(dtype).eps if eps is None else eps)[..., KEPT]
            torch.testing.assert_close(dense_rms_norm(kept, len(KEPT), w, eps, dense=D),
                                       expected.to(dtype), **_tol(dtype))
    torch.testing.assert_close(dense_mean(kept.pow(2), -1, True, dense=D),
                               full.double().pow(2).mean(-1, keepdim=True).to(dtype), **_tol(dtype))
    module = DenseRMSNorm(len(KEPT), D, None, False)
    expected = F.rms_norm(full.double(), (D,), eps=torch.finfo(dtype).eps)[..., KEPT]
    torch.testing.assert_close(module(kept), expected.to(dtype), **_tol(dtype))


class Normed(nn.Module):
    """in -> norm over the hidden channels -> out, the norm spelled ``kind``."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.inp, self.out = nn.Linear(4, D), nn.Linear(D, 3)
        self.w, self.b = nn.Parameter(torch.rand(D) + 0.5), nn.Parameter(torch.randn(D))
        self.norm = {"LayerNorm": nn.LayerNorm(D), "RMSNorm": nn.RMSNorm(D, eps=1e-6),
                     "RMSNorm_eps_None": nn.RMSNorm(D), "RMSNorm_no_weight": nn.RMSNorm(D, 1e-6, False)
                     }.get(kind, nn.Identity())

    def forward(self, x):
        h = self.inp(x)
        if self.kind == "F.layer_norm":
            h = F.layer_norm(h, (D,), self.w, self.b)
        elif self.kind == "F.layer_norm_no_bias":
            h = F.layer_norm(h, (D,), self.w)
        elif self.kind == "F.rms_norm":
            h = F.rms_norm(h, (D,), self.w, 1e-5)
        elif self.kind == "aten.native_layer_norm":
            h = torch.ops.aten.native_layer_norm.default(h, [D], self.w, self.b, 1e-5)[0]
        elif self.kind == "hand-written RMSNorm":
            h = self.w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))
        else:
            h = self.norm(h)
        return self.out(F.gelu(h))


# spelling -> what shrink emits: a module class, or the function the graph calls
EMITTED = {
    "LayerNorm": DenseLayerNorm, "RMSNorm": nn.RMSNorm, "RMSNorm_eps_None": DenseRMSNorm,
    "RMSNorm_no_weight": nn.RMSNorm, "F.layer_norm": dense_layer_norm, "F.layer_norm_no_bias": dense_layer_norm,
    "F.rms_norm": dense_rms_norm, "aten.native_layer_norm": dense_native_layer_norm,
    "hand-written RMSNorm": dense_mean,
}


@pytest.mark.parametrize("kind", list(EMITTED))
def test_every_norm_spelling_shrinks_the_hidden_size_exactly(kind):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4)
    gm, analysis, small = roundtrip(Normed(kind), x)      # asserts equal outputs
    group = next(g for g in analysis.groups if any(s.param == "inp.weight" for s in g.members))
    assert group.prunable, group.why_pinned
    assert small.inp.out_features == small.out.in_features < D
    emitted = EMITTED[kind]
    if isinstance(emitted, type):
        if emitted is nn.RMSNorm and kind == "RMSNorm_no_weight":
            emitted = DenseRMSNorm            # no weight to rescale: ours
        assert type(small.norm) is emitted
        assert getattr(small.norm, "dense", D) == D
    else:
        assert emitted in {n.target for n in small.graph.nodes}


class ExportOnly(Normed):
    """Python control flow on a shape: fx cannot trace it, so otofx.trace goes through torch.export
    (aten.layer_norm, aten.mean)."""

    def forward(self, x):
        if x.shape[-1] == 4:
            x = x + 0
        return super().forward(x)


@pytest.mark.parametrize("kind", ["LayerNorm", "hand-written RMSNorm", "RMSNorm"])
def test_norms_of_export_graphs_shrink_exactly(kind):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4)
    gm = otofx.trace(ExportOnly(kind), (x,))
    assert not any(n.op == "call_module" and "norm" in n.target for n in gm.graph.nodes)
    analysis = otofx.analyze(gm, (x,))
    zero_groups(gm, analysis, 0.5)
    small = otofx.shrink(gm, analysis)
    with torch.no_grad():
        torch.testing.assert_close(small(x), gm(x), rtol=1e-5, atol=1e-6)
    assert small.meta["otofx.shrink"].removed.get("inp", 0) > 0


def test_a_shrunk_graph_shrinks_again_with_the_first_dense_divisor():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4)
    for kind in ("LayerNorm", "F.layer_norm", "hand-written RMSNorm", "RMSNorm_eps_None"):
        _, _, small = roundtrip(Normed(kind), x, fraction=0.25)
        again = otofx.analyze(small, (x,))
        zero_groups(small, again, 0.3, seed=1)
        smaller = otofx.shrink(small, again)
        with torch.no_grad():
            torch.testing.assert_close(smaller(x), small(x), rtol=1e-5, atol=1e-6)
        assert smaller.inp.out_features < small.inp.out_features
        if kind in ("LayerNorm", "RMSNorm_eps_None"):
            assert smaller.norm.dense == D


def test_a_view_into_blocks_makes_whole_blocks_the_channels_of_a_norm_over_both():
    """A LayerNorm over (4, 4) blocks of the hidden channels (split by a view): whole blocks go."""

    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.norm, self.out = nn.Linear(4, D), nn.LayerNorm((4, D // 4)), nn.Linear(D, 3)

        def forward(self, x):
            return self.out(self.norm(self.inp(x).view(2, 5, 4, D // 4)).flatten(2))

    torch.manual_seed(0)
    _, analysis, small = roundtrip(Blocks(), torch.randn(2, 5, 4))
    assert next(g for g in analysis.groups if g.name == "inp").size == 4
    assert small.norm.normalized_shape[0] < 4 and small.norm.normalized_shape[1] == D // 4
    assert small.norm.dense == D


class Pinned(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.inp, self.mid, self.out = nn.Linear(4, D), nn.Linear(D, D), nn.Linear(D, 3)
        self.w = nn.Parameter(torch.rand(D) + 0.5)
        self.norm = nn.LayerNorm(D,
                                 elementwise_affine=kind != "no weight")

    def forward(self, x):
        h = self.inp(x)
        if self.kind == "computed weight":
            h = F.layer_norm(h, (D,), self.w * 2)
        elif self.kind == "shared":
            h = self.norm(self.mid(self.norm(h)))
        else:
            h = self.norm(h)
        return self.out(h.mean(1))


@pytest.mark.parametrize("kind, why", [
    ("no weight", "a layer norm without a weight: a removed channel would read -mean/std"),
    ("computed weight", "a layer norm whose weight or bias is computed, not a parameter"),
    ("shared", "a layer norm whose module or weight is also used elsewhere"),
])
def test_norms_that_cannot_be_proven_safe_pin_and_the_report_says_why(kind, why):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4)
    gm, analysis, _ = roundtrip(Pinned(kind), x)
    group = next(g for g in analysis.groups if any(s.param == "inp.weight" for s in g.members))
    assert not group.prunable
    reason = next(w for w in group.why_pinned if why in w)
    assert "(at node '" in reason                  # names the norm
    assert why in analysis.report()


def test_prune_hidden_false_keeps_the_old_pins():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4)
    for kind in ("LayerNorm", "RMSNorm", "hand-written RMSNorm", "F.rms_norm"):
        gm = otofx.trace(Normed(kind))
        group = next(g for g in otofx.analyze(gm, (x,), prune_hidden=False).groups
                     if any(s.param == "inp.weight" for s in g.members))
        assert not group.prunable and any("prune_hidden=False" in w or "mean() across channels" in w
                                          for w in group.why_pinned), group.why_pinned
    job = otofx.compress(Normed("LayerNorm"), otofx.DHSPGConfig(lr=0.1), (x,), prune_hidden=False)
    assert "inp" not in {g.name for g in job.analysis.prunable}
    assert "inp" in {g.name for g in otofx.compress(Normed("LayerNorm"), otofx.DHSPGConfig(lr=0.1),
                                                    (x,)).analysis.prunable}
    with pytest.raises(AnalysisError, match="prune_hidden must be True or False"):
        otofx.analyze(gm, (x,), prune_hidden="no")


class OneGroupNorm(nn.Module):
    """conv -> GroupNorm(1, C) (a LayerNorm over (C, H, W), as in PoolFormer) -> conv."""

    def __init__(self, functional: bool, affine: bool = True):
        super().__init__()
        self.functional = functional
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)
        self.norm = nn.GroupNorm(1, 8, affine=affine)

    def forward(self, x):
        h = self.a(x)
        if self.functional:
            h = F.group_norm(h, 1, self.norm.weight, self.norm.bias)
        else:
            h = self.norm(h)
        return self.b(F.gelu(h))


@pytest.mark.parametrize("functional", [False, True])
def test_one_group_norm_shrinks_exactly_with_the_dense_channel_count(functional):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)
    gm, analysis, small = roundtrip(OneGroupNorm(functional), x)
    assert "a" in {g.name for g in analysis.prunable}
    assert small.a.out_channels == small.b.in_channels < 8
    if functional:
        assert dense_group_norm in {n.target for n in small.graph.nodes}
    else:
        assert type(small.norm) is DenseGroupNorm and small.norm.dense_channels == 8
    with torch.no_grad():       # the spatial size comes from the input: other sizes stay exact
        big = torch.randn(1, 3, 9, 7)
        torch.testing.assert_close(small(big), gm(big), rtol=1e-4, atol=1e-5)


def test_one_group_norm_without_affine_stays_one_unit():
    x = torch.randn(2, 3, 5, 5)
    analysis = otofx.analyze(otofx.trace(OneGroupNorm(False, affine=False)), (x,))
    assert "a" not in {g.name for g in analysis.prunable}
    assert "a" not in {g.name for g in otofx.analyze(otofx.trace(OneGroupNorm(False)), (x,),
                                                     prune_hidden=False).prunable}


class DropoutAttention(nn.Module):
    """Shape control flow (export only) and SDPA whose dropout follows the mode, as HF writes it."""

    def __init__(self, d=16, heads=4, p=0.5):
        super().__init__()
        self.heads, self.p = heads, p
        self.norm = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        if x.shape[-1] == 4:
            x = x + 0
        B, T, d = x.shape
        h = self.norm(x)
        q, k, v = (p(h).view(B, T, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)
        return x + self.o(a.transpose(1, 2).reshape(B, T, d))


def _seeded(module, x, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        return module(x)


def test_an_exported_training_graph_keeps_attention_dropout_as_dropout():
    torch.manual_seed(0)
    model, x = DropoutAttention().train(), torch.randn(2, 6, 16)
    gm = otofx.trace(model, (x,))
    assert gm.meta.get("otofx.exported") and gm.training
    # training: the same random attention dropout as the model, draw for draw
    torch.testing.assert_close(_seeded(gm, x, 1), _seeded(model, x, 1))
    assert not torch.allclose(_seeded(gm, x, 1), _seeded(gm, x, 2))
    # eval: no dropout at all
    gm.eval(), model.eval()
    torch.testing.assert_close(_seeded(gm, x, 1), _seeded(model, x, 2))
    gm.train()
    analysis = otofx.analyze(gm, (x,))
    zero_groups(gm, analysis, 0.5)
    small = otofx.shrink(gm, analysis)
    assert small.meta["otofx.shrink"].removed
    small.train()
    assert not torch.allclose(_seeded(small, x, 1), _seeded(small, x, 2))
    small.eval(), gm.eval()
    torch.testing.assert_close(_seeded(small, x, 1), _seeded(gm, x, 2), rtol=1e-5, atol=1e-6)


def test_an_exported_eval_graph_has_no_attention_dropout_to_restore():
    """Exported in eval mode, the graph holds dropout_p = 0: training it later drops nothing."""
    torch.manual_seed(0)
    model, x = DropoutAttention().eval(), torch.randn(2, 6, 16)
    gm = otofx.trace(model, (x,))
    gm.train()
    torch.testing.assert_close(_seeded(gm, x, 1), _seeded(gm, x, 2))
