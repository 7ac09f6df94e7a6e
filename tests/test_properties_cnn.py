"""Property tests: otofx's invariants on random CNNs (see tests/strategies.py for the grammar).

* exactness: after zeroing random channels of random groups, ``shrink``'s smaller model computes
  what the zeroed model computes (biases/affines zeroed too, or left as constants to fold);
* parameter count: the smaller model has exactly the parameters the groups predict, and is
  really smaller whenever something was zeroed (unless shrink reports it kept channels);
* never mutate: trace, analyze and shrink leave the user's model and the given graph alone;
* reuse: an analysis made on the zeroed weights lends shrink its run, with the same result as a
  shrink that runs the graph itself;
* conservatism: ops otofx has no rule for pin every group they touch, and shrink stays exact;
* the group that reaches the graph output through the linear head is pinned;
* ``torch.compile`` of the smaller model runs and matches.

Profiles (tests/conftest.py): ``HYPOTHESIS_PROFILE=ci`` (default, deterministic) or ``fuzz``.
A falsifying example prints a self-contained script that rebuilds the model.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from otofx.passes.meta import REFERENCE
from otofx.passes.shrink import _mutates
from strategies import cnn_models, handwritten
from strategies_budget import examples

import otofx
from otofx.testing import zero_groups

RTOL, ATOL = 1e-4, 1e-5

# fraction of each prunable group to zero, in [0, 1] on a grid of 1/20: float draws cluster at 0
# (nothing zeroed, a wasted example); this shrinks towards 1.0 (zero all but one channel)
fractions = st.integers(0, 20).map(lambda k: 1.0 - k / 20)
seeds = st.integers(0, 2**16)


# ---- helpers --------------------------------------------------------------------------------------


def note(message: str) -> None:
    """``hypothesis.note`` inside a property; printed (shown by pytest on failure) outside one."""
    try:
        hypothesis_note(message)
    except InvalidArgument:
        print(message)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` as integers of the same width, so -0.0 != 0.0 and NaN == NaN (bit identity)."""
    t = t.detach().cpu().contiguous()
    if t.is_floating_point():
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
        return t.view(ints[t.element_size()])
    return t


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: _bits(v).clone() for k, v in module.state_dict(keep_vars=True).items()}


def assert_same_state(before: dict, module: torch.nn.Module, what: str) -> None:
    after = snapshot(module)
    assert after.keys() == before.keys(), f"{what}: state_dict keys changed"
    for k in before:
        assert before[k].dtype == after[k].dtype and before[k].shape == after[k].shape, (
            f"{what}: '{k}' changed dtype/shape {tuple(before[k].shape)} -> "
            f"{tuple(after[k].shape)}")
        assert torch.equal(before[k], after[k]), f"{what}: the values of '{k}' changed"


