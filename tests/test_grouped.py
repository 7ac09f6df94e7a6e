"""The optimizers' vectorised machinery against plain references: the base step against torch's
own optimizers, per-channel products against a loop over channels, per-row coefficients against
the update they stand for, the vectorised channel pick against the greedy loop."""

import copy

import pytest
import torch
from digits import DigitsCNN
from hypothesis import given
from hypothesis import strategies as st
from strategies_budget import examples

import otofx
import otofx.fused
from otofx.grouped import Direction
from otofx.optim_base import GroupSparsityOptimizer
from otofx.partition import choose

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _job(cfg):
    torch.manual_seed(0)
    return otofx.compress(DigitsCNN(), cfg, (X,))


def _grads(module, seed):
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.grad = torch.randn(p.shape, generator=g)


TORCH = {"sgd": lambda ps, c: torch.optim.SGD(ps, lr=c.lr, momentum=c.momentum,
                                              weight_decay=c.weight_decay),
         "adam": lambda ps, c: torch.optim.Adam(ps, lr=c.lr, weight_decay=c.weight_decay),
         "adamw": lambda ps, c: torch.optim.AdamW(ps, lr=c.lr, weight_decay=c.weight_decay)}


@examples(0.2)
@given(variant=st.sampled_from(sorted(TORCH)), kind=st.sampled_from(["dhspg", "hesso"]),
       momentum=st.sampled_from([0.0, 0.9]), weight_decay=st.sampled_from([0.0, 1e-2]),
       zero_target=st.booleans(), foreach=st.booleans(), fused=st.booleans())
def test_base_step_is_torchs(variant, kind, momentum, weight_decay, zero_target, foreach, fused):
    """With target 0 (pruning phase, nothing to prune) or before the pruning phase, otofx trains
    exactly as torch.optim.SGD / Adam / AdamW (to float rounding: SGD's momentum is fused, and
    with ``fused`` torch's fused kernels take the step), one parameter at a time (CPU) or with the
    foreach kernels (other devices; forced here)."""
    config = otofx.DHSPGConfig if kind == "dhspg" else otofx.HESSOConfig
    cfg = config(lr=0.05 if variant == "sgd" else 1e-2, variant=variant, momentum=momentum,
                 weight_decay=weight_decay, target_group_sparsity=0.0 if zero_target else 0.5,
                 start_pruning_step=0 if zero_target else 50, pruning_steps=4, fused=fused)
    job = _job(cfg)
    twin = copy.deepcopy(job.module)
    base = TORCH[variant](twin.parameters(), cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GroupSparsityOptimizer, "loop_devices", () if foreach else ("cpu",))
        for step in range(5):
            _grads(job.module, step)
            _grads(twin, step)
            job.optimizer.step()
            base.step()
    for (name, a), b in zip(job.module.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def _naive_products(views, directions):
    """Per channel <x, x>, <x, d>, <d, d> by a loop over channels and their slices."""
    out = torch.zeros(3, views.num_channels, dtype=torch.float64)
    for r in views.rows:
        d = directions[id(r.param)]
        full = d.tensor / d.divisor + d.decay * r.param.detach()
        for i, c in zip(r.index.tolist(), r.channel.tolist()):
            x = r.param.detach().select(r.dim, i).double()
            y = full.select(r.dim, i).double()
            out[:, c] += torch.stack([(x * x).sum(), (x * y).sum(), (y * y).sum()])
    return out


@examples(0.15)
@given(seed=st.integers(0, 1000), divisor=st.sampled_from([1.0, 0.3]),
       decay=st.sampled_from([0.0, 0.1]), masked=st.booleans())
def test_products_match_a_loop_over_channels(seed, divisor, decay, masked):
    job = _job(otofx.DHSPGConfig(lr=0.1))
    v = job.optimizer.views
    g = torch.Generator().manual_seed(seed)
    directions = {id(r.param): Direction(torch.randn(r.param.shape, generator=g), None, divisor,
                                         decay) for r in v.rows}
    channels = torch.rand(v.num_channels, generator=g) < 0.5 if masked else None
    got = torch.stack(v.products(directions, channels))
    want = _naive_products(v, directions)
    if masked:
        want[:, ~channels] = 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@examples(0.15)
@given(seed=st.integers(0, 1000))
def test_row_coefficients_are_the_update_they_stand_for(seed):
    """Rows of active channels become a (x - lr d) + b d, rows of frozen channels stay as they
    are, every other row takes x - lr d; a is only applied where it may differ from 1."""
    job = _job(otofx.DHSPGConfig(lr=0.1))
    v = job.optimizer.views
    g = torch.Generator().manual_seed(seed)
    n, lr = v.num_channels, 0.1
    active, frozen = torch.rand(n, generator=g) < 0.4, torch.rand(n, generator=g) < 0.2
    a, b = torch.rand(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g,
                                                                       dtype=torch.float64)
    lr_of = {id(r.param): lr for r in v.rows}
    coefficients = {id(p): (p, big_a, big_b)
                    for p, big_a, big_b in v.coefficients(a, b, active, active, frozen, lr_of)}
    for r in v.rows:
        x = r.param.detach()
        d = torch.randn(x.shape, generator=g)
        want = x - lr * d
        for i, c in zip(r.index.tolist(), r.channel.tolist()):
            row = want.select(r.dim, i)
            if frozen[c]:
                row.copy_(x.select(r.dim, i))
            elif active[c]:
                row.copy_(a[c].float() * (x.select(r.dim, i) - lr * d.select(r.dim, i))
                          + b[c].float() * d.select(r.dim, i))
        if id(r.param) not in coefficients:
            assert not bool((active | frozen)[r.channel].any())
            continue
        _, big_a, big_b = coefficients[id(r.param)]
        got = (x if big_a is None else big_a * x) + big_b * d
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        frozen_rows = r.index[frozen[r.channel]]
        assert torch.equal(got.index_select(r.dim, frozen_rows), x.index_select(r.dim, frozen_rows))


def _greedy(score, count, group_of, sizes, available, already, divisible):
    """The reference: visit channels by descending score, take one while its group has room."""
    keep_min = max(1, divisible)
    order = torch.argsort(torch.where(available, score, torch.full_like(score, -float("inf"))),
                          descending=True, stable=True)
    taken, chosen, n = torch.zeros(len(sizes), dtype=torch.long), torch.zeros_like(available), 0
    cap = sizes - keep_min - already
    for c in order.tolist():
        if n >= count or not bool(available[c]):
            break
        if taken[group_of[c]] < cap[group_of[c]]:
            taken[group_of[c]] += 1
            chosen[c] = True
            n += 1
    if divisible > 1:
        for grp in range(len(sizes)):
            drop = (divisible - int(sizes[grp] - already[grp] - taken[grp]) % divisible) % divisible
            mine = torch.nonzero(chosen & (group_of == grp)).view(-1)
            chosen[mine[torch.argsort(score[mine])[:drop]]] = False
    return chosen


@given(data=st.data(), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5),
       divisible=st.integers(1, 3), ties=st.booleans())
