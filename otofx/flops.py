"""FLOPs from ``torch.utils.flop_counter.FlopCounterMode``, in total and per module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from otofx.passes.shapes import evaluation


def count_flops(module: torch.nn.Module, example_inputs: Sequence[Any]) -> int:
    """Total FLOPs of one forward pass on ``example_inputs`` (eval mode, no buffer updates)."""
    counter = FlopCounterMode(display=False)
    with evaluation(module), counter:
        module(*example_inputs)
    return int(counter.get_total_flops())


def flops_by_module(module: torch.nn.Module, example_inputs: Sequence[Any]) -> dict[str, int]:
    """FLOPs of each leaf module (by qualified name) in one forward pass."""
    counter = FlopCounterMode(display=False)
    with evaluation(module), counter:
        module(*example_inputs)
    counts = counter.get_flop_counts()
    out = {}
    for name, per_op in counts.items():
        if name == "Global":
            continue
        out[name.split(".", 1)[1] if "." in name else name] = int(sum(per_op.values()))
    return out
