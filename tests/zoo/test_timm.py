"""timm zoo: 31 models (vision transformers, MLP mixers, metaformers, convnets) traced with timm's own
no-trace module list, 30% of every prunable group zeroed, shrunk: same outputs, the predicted
parameter count, whole heads gone from the attention layers of the transformers, and the last
stage's width (the residual stream) gone from every parameter that holds it."""

import math

import pytest
from torch import nn

from zoo import timm_models as tm
from zoo.zoo_checks import assert_heads_pinned, heads_kept, kept_indices, one_thread, roundtrip  # noqa: F401 - one_thread is a fixture

pytestmark = pytest.mark.usefixtures("one_thread")

PROJECTIONS = ("qkv", "q", "kv")


def attention_layers(model: nn.Module) -> dict[str, tuple[list[str], int, int]]:
    """Attention modules (a ``num_heads`` attribute, linear ``qkv`` or ``q`` + ``kv``, linear
    ``proj``): path -> (their projections' names, number of heads, head width ``proj.in_features / heads``)."""
    found = {}
    for path, mod in model.named_modules():
        kids = dict(mod.named_children())
        names = [n for n in PROJECTIONS if isinstance(kids.get(n), nn.Linear)]
        if hasattr(mod, "num_heads") and names and isinstance(kids.get("proj"), nn.Linear):
            found[path] = (names, mod.num_heads, kids["proj"].in_features // mod.num_heads)
    return found


def assert_heads_shrink(model: nn.Module, small: nn.Module) -> None:
    """Every projection keeps whole heads, and some attention layer lost heads. Where a projection is
    laid out (parts, heads, head width) (qkv: 3 parts, kv: 2, q and proj's input: 1), which features
    were kept is read back from the weights: each kept head keeps all its offsets. Otherwise (e.g.
    keys narrower than values) its width must be a whole number of heads."""
    before, after = dict(model.named_parameters()), dict(small.named_parameters())
    layers = attention_layers(model)
    assert layers, "no attention layer found"
    lost = []
    for path, (names, heads, width) in layers.items():
        unit = math.gcd(*(before[f"{path}.{n}.weight"].shape[0] // heads for n in names), width)
        for key, dim in [(f"{path}.{n}.weight", 0) for n in names] + [(f"{path}.proj.weight", 1)]:
            assert key in after, f"{key} is not a parameter of the shrunk graph"
            old, new = before[key].shape[dim], after[key].shape[dim]
            lost.append(new < old)
            if old % (heads * width):
                assert new % unit == 0, f"{key}: width {new} is not whole heads of {unit}"
                continue
            rows = kept_indices(before[key], after[key], dim)
            for part in range(old // (heads * width)):
                for h, offsets in heads_kept(rows, heads, width, part * heads * width).items():
                    assert offsets == list(range(width)), f"{key} part {part} head {h}: kept {offsets}"
    assert any(lost), f"no attention layer lost a head ({len(layers)} layers)"


def assert_hidden_shrinks(model: nn.Module, run) -> None:
    """The group the classifier reads (the last stage's width: a transformer's residual stream, with
    its embeddings, class tokens, layer scales and every norm over it) is prunable and shrank in
    every one of its parameters by the channels removed."""
    heads = tm.classifier_weights(model)
    group = next(g for g in run.analysis.groups if any(s.param in heads and s.dim == 1 for s in g.members))
    assert group.prunable, group.why_pinned
    removed = len(run.small.meta["otofx.shrink"].removed_channels.get(group.name, []))
    assert removed > 0, f"{group.name}: nothing removed"
    before, after = ({**dict(m.named_parameters(remove_duplicate=False)),
                      **dict(m.named_buffers(remove_duplicate=False))} for m in (run.gm, run.small))
    for m in group.members:
        want = before[m.param].shape[m.dim] - removed * m.index.shape[1]
        assert after[m.param].shape[m.dim] == want, (m, tuple(after[m.param].shape))


CASES = tm.names()


def test_pinned_head_checks_name_their_reasons():
    """A model whose heads stay is checked one way (PINNED_HEADS or OPAQUE_ATTENTION, which take
    precedence over HEADS), each with a reason to find: an empty one would match any reason."""
    assert not set(tm.PINNED_HEADS) & set(tm.OPAQUE_ATTENTION)
    assert all(tm.PINNED_HEADS.values()) and all(tm.OPAQUE_ATTENTION.values())
    assert {"levit_128s", "mobilevit_xxs", "efficientformerv2_s0"} <= set(tm.PINNED_HEADS) | set(tm.OPAQUE_ATTENTION)


@pytest.mark.parametrize("name", CASES)
def test_timm_model_shrinks_exactly(name):
    model, x = tm.build(name)
    run = roundtrip(model, (x,), leaf_modules=tm.leaf_modules(), key=f"timm:{name}")
    if name in tm.HIDDEN:
        assert_hidden_shrinks(model, run)
    if name in tm.PINNED_HEADS:
        assert_heads_pinned(run.analysis, tm.PINNED_HEADS[name])
    elif name in tm.OPAQUE_ATTENTION:
        reasons = [w for g in run.analysis.pinned for w in g.why_pinned]
        assert any(tm.OPAQUE_ATTENTION[name] in w for w in reasons), reasons
    elif name in tm.HEADS:
        assert_heads_shrink(model, run.small)
