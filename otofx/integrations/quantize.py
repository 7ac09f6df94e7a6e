"""int8 after pruning: a subnet through PyTorch's pt2e static quantization flow (torchao).

``quantize_int8(small, (x,), calibration)`` exports the subnet with ``torch.export`` (batch dim
free), inserts observers with torchao's ``X86InductorQuantizer`` (int8 per-channel weights, uint8
per-tensor activations; batch norms are folded into the convolutions), runs the calibration
batches, and converts: the result is a GraphModule whose weights are stored as int8 and whose
activations pass through quantize/dequantize pairs (``.eval()`` works on it; it is an inference
model). Run it as it is (reference kernels: right
numbers, not fast) or through ``torch.compile`` (inductor lowers the pairs to int8 kernels on x86).

    small = job.subnet()
    q = quantize_int8(small, (x[:2],), [x[i:i + 64] for i in range(0, 512, 64)])
    fast = torch.compile(q)

The subnet is a stock GraphModule, so nothing otofx-specific is quantized: the pruned widths are
what the quantizer sees. Needs ``torchao`` (``pip install torchao``); for torch 2.14 the pt2e
flow lives there, no longer in ``torch.ao``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule

from otofx.errors import ConfigError, ExportError
from otofx.inputs import split_inputs
from otofx.integrations import require


def quantize_int8(module: nn.Module, example_inputs: Any, calibration: Iterable[Any],
                  quantizer: Any = None, dynamic_batch: bool = True) -> GraphModule:
    """``module`` (eval mode; not modified) statically quantized to int8 with torchao's pt2e flow.

    ``example_inputs``: a tensor, a tuple, or an ``(args, kwargs)`` pair, for the export.
    ``calibration``: batches (a tensor or a tuple of positional inputs each) run through the
    observed model to fix the activation ranges: a few hundred representative samples.
    ``quantizer``: a torchao pt2e quantizer; by default ``X86InductorQuantizer`` with its default
    static config.
    """
    from otofx.io import _batch_dims
    purpose = "int8 quantization (quantize_int8, PyTorch's pt2e flow)"
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", "torchao", purpose)
    if quantizer is None:
        x86 = require("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer", "torchao", purpose)
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    args, kwargs = split_inputs(example_inputs)
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        dynamic = None
        if dynamic_batch and not kwargs:
            dynamic = _batch_dims(args, kwargs)[0]
        try:
            graph = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic).module()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ExportError(
                f"torch.export could not export {type(module).__name__} for quantization: "
                f"{type(exc).__name__}: {first[:400]}. Check that the example inputs fit the "
                "module; with a data-dependent batch size pass dynamic_batch=False.") from exc
    finally:
        for m, flag in flags:
            m.training = flag
    prepared = pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        seen = 0
        for batch in calibration:
            prepared(*(batch if isinstance(batch, tuple | list) else (batch,)))
            seen += 1
    if not seen:
        raise ConfigError("quantize_int8 got no calibration batch: pass a few batches of "
                          "representative inputs (e.g. [x[i:i + 64] for i in range(0, 512, 64)]).")
    quantized = pt2e.convert_pt2e(prepared)
    _drop_unused_attributes(quantized)
    require("torchao.quantization.pt2e", "torchao", purpose).allow_exported_model_train_eval(quantized)
    return quantized


def _drop_unused_attributes(gm: GraphModule) -> None:
    """Delete the parameters and buffers no ``get_attr`` node reads any more: convert_pt2e folds
    each float weight into an int8 copy and leaves the float original attached."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used and not any(name.startswith(u + ".") for u in used):
            owner, _, leaf = name.rpartition(".")
            parent = gm.get_submodule(owner) if owner else gm
            delattr(parent, leaf)
    gm.graph.lint()
    gm.recompile()


def state_bytes(module: nn.Module) -> int:
    """Bytes of every distinct tensor in ``module``'s state dict: the weights a saved copy holds."""
    seen: dict[int, int] = {}
    for t in module.state_dict().values():
        if isinstance(t, torch.Tensor):
            seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())
