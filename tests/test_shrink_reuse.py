"""Shrink reuses the analysis' own run only while it still describes the weights and inputs.

The analysis runs the graph once on the example inputs; when shrink is given the same weights and
inputs it takes the values removed channels leave behind, and the expected output, from that run
instead of running the graph again (``passes.capture``). These tests change the weights behind its
back in every way torch allows and check that the smaller model is still exact.
"""

from __future__ import annotations

from unittest import mock

import torch
from otofx.passes.meta import REFERENCE
from torch import nn

import otofx
from otofx.testing import zero_groups


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(64, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.head(y.mean((2, 3)))


def zeroed_net(seed: int = 0):
    torch.manual_seed(seed)
    model = Net().eval()
    for bn in (model.bn1, model.bn2):       # running stats that make removed channels constants
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    gm = otofx.trace(model)
    zero_groups(gm, otofx.analyze(gm, (x,)), 0.5, seed=seed, affine=False)
    return gm, x


def exact(small, gm, x):
    small.eval()
    gm.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), gm(x), rtol=1e-4, atol=1e-5)


def no_second_run():
    return mock.patch("otofx.passes.shrink.record", side_effect=AssertionError("ran the graph again"))


def test_unchanged_weights_reuse_the_analysis_run_despite_in_place_relu():
    gm, x = zeroed_net()
    analysis = otofx.analyze(gm, (x,))
    assert REFERENCE in analysis.gm.meta
    with no_second_run():
        small = otofx.shrink(gm, analysis)
    assert small.meta["otofx.shrink"].removed, "nothing was removed"
    assert small.meta["otofx.shrink"].folded, "no constant was folded: the test lost its point"
    exact(small, gm, x)
    exact(small, gm, torch.randn(2, 3, 8, 8))


def test_in_place_weight_change_after_analysis_runs_the_graph_again():
    gm, x = zeroed_net()
    analysis = otofx.analyze(gm, (x,))
    with torch.no_grad():
        gm.conv2.weight[1].zero_()          # one more channel dead, version counter moves
        gm.conv2.bias[1] = 0.0
        gm.bn2.running_mean.add_(0.5)       # every removed channel's constant moves
    with mock.patch("otofx.passes.shrink.record", wraps=otofx.passes.shrink.record) as record:
        small = otofx.shrink(gm, analysis)
    assert record.called
    assert 1 in small.meta["otofx.shrink"].removed_channels["conv2"].tolist()
    exact(small, gm, x)


def test_data_write_is_seen_by_the_checksum():
    # ``.data`` writes bypass the version counter; the stamp's checksum sees this one
    gm, x = zeroed_net()
    analysis = otofx.analyze(gm, (x,))
    gm.bn2.running_mean.data.add_(0.5)
    with mock.patch("otofx.passes.shrink.record", wraps=otofx.passes.shrink.record) as record:
        small = otofx.shrink(gm, analysis)
    assert record.called
    exact(small, gm, x)


def test_data_write_the_checksum_misses_fails_verification_then_runs_again():
    # flipping signs through ``.data`` keeps every norm: the reused run is stale, the result
    # disagrees with it, and shrink starts over with a run of its own
    gm, x = zeroed_net()
    analysis = otofx.analyze(gm, (x,))
    kept = [c for c in range(8) if bool(gm.conv2.weight[c].any())][0]
    gm.conv2.weight.data[kept].neg_()
    shrink = otofx.passes.shrink
    with mock.patch.object(shrink, "record", wraps=shrink.record) as record, \
            mock.patch.object(shrink, "_shrink", wraps=shrink._shrink) as attempt:
        small = otofx.shrink(gm, analysis)
    assert attempt.call_count == 2 and record.call_count == 1
    exact(small, gm, x)


def test_other_example_inputs_run_the_graph_again():
    gm, x = zeroed_net()
    analysis = otofx.analyze(gm, (x,))
    other = torch.randn(2, 3, 8, 8)
    with mock.patch("otofx.passes.shrink.record", wraps=otofx.passes.shrink.record) as record:
        small = otofx.shrink(gm, analysis, example_inputs=(other,))
    assert record.called
    exact(small, gm, other)


def test_analysis_keeps_no_activations():
    gm, x = zeroed_net()
    analysis = otofx.analyze(gm, (x,))
    assert "otofx.values" not in analysis.gm.meta
    ref = analysis.gm.meta[REFERENCE]
    for caps in ref.captures.values():      # one scalar and one flag per removed position
        for cap in caps:
            assert cap.first.shape == cap.positions.shape == cap.varies.shape


def test_checksum_sees_the_imaginary_part_of_a_complex_tensor():
    from otofx.passes.capture import _checksums

    z = torch.tensor([1 + 2j, -3j])
    w = torch.tensor([1 + 5j, -3j])           # same real part
    assert _checksums([z]) != _checksums([w])