def assert_matches(small, big, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, got = big(x), small(x)
    assert got.shape == expected.shape, f"shape {tuple(got.shape)} != {tuple(expected.shape)}"
    err = (got - expected).abs().max().item()
    assert torch.allclose(got, expected, rtol=RTOL, atol=ATOL), f"max abs error {err:.3g}"


def prepare(case, fraction: float, zseed: int, affine: bool):
    """Build, trace, analyse, zero; returns (model, gm, analysis, zeroed)."""
    model, leaves = case.build()
    gm = otofx.trace(model, leaf_modules=leaves)
    analysis = otofx.analyze(gm, (case.input(0),))
    zeroed = zero_groups(gm, analysis, fraction, seed=zseed, affine=affine)
    note(f"groups: {analysis.groups}")
    note(f"zeroed: { {k: v.tolist() for k, v in zeroed.items()} }")
    return model, gm, analysis, zeroed


def shrink_and_check(case, gm, analysis):
    small = otofx.shrink(gm, analysis)
    small.eval()
    gm.eval()
    stats = small.meta["otofx.shrink"]
    note(f"removed: {stats.removed}, kept constant: {stats.kept}, "
         f"folded: {stats.folded}")
    note(f"smaller graph:\n{small.code}")
    for seed in (0, 1):     # the example input shrink saw, and one it did not
        assert_matches(small, gm, case.input(seed))
    return small, stats


def assert_removed_what_was_zeroed(stats, zeroed: dict) -> None:
    """Shrink removed only zeroed channels, and every zeroed channel is removed or reported kept."""
    for name, idx in stats.removed_channels.items():
        assert name in zeroed, f"shrink removed channels of '{name}', which nobody zeroed"
        assert set(idx.tolist()) <= set(zeroed[name].tolist()), (
            f"shrink removed channels of '{name}' that were not zeroed")
        assert stats.removed[name] == idx.numel()
    for name, idx in zeroed.items():
        assert stats.removed.get(name, 0) + stats.kept.get(name, 0) == idx.numel(), (
            f"'{name}': {idx.numel()} zeroed, {stats.removed.get(name, 0)} removed, "
            f"{stats.kept.get(name, 0)} reported kept")


def assert_predicted_size(gm, small, analysis, stats) -> None:
    """Exactly the parameters the groups predict, plus any bias shrink had to create on a bias-less
    layer to fold a removed channel's constant (a BatchNorm without affine leaves -mean/std behind
    even when everything zero_groups can zero is zero; with ``affine=False`` every bias does)."""
    old_names = {n for n, _ in gm.named_parameters()}
    created = {n: p.numel() for n, p in small.named_parameters() if n not in old_names}
    for name in created:
        assert name.endswith(".bias") and name.rsplit(".", 1)[0].replace(".", "_") in stats.folded, (
            f"shrink created parameter '{name}' without folding into it")
    assert n_params(small) == analysis.params_after(stats.removed_channels) + sum(
        created.values()), f"created biases: {created}"


# ---- 1 & 2: exactness and parameter count ---------------------------------------------------------


def shrink_zeroed(case, fraction: float, zseed: int, affine: bool):
    """Zero, shrink (exactly), check what was removed and the parameter count; (gm, small, stats, zeroed)."""
    _, gm, analysis, zeroed = prepare(case, fraction, zseed, affine=affine)
    small, stats = shrink_and_check(case, gm, analysis)
    assert_removed_what_was_zeroed(stats, zeroed)
    assert_predicted_size(gm, small, analysis, stats)
    return gm, small, stats, zeroed


@given(case=cnn_models(), fraction=fractions, zseed=seeds)
def test_shrink_exact_and_predicted_size_affine_zeroed(case, fraction, zseed):
    gm, small, stats, zeroed = shrink_zeroed(case, fraction, zseed, affine=True)
    if zeroed and not stats.kept:
        assert n_params(small) < n_params(gm), "channels were zeroed but nothing got smaller"


@given(case=cnn_models(), fraction=fractions, zseed=seeds)
def test_shrink_exact_when_removed_channels_are_constants(case, fraction, zseed):
    # affine=False: biases and norm affines stay, so a removed channel is a non-zero constant
    # downstream (bias -> bn -> sigmoid ...) that shrink must fold into a bias or keep.
    shrink_zeroed(case, fraction, zseed, affine=False)


@given(case=cnn_models(), fraction=fractions, zseed=seeds, affine=st.booleans())
@examples(0.5)
def test_shrink_reusing_the_analysis_run_matches_a_fresh_run(case, fraction, zseed, affine):
    _, gm, _, _ = prepare(case, fraction, zseed, affine)
    x = case.input(0)
    again = otofx.analyze(gm, (x,))         # on the zeroed weights: shrink may reuse its run
    if REFERENCE not in again.gm.meta:     # only an in-place op may stop it (a stale kept value)
        assert any(_mutates(n) for n in gm.graph.nodes), "the analysis kept no reference run"
        return
    with mock.patch("otofx.passes.shrink.record", side_effect=AssertionError("ran the graph again")):
        reused = otofx.shrink(gm, again)
    fresh_analysis = otofx.analyze(gm, (x,))
    del fresh_analysis.gm.meta[REFERENCE]
    fresh = otofx.shrink(gm, fresh_analysis)
    a, b = reused.meta["otofx.shrink"], fresh.meta["otofx.shrink"]
    assert (a.removed, a.kept, a.folded) == (b.removed, b.kept, b.folded)
    sa, sb = reused.state_dict(), fresh.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"'{k}' differs between the reused and the fresh shrink"
    reused.eval()
    gm.eval()
    assert_matches(reused, gm, case.input(1))


# ---- regressions the fuzzer found (minimal models, hypothesis-shrunk then trimmed by hand) ---------

REGRESSIONS = {
    # a one-channel split part whose channel is removed: split sizes were left at [1, 1]
    "split_part_emptied": (handwritten("""
        self.m0 = nn.Conv2d(1, 2, 1, bias=False)
        self.head = nn.Linear(2, 2)
    """, """
        x1 = self.m0(x)
        a, b = torch.split(x1, [1, 1], dim=1)
        x2 = torch.cat([a, b], dim=1)
        return self.head(x2.mean((2, 3)))
    """, (2, 1, 4, 4)), 1.0, 0),
    # a grouped conv reads a cat of the model's input (channels otofx does not track) and tracked
    # channels: conv group 0 sees only input channels, so removing one tracked channel leaves the
    # conv groups uneven (one pruning unit must take a channel from every conv group, or pin)
    "grouped_conv_after_input_cat": (handwritten("""
        self.m0 = nn.Conv2d(2, 2, 1, bias=False)
        self.m1 = nn.Conv2d(4, 2, 1, groups=2, bias=False)
        self.head = nn.Linear(2, 2)
    """, """
        x2 = torch.cat([x, self.m0(x)], dim=1)
        return self.head(self.m1(x2).mean((2, 3)))
    """, (2, 2, 4, 4)), 1.0, 0),
    # the same with a view-transpose-view channel shuffle (each tracked channel is interleaved
    # with an input channel)
    "shuffle_after_input_cat": (handwritten("""
        self.m0 = nn.Conv2d(2, 2, 1, bias=False)
        self.m1 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)
    """, """
        x2 = self.m1(torch.cat([x, self.m0(x)], dim=1))
        b, c, h, w = x2.size()
        x3 = x2.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        return self.head(x3.mean((2, 3)))
    """, (2, 2, 4, 4)), 1.0, 0),
    # ... and with nn.ChannelShuffle
    "channel_shuffle_module_after_input_cat": (handwritten("""
        self.m0 = nn.Conv2d(2, 2, 1, bias=False)
        self.m1 = nn.ChannelShuffle(2)
        self.head = nn.Linear(4, 2)
    """, """
        x2 = self.m1(torch.cat([x, self.m0(x)], dim=1))
        return self.head(x2.mean((2, 3)))
    """, (2, 2, 4, 4)), 1.0, 0),
    # a BatchNorm without affine after zeroed channels: shrink folds -mean/std into m3, which has
    # no bias, so it creates one; the parameter count must account for exactly that
    "fold_creates_bias": (handwritten("""
        self.m0 = nn.Conv2d(1, 2, 1, bias=False)
        self.m1 = nn.BatchNorm2d(2)
        self.m2 = nn.BatchNorm2d(2, affine=False)
        self.m3 = nn.Conv2d(2, 2, 1, bias=False)
        self.head = nn.Linear(2, 2)
    """, """
        x1 = self.m3(self.m2(self.m1(self.m0(x))))
        return self.head(x1.mean((2, 3)))
    """, (2, 1, 4, 4)), 1.0, 0),
}


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "constants"])
@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regressions_found_by_fuzzing(name, affine):
    case, fraction, zseed = REGRESSIONS[name]
    check = (test_shrink_exact_and_predicted_size_affine_zeroed if affine
             else test_shrink_exact_when_removed_channels_are_constants)
    check.hypothesis.inner_test(case, fraction, zseed)


