"""Save a (smaller) model as a ``torch.export`` program and load it back without its code.

``otofx.save(subnet, path, example_inputs)`` exports the module in eval mode with
``torch.export.export`` (the batch dim of every tensor input left to ``Dim.AUTO``: dynamic when
the graph allows it, fixed otherwise) and writes it with ``torch.export.save``; nothing of the
training code is pickled. ``otofx.load(path)`` reads it back as an ``nn.Module`` that runs in any
process with torch installed.

    otofx.save(job.subnet(), "small.pt2", (x,))
    small = otofx.load("small.pt2")          # elsewhere: no model class, no otofx state needed
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from torch import nn

from otofx.errors import TraceError
from otofx.inputs import split_inputs


def _batch_dims(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    def spec(a: Any) -> Any:
        return {0: torch.export.Dim.AUTO} if isinstance(a, torch.Tensor) and a.dim() else None
    return tuple(spec(a) for a in args), {k: spec(v) for k, v in kwargs.items()}


def save(module: nn.Module, path: str | os.PathLike, example_inputs: Any,
         dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """Export ``module`` (in eval mode; its own mode is left as it was) on ``example_inputs`` (a
    tensor, a tuple, or an ``(args, kwargs)`` pair) and save the program to ``path``."""
    args, kwargs = split_inputs(example_inputs)
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        dynamic = _batch_dims(args, kwargs) if dynamic_batch else None
        if dynamic is not None and kwargs:
            dynamic = {**dict(zip(_arg_names(module, len(args)), dynamic[0])), **dynamic[1]}
        elif dynamic is not None:
            dynamic = dynamic[0]
        program = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic)
    except Exception as exc:
        raise TraceError(
            f"torch.export could not export {type(module).__name__} for saving: "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. "
            "Check that the example inputs fit the module, or save its state_dict instead."
        ) from exc
    finally:
        for m, flag in flags:
            m.training = flag
    torch.export.save(program, path)
    return program


def _arg_names(module: nn.Module, n: int) -> list[str]:
    return list(inspect.signature(module.forward).parameters)[:n]


def load(path: str | os.PathLike) -> nn.Module:
    """The module saved by :func:`save` (``torch.export.load(path).module()``)."""
    return torch.export.load(path).module()
