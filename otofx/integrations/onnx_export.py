"""ONNX export of a (compressed) model, checked with onnxruntime.

``export_onnx(small, (x,), "small.onnx")`` runs ``torch.onnx.export(..., dynamo=True)`` on the
module in eval mode, writes the file, runs it with onnxruntime on the same inputs and compares
every output with the module's. A subnet is a plain GraphModule of stock layers, so it exports as
the dense model does, with smaller weights. When the exporter cannot take the graph,
``otofx.ExportError`` gives its cause and the node it failed on; a file whose outputs differ
raises it too, naming the output.

    result = export_onnx(job.subnet(), (x,), "out/small.onnx", dynamic_batch=True)
    print(result.bytes, result.max_difference)

Needs ``onnx`` and ``onnxscript`` (and ``onnxruntime`` for the check):
``pip install onnx onnxscript onnxruntime``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from otofx.errors import ExportError
from otofx.inputs import split_inputs
from otofx.integrations import require

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NODE = re.compile(r"translating node %(\w+)")


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote: the file, its size in bytes, and the largest absolute
    difference between onnxruntime's outputs and the module's (None when not checked)."""

    path: Path
    bytes: int
    max_difference: float | None


def export_onnx(module: nn.Module, example_inputs: Any, path: str | os.PathLike, *,
                dynamic_batch: bool = False, check: bool = True, rtol: float = 1e-4,
                atol: float = 1e-5, opset_version: int | None = None,
                external_data: bool | None = None) -> OnnxExport:
    """Export ``module`` (eval mode; its own mode is restored) on ``example_inputs`` (a tensor, a
    tuple, or an ``(args, kwargs)`` pair) to the ONNX file ``path`` with the dynamo exporter.

    ``dynamic_batch``: the batch dim of every tensor input is left free (``Dim.AUTO``). ``check``:
    run the file with onnxruntime and require every output within ``atol + rtol * max|output|``
    of the module's. ``external_data``: weights in a separate ``<path>.data`` file; by default
    only when they pass 1.5 GiB (protobuf's limit is 2 GiB), so a small model is one file.
    ``OnnxExport.bytes`` counts both files.
    """
    from otofx.io import _batch_dims
    require("onnxscript", purpose="ONNX export (torch.onnx.export(dynamo=True))")
    require("onnx", purpose="ONNX export")
    args, kwargs = split_inputs(example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        dynamic = None
        if dynamic_batch:
            dims = _batch_dims(args, kwargs)
            dynamic = dims[0] if not kwargs else {**dict(zip(_names(module, len(args)), dims[0])), **dims[1]}
        if external_data is None:
            held = list(module.parameters()) + list(module.buffers())
            external_data = sum(t.numel() * t.element_size() for t in held) > 1.5 * 2**30
        try:
            torch.onnx.export(module, args, path, kwargs=kwargs or None, dynamo=True, verbose=False,
                              dynamic_shapes=dynamic, opset_version=opset_version,
                              external_data=external_data)
        except Exception as exc:
            raise ExportError(_export_failure(module, exc)) from exc
        difference = _check(module, args, kwargs, path, rtol, atol) if check else None
    finally:
        for m, flag in flags:
            m.training = flag
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if external_data and data.exists() else 0)
    return OnnxExport(path, size, difference)


def _names(module: nn.Module, n: int) -> list[str]:
    from otofx.io import _arg_names
    return _arg_names(module, n)


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _export_failure(module: nn.Module, exc: Exception) -> str:
    """The exporter's cause in one line, and the node it failed on (with its code when the node
    is one of ``module``'s own graph)."""
    chain = _causes(exc)
    text = _ANSI.sub("", "\n".join(str(e) for e in chain))
    root = chain[-1]
    for e in chain:                         # the exporter wraps the real cause in its own summary
        summary = re.search(r"<class '[\w.]+\.(\w+)'>: (.+)", _ANSI.sub("", str(e)))
        if summary and "Error when translating" not in summary.group(2):
            cause = f"{summary.group(1)}: {summary.group(2).strip()}"
            break
    else:
        lines = [ln for ln in _ANSI.sub("", str(root)).strip().splitlines() if ln.strip()]
        cause = f"{type(root).__name__}: {lines[0] if lines else ''}"
    where = ""
    found = _NODE.search(text)
    if found:
        where = f" at node '{found.group(1)}'"
        graph = getattr(module, "graph", None)
        own = next((n for n in graph.nodes if n.name == found.group(1)), None) if graph is not None else None
        if own is not None:
            where += f" ({own.format_node()})"
    return (f"torch.onnx.export could not export {type(module).__name__}{where}: {cause[:500]}. "
            "Give the op an ONNX translation (torch.onnx.export(..., custom_translation_table=...)), "
            "replace it with stock ops, or save the model with otofx.save (torch.export) instead.")


def _check(module: nn.Module, args: tuple, kwargs: dict, path: Path, rtol: float, atol: float
           ) -> float:
    ort = require("onnxruntime", purpose="checking the ONNX file (export_onnx(..., check=True))")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), tensors)}
    got = session.run(None, feeds)
    with torch.no_grad():
        want = [t for t in pytree.tree_leaves(module(*args, **kwargs)) if isinstance(t, torch.Tensor)]
    if len(got) != len(want):
        raise ExportError(f"the ONNX file {path} has {len(got)} outputs, {type(module).__name__} "
                          f"returns {len(want)} tensors; export with the same inputs you run it on.")
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        w = w.detach().cpu()
        g = torch.from_numpy(g).to(w.dtype)
        if g.shape != w.shape:
            raise ExportError(f"output {i} of the ONNX file {path} has shape {tuple(g.shape)}, the "
                              f"module's {tuple(w.shape)}.")
        if not w.numel():
            continue
        diff = float((g.double() - w.double()).abs().max())
        scale = float(w.double().abs().max())
        allowed = atol + rtol * scale if w.is_floating_point() else 0.0
        if not diff <= allowed:
            raise ExportError(
                f"output {i} of the ONNX file {path} differs from {type(module).__name__}'s by "
                f"{diff:.3g} (largest |output| {scale:.3g}, allowed {allowed:.3g}) when onnxruntime "
                "runs it: an exporter or onnxruntime issue; try another opset_version, and report "
                "it with the model.")
        worst = max(worst, diff)
    return worst
