"""FLOPs and parameter budgets (``target_flops`` / ``target_params``, ``otofx.budget``): the
subnet lands within 1% of the budget, or as near as ``group_divisible`` allows, measured on the
shrunk model, for DHSPG, HESSO and H2SPG (erased structures priced exactly, on the erasing
grammar); budgets out of reach are ``ConfigError``s that say what is reachable;
``group_divisible="auto"`` resolves per device."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, note
from hypothesis import strategies as st
from strategies_budget import examples
from strategies_erase import INPUT, build, supernets
from strategies_transformer import BlockSpec, RandomTransformer, TransformerSpec
from zoo.small import TinyCNN
from zoo.supernets import DartsSuperNet

import otofx
from otofx.budget import cost_of_widths, count_for_budget, pick_for_budget, zero_chosen
from otofx.config import AUTO_DIVISIBLE
from otofx.errors import ConfigError
from otofx.flops import count_flops
from otofx.grouped import GroupedViews
from otofx.partition import choose
from otofx.testing import erase_structures


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _resnet():
    return torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32)


def _transformer():
    block = BlockSpec(attention="sdpa", heads=4, head_dim=8, kv_heads=4, mask="none", rotary=False,
                      norm="layernorm", pre_norm=True, mlp="gelu", hidden=64, layer_scale=False,
                      width_from_shape=False)
    spec = TransformerSpec(features=6, width=32, seq=8, blocks=(block, block), classes=3, seed=0)
    return RandomTransformer(spec).eval(), torch.randn(2, 8, 6)


@pytest.mark.parametrize("build", [_resnet, _transformer], ids=["resnet18", "transformer"])
@pytest.mark.parametrize("what", ["flops", "params"])
@pytest.mark.parametrize("divisible", [1, 8])
def test_budget_lands_within_one_percent_or_the_nearest_width(build, what, divisible):
    torch.manual_seed(0)
    model, x = build()
    gm = otofx.trace(model, (x,))
    analysis = otofx.analyze(gm, (x,))
    poly = analysis.cost.flops if what == "flops" else analysis.cost.params
    views = GroupedViews(gm, analysis.prunable)
    cost = poly.evaluator(views.groups)
    score = torch.rand(views.num_channels, generator=torch.Generator().manual_seed(1))
    for fraction in (0.3, 0.6):
        budget = fraction * poly.dense
        chosen = pick_for_budget(score, views.group_of, views.sizes, cost, budget, divisible)
        trial = otofx.trace(model, (x,))
        trial_analysis = otofx.analyze(trial, (x,))
        zero_chosen(trial, GroupedViews(trial, trial_analysis.prunable), chosen)
        small = otofx.shrink(trial, trial_analysis)
        reached = count_flops(small, (x,)) if what == "flops" else n_params(small)
        kept = views.sizes - torch.bincount(views.group_of[chosen], minlength=len(views.sizes))
        assert reached == int(cost(kept))             # the polynomial is what the subnet costs
        # no other count of the same score order lands nearer (the cost falls as it grows)
        count = count_for_budget(score, views.group_of, views.sizes, cost, budget, divisible)
        assert torch.equal(chosen, choose(score, count, views.group_of, views.sizes,
                                          torch.ones_like(chosen), torch.zeros_like(views.sizes),
                                          divisible))
        near = []
        for other in (count - 1, count + 1):
            mask = choose(score, other, views.group_of, views.sizes,
                          torch.ones_like(chosen), torch.zeros_like(views.sizes), divisible)
            kept = views.sizes - torch.bincount(views.group_of[mask], minlength=len(views.sizes))
            near.append(int(cost(kept)))
            assert abs(near[-1] - budget) >= abs(reached - budget)
        assert near[0] >= reached >= near[1]
        if divisible == 1:      # within 1%, or one channel's cost (a hidden-size channel of a
            step = max(near[0] - reached, reached - near[1]) / poly.dense    # transformer: ~3%)
            assert abs(reached / poly.dense - fraction) <= max(0.01, step), (reached / poly.dense,
                                                                           fraction, step)


def _train(job, x, y, steps: int) -> None:
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(job.module(x), y)
        loss.backward()
        job.optimizer.step()
        job.optimizer.zero_grad()


@pytest.mark.parametrize("kind", ["dhspg", "hesso"])
@pytest.mark.parametrize("field", ["target_flops", "target_params"])
def test_compress_lands_on_the_budget_and_reports_it(kind, field):
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    common = dict(lr=0.05, start_pruning_step=2, pruning_steps=8, **{field: 0.5})
    cfg = otofx.DHSPGConfig(**common) if kind == "dhspg" else otofx.HESSOConfig(pruning_periods=2,
                                                                               **common)
    job = otofx.compress(TinyCNN(), cfg, (x[:2],))
    _train(job, x, y, 12)
    small = job.subnet()
    base = job.baseline()
    reached = (count_flops(small, (x[:2],)) / base["flops"] if field == "target_flops"
               else n_params(small) / base["params"])
    assert abs(reached - 0.5) <= 0.05    # TinyCNN: two groups of 8 and 16 channels, coarse steps
    sp = job.optimizer.sparsity_report()
    assert sp["zero_channels"] == sp["target_channels"] > 0
    text = job.report(small)
    assert re.search(rf"budget \({field}\): asked 0\.500 of the dense model, reached {reached:.3f}", text)
    widths = {g.name: g.size - small.meta["otofx.shrink"].removed.get(g.name, 0)
              for g in job.analysis.prunable}
    poly = job.analysis.cost.flops if field == "target_flops" else job.analysis.cost.params
    assert poly.at(widths) == round(reached * poly.dense)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, True])
def test_budget_out_of_range_is_a_config_error(value):
    with pytest.raises(ConfigError, match="target_flops"):
        otofx.DHSPGConfig(target_flops=value)
    with pytest.raises(ConfigError, match="target_params"):
        otofx.HESSOConfig(target_params=value)


def test_two_budgets_are_a_config_error():
    with pytest.raises(ConfigError, match="set one budget"):
        otofx.DHSPGConfig(target_flops=0.5, target_params=0.5)
    with pytest.raises(ConfigError, match="set one budget"):
        otofx.H2SPGConfig(target_flops=0.5, target_latency=0.5)


# ---- H2SPG: erased structures priced by the cost model ------------------------------------------

@examples(1 / 3)
@given(spec=supernets(), fraction=st.sampled_from([0.3, 0.6, 0.99]), share=st.floats(0, 0.8),
       what=st.sampled_from(["target_flops", "target_params"]), seed=st.integers(0, 2**16))
def test_cost_with_erased_structures_equals_the_shrunk_subnet(spec, fraction, share, what, seed):
    """Erasing structures (nested ones, cat operands too) and pruning channels: the cost model
    without the erased regions predicts the subnet's FLOPs / parameters exactly."""
    note(f"spec = {spec!r}")
    torch.manual_seed(seed)
    x = torch.randn(INPUT)
    gm = otofx.trace(build(spec))
    analysis = otofx.analyze(gm, (x,))
    erased = erase_structures(gm, analysis, fraction, seed)
    views = GroupedViews(gm, analysis.prunable)
    score = torch.rand(views.num_channels, generator=torch.Generator().manual_seed(seed))
    chosen = choose(score, int(share * views.num_channels), views.group_of, views.sizes,
                    torch.ones(views.num_channels, dtype=torch.bool),
                    torch.zeros_like(views.sizes))
    zero_chosen(gm, views, chosen)
    widths = views.sizes - torch.bincount(views.group_of[chosen], minlength=len(views.sizes))
    small = otofx.shrink(gm, analysis)
    assert set(small.meta["otofx.shrink"].erased) == set(erased)
    reached = count_flops(small, (x,)) if what == "target_flops" else n_params(small)
    assert int(cost_of_widths(what, analysis, views.groups, erased)(widths)) == reached


