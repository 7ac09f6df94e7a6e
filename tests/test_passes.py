"""Unit tests of the passes on hand-written patterns: groups found, pins and why, exact shrink."""

import pytest
import sympy
import torch
import torch.nn.functional as F
from helpers import pinned_group, roundtrip
from torch import nn
from zoo.small import SEBlock, Shuffle, TinyCNN

import otofx
from otofx.testing import zero_groups


def _params(m):
    return sum(p.numel() for p in m.parameters())


def _group_of(analysis, param):
    return [g for g in analysis.groups if any(m.param == param for m in g.members)]


def test_residual_add_puts_both_producers_in_one_group():
    analysis = otofx.analyze(otofx.trace(TinyCNN()), (torch.randn(2, 3, 8, 8),))
    group = next(g for g in analysis.groups if g.name == "c1")
    producers = {m.param for m in group.slices("producer")}
    assert producers == {"c1.weight", "c2.weight"}
    assert {m.param for m in group.slices("consumer")} == {"c2.weight", "c3.weight"}
    assert group.prunable and group.size == 8


def test_flatten_gives_each_channel_a_block_of_linear_columns():
    analysis = otofx.analyze(otofx.trace(TinyCNN()), (torch.randn(2, 3, 8, 8),))
    group = next(g for g in analysis.groups if g.name == "c3")
    fc = next(m for m in group.members if m.param == "fc.weight")
    assert fc.dim == 1 and fc.index.shape == (16, 16)
    assert torch.equal(fc.index[3], torch.arange(48, 64))   # channel-major flatten


def test_head_is_pinned_because_it_reaches_the_output():
    analysis = otofx.analyze(otofx.trace(TinyCNN()), (torch.randn(2, 3, 8, 8),))
    head = next(g for g in analysis.groups if g.name == "fc")
    assert not head.prunable and any("graph output" in w for w in head.why_pinned)


def test_zeroed_channels_are_removed_and_parameters_predicted():
    _, analysis, small = roundtrip(TinyCNN(), torch.randn(2, 3, 8, 8))
    stats = small.meta["otofx.shrink"]
    assert stats.removed == {"c1": 4, "c3": 8}
    assert _params(small) == analysis.params_after(stats.removed_channels)
    assert small.c1.out_channels == 4 and small.fc.in_features == 8 * 16


def test_traced_module_and_subnet_survive_torch_save_and_load(tmp_path):
    """torch.save pickles a GraphModule by its code; torch.load re-traces that code with the
    tracer class that built it, called with no argument (failed with a required argument)."""
    x = torch.randn(2, 3, 8, 8)
    gm, _, small = roundtrip(TinyCNN(), x)
    for name, module in (("traced", gm), ("subnet", small)):
        torch.save(module, tmp_path / f"{name}.pt")
        back = torch.load(tmp_path / f"{name}.pt", weights_only=False)
        back.eval()
        with torch.no_grad():
            assert torch.equal(back(x), module(x)), name
        assert [p.shape for p in back.parameters()] == [p.shape for p in module.parameters()]


class _BiasThenConv(nn.Module):
    def __init__(self, kernel, padding, bias=True):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(6, 2, kernel, padding=padding, bias=bias)
        with torch.no_grad():
            self.a.bias.uniform_(0.5, 1.0)        # removed channels leave a non-zero constant

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


@pytest.mark.parametrize("bias", [True, False])
def test_a_removed_channels_constant_is_folded_into_the_next_bias(bias):
    _, _, small = roundtrip(_BiasThenConv(1, 0, bias), torch.randn(2, 3, 5, 5), affine=False)
    stats = small.meta["otofx.shrink"]
    assert stats.removed == {"a": 3} and stats.folded == ["b"]
    assert small.b.bias is not None and small.b.in_channels == 3


def test_a_constant_that_a_padded_conv_cannot_absorb_keeps_its_channel():
    _, _, small = roundtrip(_BiasThenConv(3, 1), torch.randn(2, 3, 5, 5), affine=False)
    stats = small.meta["otofx.shrink"]
    assert stats.kept == {"a": 3} and small.a.out_channels == 6
    _, _, exact = roundtrip(_BiasThenConv(3, 1), torch.randn(2, 3, 5, 5), affine=True)
    assert exact.a.out_channels == 3            # exact zeros go whatever the padding


