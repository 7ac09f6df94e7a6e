"""DHSPG, HESSO and H2SPG against ALGORITHMS.md: a naive per-channel loop written from the text
against the vectorised step, HESSO's staircase, DHSPG's projection doing the zeroing, the
allocation limits, and H2SPG's erased set against what shrink deletes."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from digits import DigitsCNN, digits, steps_per_epoch, train
from hypothesis import given
from hypothesis import strategies as st
from otofx.passes.table import AFFINE, PRODUCER
from strategies_budget import examples

import otofx
from otofx.partition import group_limits

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _job(cfg, seed=0):
    torch.manual_seed(seed)
    return otofx.compress(DigitsCNN(), cfg, (X,))


def _grads(module, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.grad = scale * torch.randn(p.shape, generator=g)


def _channel_vectors(job, tensors):
    """Per prunable channel (in the optimizer's order), the concatenation of its producer
    slices of ``tensors`` (name -> tensor): a loop over groups, channels and slices."""
    out = []
    for g in job.optimizer.views.groups:
        for c in range(g.size):
            parts = [tensors[m.param].index_select(m.dim, m.index[c]).reshape(-1)
                     for m in g.slices(PRODUCER, AFFINE) if m.param in tensors]
            out.append(torch.cat(parts).double())
    return out


def _naive_dhspg_step(job, x, d, state, lr):
    """ALGORITHMS.md's DHSPG steps 3-4 channel by channel, with otofx's scheduled floor
    (``kappa * rho / lr``) and the fallback's cap: the new value of every channel's vector and
    which channels the projection zeroes."""
    cfg = job.optimizer.config
    new, zeroed = [], []
    for c, (xg, dg) in enumerate(zip(x, d)):
        candidate = bool(state["redundant"][c]) and not bool(state["pruned"][c]) \
            and not bool(state["released"][c])
        if bool(state["pruned"][c]):
            new.append(xg)             # held at zero, no update
            continue
        xhat = xg - lr * dg
        if not candidate:
            new.append(xhat)
            continue
        xn, xd = xg.norm(), torch.dot(xg, dg)
        lam = cfg.lmbda
        if xd < 0:
            lo = -xd / xn
            hi = -dg.norm() ** 2 * xn / xd
            lam = min(max(cfg.lmbda_amplify * lo, cfg.lmbda), cfg.lmbda * cfg.hat_lmbda_coeff)
            if lam >= hi:
                lam = (lo + hi) / 2
        if cfg.pull == "scheduled":
            lam = max(lam, state["kappa"] * float(state["rho"][c]) / lr)
        xhat = xhat - lr * lam * xg / xn
        if torch.dot(xhat, xg) < cfg.epsilon * xn ** 2:
            new.append(torch.zeros_like(xg))
            zeroed.append(c)
            continue
        if state.get("fallback") is not None and bool(state["fallback"][c]):
            steps_left = cfg.end_pruning_step - job.optimizer.steps_taken - 1
            cap = float(state["fallback_norm"][c]) * steps_left / (
                cfg.end_pruning_step - state["fallback_step"])
            if xhat.norm() > cap:
                xhat = xhat * cap / xhat.norm()
        new.append(xhat)
    return new, zeroed


@pytest.mark.filterwarnings("ignore:DHSPG. the half-space projection")
@examples(0.15)
@given(seed=st.integers(0, 10_000), pull=st.sampled_from(["scheduled", "reference"]),
       epsilon=st.sampled_from([0.0, 0.3]), capped=st.booleans())
def test_vectorised_step_is_the_naive_loop(seed, pull, epsilon, capped):
    """One DHSPG step on random weights and gradients (plain SGD: the direction is the
    gradient) equals the per-channel loop over the analysis' slices, with and without the
    fallback's cap."""
    steps = 10
    cfg = otofx.DHSPGConfig(lr=0.1, target_group_sparsity=0.6, start_pruning_step=0,
                            pruning_steps=steps, pull=pull, epsilon=epsilon,
                            fallback_start=0.1 if capped else None, allocation="global")
    job = _job(cfg, seed)
    opt = job.optimizer
    _grads(job.module, seed, 0.1)
    opt.step()                                        # the partition step
    st_ = opt.otofx_state
    _grads(job.module, seed + 1, 0.1)
    tiny = torch.rand(opt.views.num_channels, generator=torch.Generator().manual_seed(seed)) < 0.3
    with torch.no_grad():       # some channels small enough to cross the half-space
        opt.views.scale_rows(torch.where(tiny, 1e-4, 1.0).double(), tiny)
    params = {n: p.detach().clone() for n, p in job.module.named_parameters()}
    grads = {n: p.grad.clone() for n, p in job.module.named_parameters()}
    if capped:      # the fallback starts at this step: let the optimizer pick its channels
        opt._start_fallback(opt.views, st_, {id(p): otofx.grouped.Direction(p.grad)
                                            for p in job.module.parameters()})
        assert bool(st_["fallback"].any())
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in st_.items()}
    room = before["goal"] - int((before["pruned"] & before["redundant"]).sum())
    want, zeroed = _naive_dhspg_step(job, _channel_vectors(job, params),
                                     _channel_vectors(job, grads), before, cfg.lr)
    opt.step()
    got = _channel_vectors(job, {n: p.detach() for n, p in job.module.named_parameters()})
    if len(zeroed) <= room:
        assert sorted(torch.nonzero(st_["pruned"] & ~before["pruned"]).view(-1).tolist()) == zeroed
    else:
        assert int((st_["pruned"] & ~before["pruned"]).sum()) == room
    for c, (a, b) in enumerate(zip(got, want)):
        if c in zeroed and len(zeroed) > room:
            continue                                  # which of them are admitted: tested below
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"channel {c}")


