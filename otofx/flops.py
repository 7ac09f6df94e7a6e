"""FLOPs from ``torch.utils.flop_counter.FlopCounterMode``, in total and per module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter, Node
from torch.utils.flop_counter import FlopCounterMode

from otofx.passes.shapes import evaluation


def count_flops(module: torch.nn.Module, example_inputs: Sequence[Any]) -> int:
    """Total FLOPs of one forward pass on ``example_inputs`` (eval mode, no buffer updates)."""
    counter = FlopCounterMode(display=False)
    with evaluation(module), counter:
        module(*example_inputs)
    return int(counter.get_total_flops())


def flops_by_node(gm: GraphModule, example_inputs: Sequence[Any]) -> dict[str, int]:
    """FLOPs of each node of ``gm`` (by node name) in one forward pass: works the same for
    module calls, functional and aten graphs."""
    recorder = _NodeFlops(gm)
    with evaluation(gm):
        recorder.run(*example_inputs)
    return recorder.flops


class _NodeFlops(Interpreter):
    def __init__(self, gm: GraphModule) -> None:
        super().__init__(gm)
        self.flops: dict[str, int] = {}

    def run_node(self, n: Node) -> Any:
        if n.op not in ("call_module", "call_function", "call_method"):
            return super().run_node(n)
        counter = FlopCounterMode(display=False)
        with counter:
            out = super().run_node(n)
        total = int(counter.get_total_flops())
        if total:
            self.flops[n.name] = total
        return out
