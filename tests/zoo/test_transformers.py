"""HF transformers zoo: tiny configs of 14 families (eager and SDPA attention) come in through
``otofx.trace``'s torch.export front end; 30% of every prunable group is zeroed, the graph shrunk, and
it must compute the same outputs (every tensor leaf of the ModelOutput), with the predicted
parameter count, and with whole attention heads gone from the q/k/v/o weights (which features were kept
is read back from the weights). With ``attention_unit="head_dim"`` every head stays and loses the same
offsets instead."""

import pytest

from zoo import hf_models as hf
from zoo.zoo_checks import assert_heads_pinned, heads_kept, kept_indices, one_thread, roundtrip  # noqa: F401 - one_thread is a fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def head_rows(heads: hf.Heads, i: int, original: dict, shrunk: dict) -> dict[str, list[int]]:
    """Per role (q, k, v or one fused qkv, and o), which of layer ``i``'s original head features (output
    features; input features of o) the shrunk weights kept."""
    base = heads.layer.format(i)

    def rows(name: str, dim: int) -> list[int]:
        key = f"{base}.{name}.weight"
        assert key in shrunk, f"{key} is not a parameter of the shrunk graph"
        return kept_indices(original[key], shrunk[key], 1 - dim if heads.conv1d else dim)

    roles = {"qkv": heads.q} if heads.fused else {r: getattr(heads, r) for r in "qkv"}
    return {**{r: rows(n, 0) for r, n in roles.items()}, "o": rows(heads.o, 1)}


def projections(heads: hf.Heads, i: int, rows: dict[str, list[int]]) -> list[tuple[str, dict, int]]:
    """(role, head -> kept offsets, number of heads) of each of layer ``i``'s projections."""
    n, kv, d = heads.count(i), heads.count(i, kv=True), heads.head_dim
    if heads.fused:
        parts = [("q", 0, n), ("k", n * d, kv), ("v", (n + kv) * d, kv)]
        out = [(r, heads_kept(rows["qkv"], h, d, off), h) for r, off, h in parts]
    else:
        out = [(r, heads_kept(rows[r], h, d), h) for r, h in (("q", n), ("k", kv), ("v", kv))]
    return out + [("o", heads_kept(rows["o"], n, d), n)]


def assert_heads_shrink(model, small, heads: hf.Heads) -> None:
    """Each projection keeps whole heads (every offset of a head it keeps), and some layer lost heads."""
    before, after = dict(model.named_parameters()), dict(small.named_parameters())
    lost = []
    for i in range(heads.layers):
        for role, kept, n in projections(heads, i, head_rows(heads, i, before, after)):
            for h, offsets in kept.items():
                assert offsets == list(range(heads.head_dim)), f"layer {i} {role} head {h}: kept {offsets}"
            lost.append(len(kept) < n)
    assert any(lost), "no attention layer lost a head"


CASES = hf.CASES
# attention_unit="head_dim": every head loses the same q-k (and v-o) channels.
HEAD_DIM_CASES = ["bert:eager", "llama:sdpa", "gpt2:eager", "t5_encoder:eager"]


@pytest.mark.parametrize("name", CASES)
def test_transformer_shrinks_exactly(name):
    model, inputs, heads = hf.build(name)
    run = roundtrip(model, inputs, key=f"hf:{name}")
    if name in hf.PINNED_HEADS:
        assert_heads_pinned(run.analysis, hf.PINNED_HEADS[name])
    elif heads is not None:
        assert_heads_shrink(model, run.small, heads)


def assert_head_dim_shrinks(model, small, heads: hf.Heads) -> None:
    """Every head stays, each keeping the same offsets (q with k, v with o); some layer got narrower."""
    before, after = dict(model.named_parameters()), dict(small.named_parameters())
    narrower = []
    for i in range(heads.layers):
        kept = {role: (k, n) for role, k, n in projections(heads, i, head_rows(heads, i, before, after))}
        for pair in (("q", "k"), ("v", "o")):
            common = next(iter(kept[pair[0]][0].values()), [])
            for role in pair:
                offsets, n = kept[role]
                assert sorted(offsets) == list(range(n)), f"layer {i} {role}: heads {sorted(offsets)} of {n}"
                assert all(o == common for o in offsets.values()), f"layer {i} {role}: offsets differ {offsets}"
            narrower.append(len(common) < heads.head_dim)
    assert any(narrower), "no attention layer got narrower heads"


@pytest.mark.parametrize("name", HEAD_DIM_CASES)
def test_transformer_head_dim_unit_shrinks_exactly(name):
    model, inputs, heads = hf.build(name)
    run = roundtrip(model, inputs, attention_unit="head_dim", key=f"hf:{name}:head_dim")
    assert_head_dim_shrinks(model, run.small, heads)


HIDDEN_CASES = [f"{f}:eager" for f in hf.SPECS if f != "convnext"] + [
    "bert:sdpa", "llama:sdpa", "gpt2_lm:eager", "llama_lm:sdpa", "opt_lm:eager"]


def _hidden_group(analysis, model):
    """The residual stream's group: the one the head's input columns consume, or (a language model)
    the one the token embedding's columns produce."""
    if isinstance(model, hf.Headed):
        names = {"head.weight"}
    else:
        table = model.get_input_embeddings().weight
        names = {n for n, p in model.named_parameters(remove_duplicate=False) if p is table}
    return next(g for g in analysis.groups if any(s.param in names and s.dim == 1 for s in g.members))


@pytest.mark.parametrize("name", HIDDEN_CASES)
def test_hidden_size_shrinks_exactly(name):
    """With a head on the hidden states (or as a language model with tied embeddings) the residual
    stream is one prunable group: every norm over it gets the dense divisor, the hidden size shrinks
    in the embeddings, every projection and the output layer, and the subnet is exact."""
    model, inputs = hf.build_hidden(name)
    run = roundtrip(model, inputs, key=f"hf-hidden:{name}")
    group = _hidden_group(run.analysis, model)
    if name in hf.PINNED_HIDDEN:
        assert not group.prunable and any(hf.PINNED_HIDDEN[name] in w for w in group.why_pinned), group
        return
    assert group.prunable, group.why_pinned
    assert group.size == hf.HIDDEN
    removed = len(run.small.meta["otofx.shrink"].removed_channels[group.name])
    assert removed > 0
    before, after = ({**dict(m.named_parameters(remove_duplicate=False)),
                      **dict(m.named_buffers(remove_duplicate=False))} for m in (run.gm, run.small))
    for m in group.members:        # embeddings, every projection, norm, layer scale, the output layer
        want = before[m.param].shape[m.dim] - removed * m.index.shape[1]
        assert after[m.param].shape[m.dim] == want, (m, tuple(after[m.param].shape))
    assert {"weight"} <= {m.param.rsplit(".", 1)[-1] for m in group.members if m.role == "affine"}
