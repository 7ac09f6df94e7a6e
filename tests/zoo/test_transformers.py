"""HF transformers zoo: tiny configs of 14 families (eager and SDPA attention) come in through
``otofx.trace``'s torch.export front end; 30% of every prunable group is zeroed, the graph shrunk, and
it must compute the same outputs (every tensor leaf of the ModelOutput), with the predicted
parameter count, and with whole attention heads gone from the q/k/v/o weights."""

import pytest

from zoo import hf_models as hf
from zoo.zoo_checks import param_shapes, roundtrip


def head_sizes(shapes: dict, heads: hf.Heads, i: int) -> dict[str, int]:
    """Widths of layer ``i``'s q, k, v (output features; one ``qkv`` width when fused) and o (input
    features)."""
    base = heads.layer.format(i)

    def width(name: str, dim: int) -> int:
        key = f"{base}.{name}.weight"
        assert key in shapes, f"{key} is not a parameter of the shrunk graph"
        return shapes[key][1 - dim if heads.conv1d else dim]

    roles = {"qkv": heads.q} if heads.fused else {r: getattr(heads, r) for r in "qkv"}
    return {**{r: width(n, 0) for r, n in roles.items()}, "o": width(heads.o, 1)}


def assert_heads_shrink(before: dict, after: dict, heads: hf.Heads) -> None:
    """Every q/k/v/o width is a whole number of heads, and at least one layer lost heads."""
    lost = []
    for i in range(heads.layers):
        q, kv = heads.count(i) * heads.head_dim, heads.count(i, kv=True) * heads.head_dim
        full = {"qkv": q + 2 * kv} if heads.fused else {"q": q, "k": kv, "v": kv}
        old, new = head_sizes(before, heads, i), head_sizes(after, heads, i)
        assert old == {**full, "o": q}, old
        for role, size in new.items():
            assert size % heads.head_dim == 0, f"layer {i} {role}: width {size} is not whole heads"
            lost.append(size < old[role])
    assert any(lost), "no attention layer lost a head"


CASES = [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=hf.XFAIL[n])) if n in hf.XFAIL else n
         for n in hf.CASES]


@pytest.mark.parametrize("name", CASES)
def test_transformer_shrinks_exactly(name):
    model, inputs, heads = hf.build(name)
    run = roundtrip(model, inputs)
    if heads is not None:
        assert_heads_shrink(param_shapes(model), param_shapes(run.small), heads)