def test_projection_admits_only_what_the_goal_leaves_room_for():
    """More crossings than the target still needs: only that many become zero, the deepest."""
    cfg = otofx.DHSPGConfig(lr=0.1, target_group_sparsity=0.3, start_pruning_step=0,
                            pruning_steps=10, epsilon=0.99, allocation="global")
    job = _job(cfg)
    _grads(job.module, 0, 0.1)
    job.optimizer.step()
    sp = job.optimizer.sparsity_report()
    assert sp["zeroed_by_projection"] == sp["target_channels"] == sp["zero_channels"]


def _digits_run(cfg_kind, epochs=6, seed=0, **kw):
    data = digits()
    steps = epochs * steps_per_epoch(data[0])
    common = dict(lr=0.05, momentum=0.9, target_group_sparsity=0.5,
                  start_pruning_step=steps // 6, pruning_steps=steps // 2)
    common.update(kw)
    torch.manual_seed(seed)
    job = otofx.compress(DigitsCNN(), cfg_kind(**common), (data[0][0][:2],))
    zeros = []
    for e in range(epochs):
        train(job.module, job.optimizer, data[0], 1, seed=e,
              on_step=lambda _: zeros.append(job.optimizer.sparsity_report()["zero_channels"]))
    return job, zeros, common


def test_dhspg_projection_zeroes_channels_through_the_phase():
    """The zero count rises during the phase: some but not all of the target half way up the
    ramp, above half the target before its last fifth, mostly by the projection, and exactly
    the target at its end."""
    job, zeros, cfg = _digits_run(otofx.DHSPGConfig)
    sp = job.optimizer.sparsity_report()
    start, length = cfg["start_pruning_step"], cfg["pruning_steps"]
    before_last_fifth = zeros[start + int(0.8 * length) - 1]
    assert before_last_fifth > sp["target_channels"] / 2
    assert zeros[start] < sp["target_channels"] / 4            # no jump at the partition
    middle = zeros[start + int(0.375 * length)]                 # half way up the ramp: a rise,
    assert 0.15 * sp["target_channels"] < middle < 0.85 * sp["target_channels"]   # not a step
    assert sp["zero_channels"] == sp["target_channels"]
    assert sp["zeroed_by_projection"] > sp["zeroed_by_fallback"]
    assert sp["zeroed_by_projection"] + sp["zeroed_by_fallback"] == sp["target_channels"]
    assert "zeroed by the half-space projection" in job.report()


def test_a_pull_too_weak_for_the_phase_falls_back_and_says_so():
    """OTOv2's lambda alone cannot zero a channel of norm ~1 in a short phase: the fallback
    meets the target, warns once, and the report says what each mechanism did."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job, zeros, _ = _digits_run(otofx.DHSPGConfig, epochs=2, pull="reference")
    sp = job.optimizer.sparsity_report()
    assert sp["zero_channels"] == sp["target_channels"]
    assert sp["zeroed_by_fallback"] > sp["target_channels"] / 2
    assert sum("fallback" in str(w.message) for w in caught) == 1
    assert "warning:" in job.report() and "by the fallback" in job.report()


def test_tolerance_lets_the_projection_choose_among_more_candidates():
    job, _, _ = _digits_run(otofx.DHSPGConfig, epochs=3, tolerance_group_sparsity=0.1)
    st_ = job.optimizer.otofx_state
    sp = job.optimizer.sparsity_report()
    assert int(st_["redundant"].sum()) > sp["target_channels"]
    assert sp["zero_channels"] == sp["target_channels"]
    zero = job.optimizer.views.is_zero()
    assert bool((zero <= st_["redundant"]).all())               # only candidates were zeroed
    released = st_["redundant"] & ~zero
    assert bool(released.any())
    assert bool((st_["by"][released] == 0).all())


def test_reference_partition_is_otov2s_score():
    """``partition="reference"``: the candidates are the top of 0.5 normalize(cos(x, d)) + 0.5
    normalize(1 / (||x|| / |g|)), computed here channel by channel."""
    cfg = otofx.DHSPGConfig(lr=0.1, target_group_sparsity=0.4, start_pruning_step=0,
                            pruning_steps=10, partition="reference", allocation="global")
    job = _job(cfg, 3)
    _grads(job.module, 3, 0.1)
    params = {n: p.detach().clone() for n, p in job.module.named_parameters()}
    grads = {n: p.grad.clone() for n, p in job.module.named_parameters()}
    job.optimizer.step()
    xs, ds = _channel_vectors(job, params), _channel_vectors(job, grads)
    cos = torch.tensor([float(torch.dot(x, d) / (x.norm() * d.norm())) for x, d in zip(xs, ds)])
    inv = torch.tensor([1 / (float(x.norm()) / x.numel() + 1e-6) for x in xs])

    def norm(v):
        return (v - v.min()) / (v.max() - v.min())
    score = 0.5 * norm(cos) + 0.5 * norm(inv)
    chosen = job.optimizer.otofx_state["redundant"]
    k = int(chosen.sum())
    assert k == job.optimizer.target
    # every chosen channel scores at least as high as every one left (up to float ties)
    assert float(score[chosen].min()) >= float(score[~chosen].max()) - 1e-9


# ---- HESSO --------------------------------------------------------------------------------------

def test_hesso_staircase_and_linear_decay():
    """With zero gradients (the base step moves nothing) HESSO's schedule shows alone: after
    period p exactly round(K (p + 1) / P) channels are zero, and inside a period an annealed
    channel's norm falls linearly: (D - tau) / D of its norm at the period's start."""
    periods, length = 3, 4
    cfg = otofx.HESSOConfig(lr=0.1, target_group_sparsity=0.5, start_pruning_step=1,
                            pruning_steps=periods * length, pruning_periods=periods)
    job = _job(cfg)
    opt = job.optimizer
    K = opt.target
    for p in job.module.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()                                          # warm-up
    for period in range(periods):
        start = opt.views.products({}, None)[0].sqrt()
        for tau in range(length):
            opt.step()
            annealing = opt.otofx_state["annealing"] if tau < length - 1 else None
            norms = opt.views.products({}, None)[0].sqrt()
            if annealing is not None:
                torch.testing.assert_close(norms[annealing],
                                           start[annealing] * (length - tau - 1) / length)
        zero = int(opt.views.is_zero().sum())
        assert zero == round(K * (period + 1) / periods)


def test_hesso_normalises_saliencies_over_live_channels():
    """A pruned (zero) channel does not set the scale: the live channels' importance is the
    same whether or not pruned channels are in the set."""
    job = _job(otofx.HESSOConfig(lr=0.1))
    _grads(job.module, 0)
    s = job.optimizer.views.saliencies({id(p): otofx.grouped.Direction(p.grad)
                                        for p in job.module.parameters()})
    alive = torch.ones(job.optimizer.views.num_channels, dtype=torch.bool)
    alive[::3] = False
    for t in (s.magnitude, s.mean_magnitude, s.cosine, s.inner):
        t[~alive] = 0.0
    got = s.importance(alive)[alive]
    live = otofx.grouped.Saliencies(*(t[alive] for t in (s.magnitude, s.mean_magnitude,
                                                         s.cosine, s.inner)))
    torch.testing.assert_close(got, live.importance())
    assert not torch.allclose(s.importance()[alive], got)


# ---- allocation ---------------------------------------------------------------------------------

@examples(0.75)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8), share=st.floats(0, 0.95))
def test_allocation_limits(sizes, share):
    sizes = torch.tensor(sizes)
    uniform = group_limits(sizes, share, "uniform")
    assert bool((uniform <= sizes - 1).all()) and bool((uniform >= 0).all())
    n = int(sizes.sum())
    if int((sizes - 1).sum()) >= round(share * n):
        assert int(uniform.sum()) == round(share * n)
    if not bool((uniform == sizes - 1).any()):       # no group at its floor: all within one
        assert bool(((uniform - sizes * share).abs() < 1 + 1e-9).all())
    balanced = group_limits(sizes, share, "balanced")
    floor = torch.tensor([math.ceil(0.5 * (1 - share) * int(s)) for s in sizes])
    assert bool((sizes - balanced >= torch.maximum(floor, torch.ones_like(floor))).all())
    assert bool((group_limits(sizes, share, "global") == sizes - 1).all())


@pytest.mark.parametrize("kind", [otofx.DHSPGConfig, otofx.HESSOConfig])
@pytest.mark.parametrize("allocation", ["balanced", "uniform"])
def test_no_layer_collapses(kind, allocation):
    """At target 0.7 no group keeps fewer channels than its allocation floor allows."""
    job, _, _ = _digits_run(kind, epochs=2, target_group_sparsity=0.7, allocation=allocation,
                            **({"pruning_periods": 2} if kind is otofx.HESSOConfig else {}))
    v = job.optimizer.views
    zero = job.optimizer.views.is_zero()
    lost = torch.bincount(v.group_of[zero], minlength=len(v.sizes))
    assert int(lost.sum()) == job.optimizer.target
    limit = group_limits(v.sizes, job.optimizer.target / v.num_channels, allocation)
    assert bool((lost <= limit).all()), (lost, limit)
    if allocation == "uniform":
        assert torch.equal(lost, limit)


@pytest.mark.parametrize("kind", [otofx.DHSPGConfig, otofx.HESSOConfig, otofx.H2SPGConfig])
@pytest.mark.parametrize("budget,resolved", [({}, "balanced"), ({"target_flops": 0.5}, "balanced"),
                                             ({"target_latency": 0.99}, "uniform")])
def test_auto_allocation_resolves_when_the_optimizer_is_built(kind, budget, resolved, monkeypatch):
    """``allocation="auto"`` (the default) is balanced, except uniform under a latency budget
    (whose widths are timed before the scores exist); the optimizer sets it on the config, the
    report says so, and ``group_limits`` refuses an unresolved "auto"."""
    from otofx import budget as budget_mod

    monkeypatch.setattr(budget_mod, "calibrate_latency", lambda b, *a, **k: b)   # no timing
    data = digits()
    config = kind(lr=0.05, start_pruning_step=0, pruning_steps=4, **budget)
    assert config.allocation == "auto"
    job = otofx.compress(DigitsCNN(), config, (data[0][0][:2],))
    assert config.allocation == job.optimizer.config.allocation == resolved
    assert f"allocation: auto -> {resolved}" in job.report()
    explicit = kind(lr=0.05, allocation="global", **budget)
    otofx.compress(DigitsCNN(), explicit, (data[0][0][:2],))
    assert explicit.allocation == "global"
    with pytest.raises(ValueError, match="resolve 'auto'"):
        group_limits(torch.tensor([4, 8]), 0.5, "auto")


# ---- H2SPG --------------------------------------------------------------------------------------

def test_h2spg_erased_set_is_what_shrink_deletes():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from zoo.supernets import SUPERNETS
    torch.manual_seed(0)
    net = SUPERNETS["resnet"]()
    x = torch.randn(8, 1, 8, 8)
    cfg = otofx.H2SPGConfig(lr=0.05, momentum=0.9, start_pruning_step=2, pruning_steps=12,
                            target_structure_sparsity=0.5)
    job = otofx.compress(net, cfg, (x[:2],))
    gen = torch.Generator().manual_seed(0)
    for _ in range(16):
        xb, yb = torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        loss = F.cross_entropy(job.module(xb), yb)
        job.optimizer.zero_grad()
        loss.backward()
        job.optimizer.step()
    report = job.optimizer.sparsity_report()
    small = job.subnet()
    assert report["erased_structures"]
    assert set(small.meta["otofx.shrink"].erased) == set(report["erased_structures"])
    assert report["structures_zeroed_by_projection"] + report["structures_zeroed_by_fallback"] > 0


# ---- batch-norm statistics ----------------------------------------------------------------------

def test_recalibrated_statistics_are_the_average_over_the_batches():
    """After recalibration every BatchNorm holds the plain mean and (unbiased) variance of its
    inputs over the batches, dropout stayed off, and modes and momentum are restored."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Dropout(0.5),
                                torch.nn.BatchNorm2d(4))
    model.train()
    batches = [torch.randn(8, 1, 6, 6) for _ in range(3)]
    assert otofx.recalibrate_batchnorm(model, batches) == 3
    with torch.no_grad():
        feats = [model[0](b) for b in batches]         # dropout off: the conv output itself
    bn = model[2]
    means = torch.stack([f.mean((0, 2, 3)) for f in feats])
    variances = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats])
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    assert model.training and model[1].training and bn.momentum == 0.1
    before = bn.running_mean.clone()
    with pytest.raises(otofx.ConfigError, match="no batch"):
        otofx.recalibrate_batchnorm(model, [])
    assert torch.equal(bn.running_mean, before)
