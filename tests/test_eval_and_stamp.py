"""Two shortcuts of the analysis/shrink path keep their meaning.

``passes.common.evaluation`` writes training flags straight into plain modules, and falls back to
``module.eval()`` where a module has its own ``train``; either way every flag comes back. The
stamp shrink compares before reusing the analysis run computes its weight norms only when the
identities and versions already agree.
"""

from __future__ import annotations

from unittest import mock

import torch
from hypothesis import given
from hypothesis import strategies as st
from otofx.passes import capture
from otofx.passes.common import evaluation
from torch import nn

import otofx
from otofx.testing import zero_groups


class Remembers(nn.Linear):
    """A module whose ``train`` does more than set its flag."""

    def train(self, mode: bool = True):
        self.calls = getattr(self, "calls", []) + [mode]
        return super().train(mode)


def tree(flags: list[bool], custom: bool) -> nn.Module:
    layers = [Remembers(2, 2) if custom and i == 0 else nn.Linear(2, 2) for i in range(len(flags))]
    model = nn.Sequential(nn.Sequential(*layers[: len(layers) // 2]), *layers[len(layers) // 2:])
    for layer, flag in zip(layers, flags):
        layer.training = flag
    return model


@given(st.lists(st.booleans(), min_size=1, max_size=6), st.booleans(), st.booleans())
def test_evaluation_sets_eval_and_restores_every_flag(flags, custom, root_flag):
    model = tree(flags, custom)
    model.training = root_flag
    before = [m.training for m in model.modules()]
    with evaluation(model):
        assert not any(m.training for m in model.modules())
        assert not torch.is_grad_enabled()
    assert [m.training for m in model.modules()] == before
    if custom:          # its own train() ran: the shortcut does not apply to it
        remembers = [m for m in model.modules() if isinstance(m, Remembers)]
        assert remembers[0].calls == [False]


def test_evaluation_restores_flags_after_an_error():
    model = tree([True, False, True], custom=False)
    before = [m.training for m in model.modules()]
    try:
        with evaluation(model):
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert [m.training for m in model.modules()] == before


def _zeroed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    gm = otofx.trace(model)
    before = otofx.analyze(gm, (x,))
    zero_groups(gm, before, 0.5, seed=0)
    return gm, before, x


def test_stamp_skips_the_norms_when_a_version_moved():
    gm, before, x = _zeroed()          # zero_groups wrote in place: versions moved
    with mock.patch.object(capture, "_checksums", wraps=capture._checksums) as sums:
        assert not before.gm.meta["otofx.reference"].holds_for(gm, (x,))
    assert not sums.called


def test_stamp_compares_the_norms_when_only_content_changed():
    gm, before, x = _zeroed()
    analysis = otofx.analyze(gm, (x,))
    reference = analysis.gm.meta["otofx.reference"]
    with mock.patch.object(capture, "_checksums", wraps=capture._checksums) as sums:
        assert reference.holds_for(gm, (x,))
        gm.get_submodule("1").running_mean.data.add_(1.0)     # no version bump
        assert not reference.holds_for(gm, (x,))
    assert sums.call_count == 2
    assert reference.stamp.tensors == []        # the analysis keeps no tensor alive through it
