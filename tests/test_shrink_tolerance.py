"""Shrink's own verification holds the smaller graph to the tests' tolerance: rtol 1e-4 and an
absolute 1e-5 scaled by the output's magnitude (as ``tests/zoo/zoo_checks.py``)."""

import pytest
import torch
from otofx.passes.shrink import tolerance
from torch import nn

import otofx
from otofx.errors import ShrinkError
from otofx.testing import zero_groups


class Jittery(nn.Module):
    """A small CNN whose output is multiplied by (1 + noise * U(0, 1)): a fresh draw every run,
    so shrink's verification sees a relative difference of up to ``noise``."""

    def __init__(self, noise: float, scale: float = 1.0) -> None:
        super().__init__()
        self.noise, self.scale = noise, scale
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x))) * self.scale + self.scale
        return y * (1 + self.noise * torch.rand_like(y))


def shrink(noise: float, scale: float = 1.0) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    gm = otofx.trace(Jittery(noise, scale).eval())
    analysis = otofx.analyze(gm, (x,))
    assert analysis.prunable
    zero_groups(gm, analysis, 0.5, seed=0)
    otofx.shrink(gm, analysis)


@pytest.mark.parametrize("noise", [3e-4, 1e-3])
def test_a_difference_the_tests_would_reject_is_a_shrink_error(noise):
    # 1e-3 was inside shrink's old rtol; the tests reject both
    with pytest.raises(ShrinkError, match="differs from the original"):
        shrink(noise)


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_rounding_level_differences_pass_at_any_output_scale(scale):
    shrink(1e-7, scale)


def test_the_tolerance_is_the_tests_scaled_by_the_output_and_a_few_roundings_in_half():
    assert tolerance(torch.float32) == (1e-4, 1e-5)
    assert tolerance(torch.float32, 1e3) == (1e-4, pytest.approx(1e-2))
    assert tolerance(torch.float32, 0.5) == (1e-4, 1e-5)
    rtol, atol = tolerance(torch.bfloat16)
    assert rtol == atol == 4 * torch.finfo(torch.bfloat16).eps
