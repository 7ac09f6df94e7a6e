"""The symbolic cost model (``otofx.cost``): at random widths, the parameter and FLOPs polynomials
equal the parameter count and ``FlopCounterMode`` count of the model shrunk to those widths, on the
CNN and transformer grammars and a few zoo models; the marginal cost is the derivative."""

from __future__ import annotations

from unittest import mock

import pytest
import sympy
import torch
from hypothesis import given, note
from hypothesis import strategies as st
from strategies import cnn_models
from strategies_budget import examples
from strategies_transformer import RandomTransformer, example_input, transformer_specs
from zoo import hf_models as hf
from zoo.small import SEBlock, Shuffle, TinyCNN

import otofx
from otofx.cost import build_cost_model
from otofx.errors import AnalysisError
from otofx.flops import count_flops
from otofx.testing import zero_groups

fractions = st.integers(0, 10).map(lambda k: 1.0 - k / 10)
seeds = st.integers(0, 2**16)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_cost_matches_shrunk(gm, analysis, inputs: tuple, fraction: float, seed: int) -> None:
    """Zero a random share of every group, shrink, and compare the polynomials at the widths
    shrink reached with the counts of the smaller model."""
    cost = analysis.cost
    assert not cost.fixed, f"nodes without a FLOPs formula: {cost.fixed}"
    with torch.no_grad():
        zero_groups(gm, analysis, fraction, seed=seed)
    small = otofx.shrink(gm, analysis)
    removed = small.meta["otofx.shrink"].removed
    widths = {g.name: g.size - removed.get(g.name, 0) for g in analysis.prunable}
    created = sum(p.numel() for n, p in small.named_parameters()
                  if n not in dict(gm.named_parameters()))        # biases made to fold constants
    assert cost.params.at(widths) + created == n_params(small), widths
    assert cost.flops.at(widths) == count_flops(small, inputs), widths


@examples(0.5)
@given(case=cnn_models(), fraction=fractions, seed=seeds)
def test_cost_polynomials_equal_the_shrunk_cnn(case, fraction, seed):
    model, leaves = case.build()
    x = case.input(0)
    gm = otofx.trace(model, leaf_modules=leaves)
    analysis = otofx.analyze(gm, (x,))
    assert analysis.cost.params.dense == n_params(gm)
    assert analysis.cost.flops.dense == count_flops(gm, (x,))
    assert_cost_matches_shrunk(gm, analysis, (x,), fraction, seed)


@examples(0.3)
@given(spec=transformer_specs(), fraction=fractions, seed=seeds,
       unit=st.sampled_from(["head", "head_dim"]))
def test_cost_polynomials_equal_the_shrunk_transformer(spec, fraction, seed, unit):
    note(f"RandomTransformer({spec!r}), attention_unit={unit!r}")
    x = example_input(spec, seed)
    gm = otofx.trace(RandomTransformer(spec).eval())
    analysis = otofx.analyze(gm, (x,), attention_unit=unit)
    assert_cost_matches_shrunk(gm, analysis, (x,), fraction, seed)


@pytest.mark.parametrize("build", [
    lambda: (TinyCNN(), torch.randn(2, 3, 8, 8)),
    lambda: (Shuffle(), torch.randn(2, 3, 8, 8)),
    lambda: (SEBlock(), torch.randn(2, 3, 8, 8)),
    lambda: (__import__("torchvision").models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32)),
    lambda: (__import__("torchvision").models.mobilenet_v3_small(num_classes=10),
             torch.randn(1, 3, 32, 32)),
    lambda: (__import__("torchvision").models.VisionTransformer(       # nn.MultiheadAttention
        image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=10), torch.randn(2, 3, 16, 16)),
    lambda: hf.build("llama:sdpa")[:2],                                  # export graph, GQA
    lambda: hf.build("gpt2:eager")[:2],                                  # addmm (Conv1D)
], ids=["tiny_cnn", "shuffle", "se_block", "resnet18", "mobilenet_v3_small", "vit", "llama", "gpt2"])
def test_cost_polynomials_equal_the_shrunk_zoo_model(build):
    torch.manual_seed(0)
    model, x = build()
    inputs = x if isinstance(x, tuple) else (x,)
    gm = otofx.trace(model.eval(), inputs)
    analysis = otofx.analyze(gm, inputs)
    assert analysis.prunable
    assert_cost_matches_shrunk(gm, analysis, inputs, 0.4, seed=1)