def test_vectorised_choose_is_the_greedy_pick(data, sizes, divisible, ties):
    sizes_t = torch.tensor(sizes)
    n = int(sizes_t.sum())
    group_of = torch.repeat_interleave(torch.arange(len(sizes)), sizes_t)
    values = st.integers(0, 3) if ties else st.floats(-10, 10, allow_nan=False)
    score = torch.tensor(data.draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float64)
    available = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    already = torch.tensor([data.draw(st.integers(0, s // 2)) for s in sizes])
    count = data.draw(st.integers(0, n))
    args = (score, count, group_of, sizes_t, available, already, divisible)
    assert torch.equal(choose(*args), _greedy(*args))


@pytest.mark.parametrize("variant", ["sgd", "adamw"])
@pytest.mark.parametrize("foreach", [False, True])
def test_pruned_rows_take_no_update_and_new_ones_become_exactly_zero(foreach, variant,
                                                                      monkeypatch):
    """After the pruning phase the pruned rows stay exactly zero under momentum and weight decay
    (SGD: they take no update at all; Adam: the fused base step, then zero again), and the rest
    keeps training."""
    monkeypatch.setattr(GroupSparsityOptimizer, "loop_devices", () if foreach else ("cpu",))
    cfg = otofx.HESSOConfig(lr=0.05 if variant == "sgd" else 1e-2, variant=variant, momentum=0.9,
                            weight_decay=1e-2, target_group_sparsity=0.5,
                            start_pruning_step=1, pruning_steps=2, pruning_periods=2)
    job = _job(cfg)
    opt = job.optimizer
    for step in range(6):
        _grads(job.module, step)
        before = {n: p.detach().clone() for n, p in job.module.named_parameters()}
        opt.step()
        pruned = opt.otofx_state["pruned"]
        zero = opt.views.is_zero()
        assert bool(zero[pruned].all())
        if step >= 3:     # the pruning phase is over: exactly the target, rows held
            assert int(zero.sum()) == opt.target == int(pruned.sum())
            for r in opt.views.rows:
                moved = r.param.detach() != before[r.name]
                rows = r.index[pruned[r.channel]]
                assert not bool(moved.index_select(r.dim, rows).any()), r.name
                assert bool(moved.index_select(r.dim, r.index[~pruned[r.channel]]).any()), r.name


@pytest.mark.parametrize("variant", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("kind", ["dhspg", "hesso"])
def test_fused_kernels_train_as_the_unfused_step(kind, variant, monkeypatch):
    """Torch's fused kernels (``fused=True``, the default) take the plain part of each step:
    through warm-up, the pruning phase and after it they give the unfused step's parameters
    to float rounding, and the same pruned channels."""
    calls = []
    step_fn = otofx.fused.step
    monkeypatch.setattr(otofx.fused, "step", lambda *a: calls.append(len(a[0])) or step_fn(*a))
    config = otofx.DHSPGConfig if kind == "dhspg" else otofx.HESSOConfig
    jobs = []
    for fused in (True, False):
        calls.clear()
        cfg = config(lr=0.05 if variant == "sgd" else 1e-2, variant=variant, momentum=0.9,
                     weight_decay=1e-3, target_group_sparsity=0.5, start_pruning_step=2,
                     pruning_steps=4, fused=fused)
        job = _job(cfg)
        for step in range(9):
            _grads(job.module, step)
            job.optimizer.step()
        assert bool(calls) == fused, calls      # the kernels ran, and only when asked for
        jobs.append(job)
    a, b = jobs
    assert torch.equal(a.optimizer.otofx_state["pruned"], b.optimizer.otofx_state["pruned"])
    assert int(a.optimizer.views.is_zero().sum()) == a.optimizer.target
    for (name, p), q in zip(a.module.named_parameters(), b.module.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_sgd_starts_the_momentum_of_a_parameter_with_a_late_gradient():
    """A parameter without a gradient in the first step gets its momentum buffer when its first
    gradient comes, as in torch.optim.SGD (the fused kernel's first-step flag is per call)."""
    cfg = otofx.DHSPGConfig(lr=0.05, momentum=0.9, target_group_sparsity=0.5,
                            start_pruning_step=50, pruning_steps=4)
    job = _job(cfg)
    twin = copy.deepcopy(job.module)
    base = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    late = [n for n, _ in job.module.named_parameters()][-1]
    for step in range(4):
        for module in (job.module, twin):
            _grads(module, step)
            if step == 0:
                module.get_parameter(late).grad = None
        job.optimizer.step()
        base.step()
    for (name, p), q in zip(job.module.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("variant", ["adam", "adamw"])
def test_fused_adam_direction_is_the_single_tensor_one(variant):
    """The pruning step's Adam/AdamW direction through torch's fused kernel on a zeroed scratch
    buffer: the moments and the direction ``m^ / (sqrt(v^) + eps)`` of torch's single-tensor
    arithmetic to float rounding (the kernel orders its operations its own way), Adam's L2 term
    in the gradient, whatever the scratch buffer held before."""
    g = torch.Generator().manual_seed(3)
    p = torch.randn(6, 5, generator=g)
    p.grad = torch.randn(6, 5, generator=g)
    group = {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.9, 0.99), "eps": 1e-8}
    state = {"exp_avg": torch.randn(6, 5, generator=g) * 0.1,
             "exp_avg_sq": torch.rand(6, 5, generator=g) * 0.1}
    m, v = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    grad = p.grad + 0.1 * p if variant == "adam" else p.grad
    m.lerp_(grad, 0.1)
    v.mul_(0.99).addcmul_(grad, grad, value=0.01)
    t = 3 + 1
    expected = m / (1 - 0.9 ** t) / (v.sqrt() / (1 - 0.99 ** t) ** 0.5 + 1e-8)
    scratch = [torch.full_like(p, 7.0)]        # whatever it held: zeroed first
    (d,) = otofx.fused.adam_directions([p], [state], group, variant, 3, scratch)
    torch.testing.assert_close(state["exp_avg"], m, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(state["exp_avg_sq"], v, rtol=1e-6, atol=1e-9)
    assert d is scratch[0]
    torch.testing.assert_close(d, expected, rtol=1e-6, atol=0)
