"""Property tests: otofx's invariants on random transformers (grammar: tests/strategies_transformer.py).

* exactness: after zeroing random channels and heads of random prunable groups, ``shrink``'s
  smaller model computes what the zeroed model computes, whatever the attention spelling;
* parameter count: exactly what the groups predict, and smaller whenever something was zeroed;
* heads are whole: a zeroed attention group removes whole heads (q/k/v/o slices of ``head_dim``
  rows each), and the head count in the rebuilt graph's literals is the kept count; with
  ``attention_unit="head_dim"`` the same head_dim channels go from every head instead;
* never mutate: the user's model is bit-identical afterwards.
"""

from __future__ import annotations

import torch
from hypothesis import assume, given, note
from hypothesis import strategies as st
from strategies_budget import examples
from strategies_transformer import RandomTransformer, example_input, transformer_specs

import otofx
from otofx.testing import zero_groups

fractions = st.integers(0, 9).map(lambda k: 1.0 - k / 10)      # 1.0 down to 0.1


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# fewer of these than of the CNN properties (25 in CI): each example traces, analyses and shrinks a
# whole transformer
CI_EXAMPLES = examples(0.625)


@CI_EXAMPLES
@given(spec=transformer_specs(), fraction=fractions, seed=st.integers(0, 2**16),
       unit=st.sampled_from(["head", "head_dim"]))
def test_random_transformers_shrink_exactly(spec, fraction, seed, unit):
    """Exact for either pruning unit of attention: whole heads, or head_dim channels."""
    note(f"RandomTransformer({spec!r}), attention_unit={unit!r}")
    model = RandomTransformer(spec).eval()
    before = _state(model)
    x = example_input(spec, seed)
    gm = otofx.trace(model)
    analysis = otofx.analyze(gm, (x,), attention_unit=unit)
    crashed = [w for g in analysis.groups for w in g.why_pinned if "cannot handle" in w]
    assert not crashed, crashed
    assert analysis.prunable, analysis.report()     # at least the MLP, the heads or the stream
    zeroed = zero_groups(gm, analysis, fraction, seed=seed)
    note(f"zeroed {zeroed}")
    if fraction >= 0.5:         # every prunable group has 2 channels or more: one of them is zeroed
        assert zeroed, "nothing was zeroed"
    small = otofx.shrink(gm, analysis)
    with torch.no_grad():
        expected, got = gm(x), small(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    stats = small.meta["otofx.shrink"]
    for name, idx in zeroed.items():
        assert stats.removed.get(name, 0) + stats.kept.get(name, 0) == idx.numel(), (name, stats.removed)
    assert set(stats.removed) <= set(zeroed), "shrink removed channels nobody zeroed"
    if zeroed:
        assert sum(stats.removed.values()) > 0, f"zeroed {zeroed}, removed nothing (kept {stats.kept})"
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small == analysis.params_after(stats.removed_channels)
    if stats.removed:
        assert n_small < sum(p.numel() for p in gm.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} of the user's model changed"


@CI_EXAMPLES
@given(spec=transformer_specs(max_blocks=1), seed=st.integers(0, 2**16))
def test_attention_heads_are_prunable_and_removed_whole(spec, seed):
    """Every attention spelling but nn.MultiheadAttention gives a prunable head group (unless a
    post-norm or per-head literal blocks it), and removing heads removes whole heads."""
    block = spec.blocks[0]
    kv = block.kv_heads if block.attention.startswith("gqa") else block.heads
    assume(kv > 1)    # one key/value head: the unit is its head_dim channels, or nothing to prune
    note(f"RandomTransformer({spec!r})")
    model = RandomTransformer(spec).eval()
    x = example_input(spec, seed)
    gm = otofx.trace(model)
    analysis = otofx.analyze(gm, (x,))
    if block.attention == "mha":
        return
    q_name = "blocks.0.qkv.weight" if block.attention in ("chunk", "split") else "blocks.0.q.weight"
    group = next(g for g in analysis.groups if any(s.param == q_name and s.dim == 0 for s in g.members))
    assert group.prunable, group.why_pinned
    assert group.size == kv, f"{group.size} channels, expected one per key/value head ({kv})"
    zero_groups(gm, analysis, 0.5, seed=seed)
    small = otofx.shrink(gm, analysis)
    removed = small.meta["otofx.shrink"].removed_channels
    o_in = small.get_submodule("blocks.0.o").in_features
    assert o_in % block.head_dim == 0
    kept_heads = o_in // block.head_dim
    assert kept_heads == block.heads - len(removed.get(group.name, [])) * (block.heads // kv)
    with torch.no_grad():
        torch.testing.assert_close(small(x), gm(x), rtol=1e-4, atol=1e-5)