def test_marginal_cost_is_the_derivative_and_one_channel_costs_it():
    model, x = TinyCNN(), torch.randn(2, 3, 8, 8)
    analysis = otofx.analyze(otofx.trace(model), (x,))
    cost = analysis.cost
    degrees = set()
    for poly in (cost.params, cost.flops):
        for g in analysis.prunable:
            drop = poly.dense - poly.at({g.name: g.size - 1})
            degree = sympy.degree(poly.expr, g.symbol)
            degrees.add(degree)
            assert poly.derivative(g) == sympy.diff(poly.expr, g.symbol)
            if degree == 1:      # linear in the group: the derivative is a channel's exact cost
                assert poly.marginal(g) == drop > 0
            else:                # c1 feeds the residual add into c2: quadratic, convex
                assert 0 < drop < poly.marginal(g)
    assert degrees == {1, 2}
    assert set(cost.marginals()) == {g.name for g in analysis.prunable}


def test_masks_and_vectorised_evaluation_agree_with_at():
    model, x = TinyCNN(), torch.randn(2, 3, 8, 8)
    analysis = otofx.analyze(otofx.trace(model), (x,))
    cost, groups = analysis.cost, analysis.prunable
    gen = torch.Generator().manual_seed(0)
    widths = torch.stack([torch.randint(1, g.size + 1, (5,), generator=gen) for g in groups], 1)
    values = cost.flops.evaluator(groups)(widths)
    for row, value in zip(widths.tolist(), values.tolist()):
        named = dict(zip([g.name for g in groups], row))
        assert value == cost.flops.at(named)
        masks = {g.name: torch.arange(g.size) < w for g, w in zip(groups, row)}
        assert cost.flops.from_masks(masks) == value


def test_bad_widths_are_named():
    model, x = TinyCNN(), torch.randn(2, 3, 8, 8)
    analysis = otofx.analyze(otofx.trace(model), (x,))
    g = analysis.prunable[0]
    with pytest.raises(AnalysisError, match=g.name):
        analysis.cost.flops.at({g.name: g.size + 1})
    with pytest.raises(AnalysisError, match="not a prunable group"):
        analysis.cost.flops.at({"nope": 1})


def test_report_shows_marginal_costs():
    model, x = TinyCNN(), torch.randn(2, 3, 8, 8)
    analysis = otofx.analyze(otofx.trace(model), (x,))
    text = analysis.report()
    g = analysis.prunable[0]
    params, flops = analysis.cost.marginals()[g.name]
    row = next(line for line in text.splitlines() if line.startswith(g.name + " "))
    assert f"{flops:,}" in row and f"{params:,}" in row


def test_a_node_without_a_formula_is_held_at_its_dense_flops_and_named():
    from otofx.passes.rules import flops as rules
    model, x = TinyCNN(), torch.randn(2, 3, 8, 8)
    analysis = otofx.analyze(otofx.trace(model), (x,))
    without_conv = {k: r for k, r in rules.FLOPS._rules.items() if r.name != "conv"}
    dense_model = analysis.cost
    with mock.patch.object(rules.FLOPS, "_rules", without_conv):
        cost = build_cost_model(analysis.gm, analysis.groups, analysis.example_inputs)
        analysis._cost = cost
    assert set(cost.fixed) == {"c1", "c2", "c3"}
    assert cost.flops.dense == count_flops(analysis.gm, (x,))
    # c1's channels only reach the convs: the model claims no saving for them (c3 still feeds
    # the linear head, which has its formula)
    assert cost.flops.marginal("c1") == 0 < dense_model.flops.marginal("c1")
    assert cost.flops.marginal("c3") > 0
    assert "held at their dense count" in analysis.report() and "c2" in analysis.report()
