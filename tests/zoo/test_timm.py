"""timm zoo: 30 models (vision transformers, MLP mixers, metaformers, convnets) traced with timm's own
no-trace module list, 30% of every prunable group zeroed, shrunk: same outputs, the predicted
parameter count, and whole heads gone from the attention layers of the transformers."""

import math

import pytest
from torch import nn

from zoo import timm_models as tm
from zoo.zoo_checks import param_shapes, roundtrip

PROJECTIONS = ("qkv", "q", "kv")


def attention_layers(model: nn.Module) -> dict[str, tuple[list[str], int]]:
    """Attention modules (a ``num_heads`` attribute, linear ``qkv`` or ``q`` + ``kv``, linear
    ``proj``): path -> (their projections' names, the width a whole head has in every one of them)."""
    found = {}
    for path, mod in model.named_modules():
        kids = dict(mod.named_children())
        names = [n for n in PROJECTIONS if isinstance(kids.get(n), nn.Linear)]
        if not hasattr(mod, "num_heads") or not names or not isinstance(kids.get("proj"), nn.Linear):
            continue
        widths = [kids[n].out_features for n in names] + [kids["proj"].in_features]
        found[path] = (names, math.gcd(*(w // mod.num_heads for w in widths)))
    return found


def assert_heads_shrink(model: nn.Module, small: nn.Module) -> None:
    """Every projection keeps a whole number of heads, and some attention layer lost heads."""
    before, after = param_shapes(model), param_shapes(small)
    layers = attention_layers(model)
    assert layers, "no attention layer found"
    lost = []
    for path, (names, unit) in layers.items():
        for key, dim in [(f"{path}.{n}.weight", 0) for n in names] + [(f"{path}.proj.weight", 1)]:
            assert key in after, f"{key} is not a parameter of the shrunk graph"
            width = after[key][dim]
            assert width % unit == 0, f"{key}: width {width} is not whole heads of {unit}"
            lost.append(width < before[key][dim])
    assert any(lost), f"no attention layer lost a head ({len(layers)} layers)"


CASES = [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=tm.XFAIL[n])) if n in tm.XFAIL else n
         for n in tm.names()]


@pytest.mark.parametrize("name", CASES)
def test_timm_model_shrinks_exactly(name):
    model, x = tm.build(name)
    run = roundtrip(model, (x,), leaf_modules=tm.leaf_modules())
    if name in tm.HEADS:
        assert_heads_shrink(model, run.small)