# ---- 3: never mutate ------------------------------------------------------------------------------


@given(case=st.one_of(cnn_models(), cnn_models(allow_unknown=True)), fraction=fractions,
       zseed=seeds)
def test_trace_analyze_shrink_never_mutate(case, fraction, zseed):
    model, leaves = case.build()
    model_state = snapshot(model)
    x = case.input(0)

    gm = otofx.trace(model, leaf_modules=leaves)
    assert_same_state(model_state, model, "trace changed the model")
    code, gm_state = gm.code, snapshot(gm)

    analysis = otofx.analyze(gm, (x,))
    assert gm.code == code, "analyze changed the GraphModule's code"
    assert_same_state(gm_state, gm, "analyze changed the GraphModule")
    assert_same_state(model_state, model, "analyze changed the model")

    zero_groups(gm, analysis, fraction, seed=zseed, affine=True)
    assert_same_state(model_state, model, "zeroing the traced copy changed the model")
    gm_state = snapshot(gm)
    graph_nodes = [(n.op, n.target, n.args, n.kwargs) for n in gm.graph.nodes]

    small = otofx.shrink(gm, analysis)      # raises ShrinkError on a shrink bug: a failure here too
    assert gm.code == code, "shrink changed the GraphModule's code"
    assert [(n.op, n.target, n.args, n.kwargs) for n in gm.graph.nodes] == graph_nodes
    assert_same_state(gm_state, gm, "shrink changed the GraphModule")
    assert_same_state(model_state, model, "shrink changed the model")

    # and the smaller model owns its tensors: training it cannot write into gm
    gm_ptrs = {t.data_ptr() for t in gm.state_dict().values() if t.numel()}
    shared = [k for k, t in small.state_dict().items() if t.numel() and t.data_ptr() in gm_ptrs]
    assert not shared, f"the smaller model shares storage with the original: {shared}"