def test_channel_shuffle_is_exact_and_removes_one_channel_per_group():
    model = Shuffle(groups=2)
    gm, analysis, small = roundtrip(model, torch.randn(2, 3, 6, 6))
    group = next(g for g in analysis.groups if g.name == "a")
    # the shuffle removes channel j of both shuffle groups together, the grouped conv channel j
    # of both conv groups: together 2 units of 4 channels each
    assert group.size == 2
    assert all(m.index.shape[1] == 4 for m in group.slices("producer"))
    assert small.b.groups == 2 and small.b.in_channels % 2 == 0


def test_se_gate_couples_the_gate_with_the_channels_it_scales():
    analysis = otofx.analyze(otofx.trace(SEBlock()), (torch.randn(2, 3, 6, 6),))
    group = next(g for g in analysis.groups if g.name == "conv")
    assert "fc2.weight" in {m.param for m in group.slices("producer")}
    roundtrip(SEBlock(), torch.randn(2, 3, 6, 6))


class _Depthwise(nn.Module):
    def __init__(self, mult=1):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6 * mult, 3, padding=1, groups=6)
        self.b = nn.Conv2d(6 * mult, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.dw(F.relu(self.a(x)))))


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_conv_carries_its_input_channels(mult):
    _, analysis, small = roundtrip(_Depthwise(mult), torch.randn(2, 3, 6, 6))
    group = next(g for g in analysis.groups if g.name == "a")
    assert "dw.weight" in {m.param for m in group.members}
    assert small.dw.groups == small.dw.in_channels == 3
    assert small.dw.out_channels == 3 * mult


class _Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.b = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        return self.b(self.g(self.a(x)))


def test_grouped_conv_removes_equal_numbers_from_every_group():
    _, analysis, small = roundtrip(_Grouped(), torch.randn(2, 3, 5, 5))
    sizes = {g.name: g.size for g in analysis.groups}
    assert sizes["a"] == 2 and sizes["g"] == 3      # 8/4 inputs and 12/4 outputs per group
    assert small.g.groups == 4
    assert small.g.in_channels % 4 == 0 and small.g.out_channels % 4 == 0


class _GroupNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gn, self.b = nn.Conv2d(3, 12, 1), nn.GroupNorm(4, 12), nn.Conv2d(12, 2, 1)

    def forward(self, x):
        return self.b(F.silu(self.gn(self.a(x))))


def test_group_norm_prunes_whole_groups_and_stays_valid():
    _, analysis, small = roundtrip(_GroupNorm(), torch.randn(2, 3, 5, 5))
    assert next(g for g in analysis.groups if g.name == "a").size == 4
    assert small.gn.num_channels == small.gn.num_groups * 3


class _LayerNormOverChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.ln(self.fc1(x)))


def test_layer_norm_over_channels_keeps_them_prunable_unless_opted_out():
    x = torch.randn(2, 6)
    gm, analysis, small = roundtrip(_LayerNormOverChannels(), x)
    assert "fc1" in {g.name for g in analysis.prunable}
    assert small.fc1.out_features == small.ln.normalized_shape[0] == small.fc2.in_features < 8
    analysis = otofx.analyze(otofx.trace(_LayerNormOverChannels()), (x,), prune_hidden=False)
    group = next(g for g in analysis.groups if g.name == "fc1")
    assert not group.prunable and any("layer norm" in w for w in group.why_pinned)


class _Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = torch.cumsum(self.a(x), dim=1)          # no rule: mixes channels
        return self.c(y + self.b(x))


def test_an_op_without_rule_pins_what_it_touches_and_names_it():
    gm, analysis, small = roundtrip(_Unknown(), torch.randn(2, 3, 4, 4))
    pinned = {g.name: g for g in analysis.pinned}
    assert "a" in pinned and any("cumsum" in w for w in pinned["a"].why_pinned)
    assert "b" in pinned and any("no channel" in w for w in pinned["b"].why_pinned)


class _CountAsValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(y) / y.size(1)


