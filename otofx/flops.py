"""FLOPs from ``torch.utils.flop_counter.FlopCounterMode``, in total and per module.

The counter is torch's, with two additions: attention through CPU's fused kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``, which torch's registry leaves out) counts
the same two products as on CUDA, and ``nn.MultiheadAttention``'s inference fast path
(``aten._native_multi_head_attention``) what its other paths count. Without them the FLOPs of a
transformer on the CPU would depend on which kernel a shape happens to select (the math
fallback, taken when q and v differ in head_dim, is counted), so a pruned model could count more
FLOPs than the dense one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter, Node
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from otofx.passes.common import evaluation


def _sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _native_mha(query_shape, key_shape, value_shape, embed_dim, num_head, qkv_weight_shape,
                qkv_bias_shape, proj_weight_shape, *args, out_shape=None, **kwargs) -> int:
    """``nn.MultiheadAttention``'s inference fast path: the packed projection, the two products
    over ``rows / 3`` inner features, the out projection."""
    *batch, seq, width = query_shape
    tokens = seq * math.prod(batch)
    rows = qkv_weight_shape[0]
    inner = rows // 3
    return 2 * tokens * width * rows + 4 * tokens * key_shape[-2] * inner \
        + 2 * tokens * inner * proj_weight_shape[0]


_EXTRA = {op: f for name, f in [("_scaled_dot_product_flash_attention_for_cpu", _sdpa),
                                ("_native_multi_head_attention", _native_mha)]
          if (op := getattr(torch.ops.aten, name, None)) is not None}


def counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` (no display) that also counts CPU's fused attention."""
    return FlopCounterMode(display=False, custom_mapping=_EXTRA)


def count_flops(module: torch.nn.Module, example_inputs: Sequence[Any]) -> int:
    """Total FLOPs of one forward pass on ``example_inputs`` (eval mode, no buffer updates)."""
    mode = counter()
    with evaluation(module), mode:
        module(*example_inputs)
    return int(mode.get_total_flops())


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
        mode = counter()
        with mode:
            out = super().run_node(n)
        total = int(mode.get_total_flops())
        if total:
            self.flops[n.name] = total
        return out