# ---- 4: conservatism ------------------------------------------------------------------------------


def _unknown_nodes(gm, leaves):
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and leaves and isinstance(gm.get_submodule(node.target),
                                                              tuple(leaves)):
            out.append(node)
        elif node.op == "call_function" and node.target in (torch.fft.fft, torch.fft.fft2):
            out.append(node)
    return out


@given(case=cnn_models(allow_unknown=True), fraction=fractions, zseed=seeds,
       affine=st.booleans())
def test_ops_without_rules_pin_what_they_touch(case, fraction, zseed, affine):
    model, leaves = case.build()
    gm = otofx.trace(model, leaf_modules=leaves)
    analysis = otofx.analyze(gm, (case.input(0),))
    by_symbol = {g.symbol: g for g in analysis.groups}
    unknown = _unknown_nodes(analysis.gm, leaves)
    assert len(unknown) >= 1, f"expected an op without a rule among {case.unknown_nodes}"
    if leaves:
        assert any(n.op == "call_module" for n in unknown), "the leaf module was traced through"
    for node in unknown:
        for arg in node.all_input_nodes:
            dims = arg.meta.get("otofx.dims")
            assert dims is not None, f"no otofx.dims on '{arg.name}'"
            touched = {s for d in dims for s in d.free_symbols}
            for sym in touched:
                g = by_symbol[sym]
                assert not g.prunable, f"group '{g.name}' reaches '{node.name}' but is prunable"
                assert any("no rule" in w or f"'{node.name}'" in w for w in g.why_pinned), (
                    f"group '{g.name}' is pinned at '{node.name}' for other reasons only: "
                    f"{g.why_pinned}")

    zeroed = zero_groups(gm, analysis, fraction, seed=zseed, affine=affine)
    note(f"zeroed: { {k: v.tolist() for k, v in zeroed.items()} }")
    shrink_and_check(case, gm, analysis)


# ---- 6: the head's output is a graph output -------------------------------------------------------


@given(case=cnn_models())
def test_head_output_group_is_pinned_and_groups_are_well_formed(case):
    model, leaves = case.build()
    analysis = otofx.analyze(otofx.trace(model, leaf_modules=leaves), (case.input(0),))
    heads = [g for g in analysis.groups
             if any(m.param == "head.weight" and m.dim == 0 for m in g.members)]
    assert heads, f"no group holds the head's output rows: {analysis.groups}"
    for g in heads:
        assert not g.prunable, f"the head's output group '{g.name}' is prunable"
        assert any("graph output" in w for w in g.why_pinned), g.why_pinned

    names = [g.name for g in analysis.groups]
    assert len(names) == len(set(names)), f"group names are not unique: {names}"
    params = dict(analysis.gm.named_parameters())
    params.update(analysis.gm.named_buffers())
    seen: dict[tuple[str, int], set] = {}
    for g in analysis.groups:
        assert g.prunable == (not g.why_pinned), g
        for m in g.members:
            assert m.index.shape[0] == g.size, f"{g.name}: {m} has {m.index.shape[0]} rows"
            assert m.param in params, f"{g.name}: unknown tensor '{m.param}'"
            length = params[m.param].shape[m.dim]
            pos = m.index.reshape(-1).tolist()
            assert all(0 <= p < length for p in pos), f"{g.name}: {m} out of range"
            taken = seen.setdefault((m.param, m.dim), set())
            assert not taken & set(pos), f"{g.name}: {m} overlaps another group's slice"
            taken |= set(pos)


# ---- 5: torch.compile ------------------------------------------------------------------------------


@examples(0.05)      # each example compiles a model: seconds
@given(case=cnn_models(min_blocks=2, max_blocks=3), zseed=seeds)
def test_compiled_smaller_model_matches(case, zseed):
    torch._dynamo.reset()
    _, gm, analysis, _ = prepare(case, 0.5, zseed, affine=True)
    small, _ = shrink_and_check(case, gm, analysis)
    compiled = torch.compile(small)
    for seed in (0, 1):
        assert_matches(compiled, gm, case.input(seed))