def test_a_channel_count_used_as_a_value_pins_those_channels():
    why = pinned_group(_CountAsValue(), torch.randn(2, 3, 4, 4), "a")
    assert any("channel count" in w for w in why)


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.shared, self.c = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        y = F.relu(self.shared(y))
        return self.c(self.shared(y))      # one weight, used twice


def test_a_weight_used_twice_couples_both_uses():
    _, analysis, small = roundtrip(_Shared(), torch.randn(2, 3, 4, 4))
    group = next(g for g in analysis.groups if g.name == "a")
    # shared's input columns consume a's channels and shared's own output: one group
    assert "shared.weight" in {m.param for m in group.slices("producer")}


class _FreeScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)
        self.gamma = nn.Parameter(torch.rand(6, 1, 1) + 0.5)

    def forward(self, x):
        return self.b(self.a(x) * self.gamma)


def test_a_free_parameter_is_sliced_with_the_channels_it_scales():
    _, analysis, small = roundtrip(_FreeScale(), torch.randn(2, 3, 4, 4))
    group = next(g for g in analysis.groups if g.name == "a")
    gamma = next(m for m in group.members if m.param == "gamma")
    assert gamma.dim == 0
    assert small.gamma.shape[0] == small.a.out_channels == 3


class _SumOverChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)

    def forward(self, x):
        return F.relu(self.a(x)).sum(dim=1)


def test_a_sum_over_channels_removes_only_exact_zeros():
    _, _, small = roundtrip(_SumOverChannels(), torch.randn(2, 3, 4, 4), affine=True)
    assert small.a.out_channels == 3
    _, _, kept = roundtrip(_SumOverChannels(), torch.randn(2, 3, 4, 4), affine=False)
    stats = kept.meta["otofx.shrink"]
    assert stats.removed.get("a", 0) + stats.kept.get("a", 0) == 3


