"""Property tests: the hidden size of random transformers (grammar: tests/strategies_transformer.py:
pre- and post-norm blocks, LayerNorm, hand-written RMSNorm and nn.RMSNorm, layer scales, a final norm,
tied input and output embeddings).

* the residual stream is one prunable group, unless the model reads its width as a value
  (``reshape(B, T, x.size(-1))``) in a way that pins it, and then the report says so;
* after zeroing random channels of every group the subnet equals the zeroed model, and the hidden
  width is gone from the embedding, every norm and the output layer alike;
* ``prune_hidden=False`` pins the stream at the first norm over it.
"""

from __future__ import annotations

import torch
from hypothesis import given, note
from hypothesis import strategies as st
from strategies_transformer import RandomTransformer, example_input, transformer_specs
from test_properties_transformer import CI_EXAMPLES
from torch import nn

import otofx
from otofx.testing import zero_groups


def _stream(analysis, spec):
    dim = 1 if spec.tied else 0
    return next(g for g in analysis.groups if any(s.param == "embed.weight" and s.dim == dim
                                                  for s in g.members))


def _norm_widths(model: nn.Module) -> set[int]:
    """The width every norm over the stream normalises (module shape, or a hand-written weight)."""
    widths = set()
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
            widths.add(m.normalized_shape[-1])
        elif type(m).__name__ == "RMSNorm":
            widths.add(m.weight.shape[0])
    return widths


@CI_EXAMPLES
@given(spec=transformer_specs(), seed=st.integers(0, 2**16))
def test_the_hidden_size_of_random_transformers_shrinks_exactly(spec, seed):
    note(f"RandomTransformer({spec!r})")
    model = RandomTransformer(spec).eval()
    x = example_input(spec, seed)
    gm = otofx.trace(model)
    analysis = otofx.analyze(gm, (x,))
    stream = _stream(analysis, spec)
    if not stream.prunable:
        assert any(b.width_from_shape for b in spec.blocks), stream.why_pinned
        assert any("channel count is used as a value" in w for w in stream.why_pinned), stream.why_pinned
        return
    zero_groups(gm, analysis, 0.5, seed=seed)
    small = otofx.shrink(gm, analysis)
    with torch.no_grad():
        torch.testing.assert_close(small(x), gm(x), rtol=1e-4, atol=1e-5)
    kept = spec.width - len(small.meta["otofx.shrink"].removed_channels.get(stream.name, []))
    assert kept < spec.width
    assert small.embed.weight.shape[1 if spec.tied else 0] == kept
    assert _norm_widths(small) <= {kept}
    if spec.tied:
        assert small.embed.weight.shape[0] == spec.features      # the vocabulary stays


@CI_EXAMPLES
@given(spec=transformer_specs(max_blocks=2))
def test_prune_hidden_false_pins_the_stream_at_its_norms(spec):
    note(f"RandomTransformer({spec!r})")
    x = example_input(spec, 0)
    analysis = otofx.analyze(otofx.trace(RandomTransformer(spec).eval()), (x,), prune_hidden=False)
    norms = [b.norm for b in spec.blocks] + [spec.final_norm]
    if any(n != "none" for n in norms):
        assert not _stream(analysis, spec).prunable
