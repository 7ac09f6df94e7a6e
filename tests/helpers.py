"""Shared steps of the pass tests."""

import torch

import otofx
from otofx.testing import zero_groups


def roundtrip(model, x, fraction=0.5, seed=0, affine=True):
    """Trace, analyse, zero ``fraction`` of every prunable group, shrink; assert equal outputs."""
    gm = otofx.trace(model)
    analysis = otofx.analyze(gm, (x,))
    zero_groups(gm, analysis, fraction, seed=seed, affine=affine)
    small = otofx.shrink(gm, analysis)
    gm.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), gm(x), rtol=1e-4, atol=1e-5)
    return gm, analysis, small


def pinned_group(model, x, name):
    """The group ``name`` of ``model``'s analysis, asserted pinned; returns its reasons."""
    analysis = otofx.analyze(otofx.trace(model), (x,))
    group = next(g for g in analysis.groups if g.name == name)
    assert not group.prunable, group
    return group.why_pinned
