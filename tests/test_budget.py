"""FLOPs and parameter budgets (``target_flops`` / ``target_params``, ``otofx.budget``): the
subnet lands within 1% of the budget, or as near as ``group_divisible`` allows, measured on the
shrunk model; budgets out of reach are ``ConfigError``s that say what is reachable."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from otofx.passes.channels import tensor_named
from otofx.passes.table import AFFINE, PRODUCER
from strategies_transformer import BlockSpec, RandomTransformer, TransformerSpec
from zoo.small import TinyCNN

import otofx
from otofx.budget import count_for_budget, pick_for_budget
from otofx.errors import ConfigError
from otofx.flops import count_flops
from otofx.grouped import GroupedViews
from otofx.partition import choose


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def zero_channels(gm, views: GroupedViews, chosen: torch.Tensor) -> None:
    """Zero the producers and affines of the channels ``chosen`` (global index over views)."""
    for gi, g in enumerate(views.groups):
        lo, hi = int(views.offsets[gi]), int(views.offsets[gi + 1])
        idx = torch.nonzero(chosen[lo:hi]).view(-1)
        for m in g.slices(PRODUCER, AFFINE):
            t = tensor_named(gm, m.param)
            t.index_fill_(m.dim, m.index[idx].reshape(-1), 0.0)


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
        zero_channels(trial, GroupedViews(trial, trial_analysis.prunable), chosen)
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


def test_two_budgets_or_an_h2spg_budget_are_config_errors():
    with pytest.raises(ConfigError, match="set one budget"):
        otofx.DHSPGConfig(target_flops=0.5, target_params=0.5)
    with pytest.raises(ConfigError, match="H2SPG takes no FLOPs"):
        otofx.H2SPGConfig(target_flops=0.5)


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