class _Chunks(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        left, right = self.a(x).chunk(2, dim=1)
        return self.c(torch.cat([F.relu(self.b(left)), right[:, :4]], dim=1))


def test_chunk_cat_and_slices_are_rewritten_to_the_new_sizes():
    roundtrip(_Chunks(), torch.randn(2, 3, 5, 5))


def test_dims_are_sympy_expressions_that_give_the_new_shapes():
    model, x = TinyCNN(), torch.randn(2, 3, 8, 8)
    gm = otofx.trace(model)
    analysis = otofx.analyze(gm, (x,))
    zero_groups(gm, analysis, 0.5, seed=3)
    small = otofx.shrink(gm, analysis)
    removed = small.meta["otofx.shrink"].removed
    values = {g.symbol: g.size - removed.get(g.name, 0) for g in analysis.groups}
    flatten = next(n for n in analysis.gm.graph.nodes if n.name == "flatten")
    expr = flatten.meta["otofx.dims"][1]
    assert expr == 16 * next(g for g in analysis.groups if g.name == "c3").symbol
    assert isinstance(expr, sympy.Expr)
    assert int(expr.subs(values)) == small.fc.in_features


# ---- bad input --------------------------------------------------------------------------------


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Branchy()

    def forward(self, x):
        return self.inner(x)


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


def test_untraceable_model_raises_trace_error_naming_module_and_fix():
    with pytest.raises(otofx.TraceError, match=r"inner.*leaf_modules=\['inner'\]"):
        otofx.trace(_DataDependent())
    gm = otofx.trace(_DataDependent(), leaf_modules=["inner"])   # the suggested fix works
    assert any(n.op == "call_module" and n.target == "inner" for n in gm.graph.nodes)


def test_wrong_example_inputs_raise_shape_error_naming_the_node():
    gm = otofx.trace(TinyCNN())
    with pytest.raises(otofx.ShapeError, match="c1"):
        otofx.analyze(gm, (torch.randn(2, 5, 8, 8),))


def test_model_without_prunable_group_is_analysed_and_says_why():
    analysis = otofx.analyze(otofx.trace(nn.Linear(4, 3)), (torch.randn(2, 4),))
    assert not analysis.prunable
    assert all(g.why_pinned for g in analysis.groups)
    assert "0 prunable" in analysis.report()
    gm = otofx.trace(nn.Linear(4, 3))
    small = otofx.shrink(gm, analysis)
    assert _params(small) == _params(gm)


def test_shrink_refuses_an_analysis_of_another_graph():
    analysis = otofx.analyze(otofx.trace(TinyCNN()), (torch.randn(2, 3, 8, 8),))
    with pytest.raises(otofx.AnalysisError, match="different graph"):
        otofx.shrink(otofx.trace(SEBlock()), analysis)


def test_analyze_without_inputs_is_a_clear_error():
    with pytest.raises(otofx.AnalysisError, match="example inputs"):
        otofx.analyze(otofx.trace(TinyCNN()), None)


class _OpaqueTupleWithNone(nn.Module):
    """nn.MultiheadAttention(need_weights=False) returns (out, None) and has no core rule."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        y, _ = self.attn(self.fc(x), x, x, need_weights=False)
        return y


def test_an_unknown_op_returning_none_in_a_tuple_pins_and_does_not_crash():
    why = pinned_group(_OpaqueTupleWithNone(), torch.randn(1, 4, 16), "fc")
    assert any("MultiheadAttention" in w for w in why)


class _SplitPieceOfOne(nn.Module):
    """Found by hypothesis: a split piece holding a single channel must not become empty."""

    def __init__(self):
        super().__init__()
        self.m0 = nn.Conv2d(1, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        x1 = self.m0(x)
        a, b = torch.split(x1, [1, 1], dim=1)
        y = self.bn(F.relu(torch.cat([a, b], dim=1)))
        return self.head((y + x1).mean((2, 3)))


@pytest.mark.parametrize("affine", [True, False])
def test_a_split_piece_of_one_channel_keeps_its_channel(affine):
    _, _, small = roundtrip(_SplitPieceOfOne(), torch.randn(2, 1, 4, 4), fraction=1.0,
                            affine=affine)
    assert small.m0.out_channels == 2


def test_the_passes_compose_with_torch_fx_pass_manager():
    from functools import partial

    from otofx.passes import channels_pass, groups_pass, shapes_pass, shrink_pass
    from torch.fx.passes.infra.pass_manager import PassManager

    from otofx.testing import zero_groups

    x = torch.randn(2, 3, 8, 8)
    gm = otofx.trace(TinyCNN())
    result = PassManager([partial(shapes_pass, example_inputs=(x,)), channels_pass,
                          groups_pass])(gm)
    assert [g.name for g in result.graph_module.meta["otofx.groups"]] == ["c1", "c3", "fc"]
    assert all("otofx.labels" in n.meta for n in gm.graph.nodes)
    analysis = otofx.Analysis(gm, gm.meta["otofx.groups"], (x,))
    trained = otofx.trace(TinyCNN())
    trained.load_state_dict(gm.state_dict())
    zero_groups(trained, analysis, 0.5)
    shrunk = shrink_pass(trained, gm, (x,))
    assert shrunk.modified
    assert sum(p.numel() for p in shrunk.graph_module.parameters()) < \
        sum(p.numel() for p in trained.parameters())


class BroadcastGate(nn.Module):
    """A gate expanded with literal sizes by the tensor method ``broadcast_to``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.fc(y.mean((2, 3))))
        return self.out(y * gate[:, :, None, None].broadcast_to(2, 8, 6, 6))


def test_broadcast_to_method_sizes_are_rewritten():
    torch.manual_seed(0)
    _, _, small = roundtrip(BroadcastGate(), torch.randn(2, 3, 6, 6))
    assert small.conv.out_channels < 8


def test_a_deepcopy_of_an_analysis_is_independent_and_still_shrinks():
    import copy

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    gm = otofx.trace(TinyCNN())
    analysis = otofx.analyze(gm, (x,))
    twin = copy.deepcopy(analysis)
    for name, module in twin.gm.named_modules():      # its module lookups find its own modules
        assert twin.gm.get_submodule(name) is module
        assert name == "" or module is not analysis.gm.get_submodule(name)
    zero_groups(gm, analysis, 0.5, seed=0)
    small = otofx.shrink(gm, twin)
    small.eval()
    gm.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), gm(x), rtol=1e-4, atol=1e-5)