def _train_h2spg(job, x, steps: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        xb = torch.randn(x.shape, generator=gen)
        y = torch.randint(0, 10, (x.shape[0],), generator=gen)
        loss = F.cross_entropy(job.module(xb), y)
        job.optimizer.zero_grad()
        loss.backward()
        job.optimizer.step()


@pytest.mark.parametrize("field", ["target_flops", "target_params"])
@pytest.mark.parametrize("fraction,structures", [(0.5, 0.5), (0.3, 0.5), (0.8, 0.9)])
def test_h2spg_lands_on_the_budget_by_structures_and_channels(field, fraction, structures):
    """A DARTS-like supernet: H2SPG erases structures (no more than the budget leaves room for)
    and prunes channels until the subnet lands within 1% of the budget, or one channel's cost;
    the report states asked, reached and by which choice."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    cfg = otofx.H2SPGConfig(lr=0.05, momentum=0.9, start_pruning_step=2, pruning_steps=6,
                            target_structure_sparsity=structures, **{field: fraction})
    job = otofx.compress(DartsSuperNet(c=16, cells=2), cfg, (x,))
    _train_h2spg(job, x, 10)
    small = job.subnet()
    base = job.baseline()
    dense = base["flops"] if field == "target_flops" else base["params"]
    reached = count_flops(small, (x,)) if field == "target_flops" else n_params(small)
    opt = job.optimizer
    sp = opt.sparsity_report()
    assert set(small.meta["otofx.shrink"].erased) <= set(sp["erased_structures"])
    assert len(opt.budget.erased) == sp["planned_structures"] > 0
    removed = small.meta["otofx.shrink"].removed
    widths = torch.tensor([g.size - removed.get(g.name, 0) for g in opt.budget.groups])
    assert int(opt.budget.cost(widths)) == reached       # the prediction is the subnet's cost
    # erasing alone stays above the budget: the channels land the rest
    assert opt.budget.full() >= fraction * dense
    unit = torch.eye(len(widths), dtype=torch.long)
    one_channel = max(abs(float(opt.budget.cost(widths + sign * unit[gi])) - reached)
                      for gi in range(len(widths)) for sign in (1, -1)
                      if 1 <= int(widths[gi]) + sign <= int(opt.budget.sizes[gi]))
    assert abs(reached / dense - fraction) <= max(0.01, one_channel / dense), (reached / dense,
                                                                               one_channel / dense)
    text = job.report(small)
    assert re.search(rf"budget \({field}\): asked {fraction:.3f} of the dense model, reached "
                     rf"{reached / dense:.3f} .* by erasing {sp['planned_structures']} structure",
                     text), text


def test_h2spg_budget_below_what_erasing_reaches_erases_fewer_structures():
    """A budget near dense leaves room for few structures: the structure target drops."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 16, 16)
    cfg = otofx.H2SPGConfig(lr=0.05, momentum=0.9, start_pruning_step=2, pruning_steps=6,
                            target_structure_sparsity=0.9, target_flops=0.95)
    job = otofx.compress(DartsSuperNet(c=16, cells=2), cfg, (x,))
    _train_h2spg(job, x, 10)
    sp = job.optimizer.sparsity_report()
    asked = round(0.9 * sp["erasable_structures"])
    assert sp["target_structures"] < asked
    small = job.subnet()
    assert abs(count_flops(small, (x,)) / job.baseline()["flops"] - 0.95) <= 0.01


# ---- group_divisible="auto" ---------------------------------------------------------------------

def test_auto_group_divisible_resolves_for_the_device_and_the_report_says_so():
    x = torch.randn(16, 3, 8, 8)
    job = otofx.compress(TinyCNN(), otofx.DHSPGConfig(lr=0.05, start_pruning_step=1, pruning_steps=2,
                                                      target_group_sparsity=0.5,
                                                      group_divisible="auto"), (x[:2],))
    assert job.optimizer.config.group_divisible == AUTO_DIVISIBLE["cpu"]
    _train(job, x, torch.randint(0, 10, (16,)), 4)
    small = job.subnet()
    removed = small.meta["otofx.shrink"].removed
    for g in job.analysis.prunable:
        kept = g.size - removed.get(g.name, 0)
        assert kept % AUTO_DIVISIBLE["cpu"] == 0 or kept == g.size, (g.name, kept)
    assert sum(removed.values()) > 0
    assert f"group_divisible: auto -> {AUTO_DIVISIBLE['cpu']}" in job.report(small)


@pytest.mark.parametrize("value", [0, -8, 2.5, "fast", True, None])
def test_bad_group_divisible_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"group_divisible = .*int >= 1 .* or 'auto'"):
        otofx.DHSPGConfig(group_divisible=value)


@pytest.mark.parametrize("divisible", [1, 4])
def test_budget_below_the_pinned_cost_names_the_smallest_reachable(divisible):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ConfigError, match="smallest reachable FLOPs budget") as info:
        otofx.compress(TinyCNN(), otofx.DHSPGConfig(target_flops=0.01, group_divisible=divisible),
                       (x,))
    smallest = float(re.search(r"Set target_flops >= (\d+\.\d+)", str(info.value)).group(1))
    assert 0.01 < smallest < 1
    job = otofx.compress(TinyCNN(), otofx.DHSPGConfig(target_flops=smallest,
                                                      group_divisible=divisible), (x,))
    keep = max(1, divisible)
    floor = job.analysis.cost.flops.at({g.name: min(keep, g.size) for g in job.analysis.prunable})
    assert floor <= smallest * job.analysis.cost.flops.dense < floor + 1e-4 * job.analysis.cost.flops.dense
