"""The zoo: every torchvision classifier is analysed, 30% of its prunable channels zeroed, shrunk,
and must compute the same outputs with fewer parameters; its prunable share may not drop below its
record (tests/zoo/zoo_checks.py)."""

import pytest
import torch

import otofx
from otofx.testing import zero_groups
from zoo import torchvision_models as tv
from zoo.zoo_checks import assert_share_kept

CASES = [pytest.param(n, marks=pytest.mark.slow) if n in tv.BIG else n for n in tv.names()]


@pytest.mark.parametrize("name", CASES)
def test_torchvision_model_shrinks_exactly(name):
    torch.manual_seed(0)
    model, x = tv.build(name)
    params = sum(p.numel() for p in model.parameters())
    assert (params > 100e6) == (name in tv.BIG), "keep BIG in step with the 100M CI budget"
    gm = otofx.trace(model)
    analysis = otofx.analyze(gm, (x,))
    crashed = [w for g in analysis.groups for w in g.why_pinned if "cannot handle" in w]
    assert not crashed, crashed
    assert analysis.prunable, analysis.report()
    assert_share_kept(f"torchvision:{name}", analysis)
    zero_groups(gm, analysis, 0.3, seed=0)
    small = otofx.shrink(gm, analysis)
    gm.eval()
    small.eval()
    with torch.no_grad():
        expected, got = gm(x), small(x)
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)
    stats = small.meta["otofx.shrink"]
    assert sum(p.numel() for p in small.parameters()) == analysis.params_after(
        stats.removed_channels)
    assert sum(p.numel() for p in small.parameters()) < params
