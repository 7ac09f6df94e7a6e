"""The public entry points: trace, analyze, shrink."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule

from otofx.analysis import Analysis
from otofx.errors import AnalysisError, OtofxError
from otofx.passes import channels_pass, groups_pass, shapes_pass, shrink_graph, trace_module
from otofx.passes.groups import GROUPS
from otofx.passes.trace import copy_graph


def _inputs(example_inputs: Any) -> tuple:
    if example_inputs is None:
        return ()
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def trace(model: nn.Module, example_inputs: Any = None,
          leaf_modules: Iterable[Any] = ()) -> GraphModule:
    """``model`` as a GraphModule, traced from a deepcopy (the model is never touched).

    ``leaf_modules``: qualified names or classes of submodules to keep opaque (their channels
    are pinned unless a rule knows them). ``example_inputs`` is accepted for symmetry with
    :func:`analyze` and for front ends that need them.
    """
    return trace_module(model, leaf_modules)


def analyze(gm: nn.Module, example_inputs: Any) -> Analysis:
    """Run shapes, channels and groups on a copy of ``gm``'s graph (sharing its parameters).

    ``gm`` may be an ``nn.Module``; it is traced first. Neither it nor its parameters change.
    """
    inputs = _inputs(example_inputs)
    if not inputs:
        raise AnalysisError("analyze needs example inputs, e.g. analyze(gm, (torch.randn(1, 3, "
                            "224, 224),)).")
    if not isinstance(gm, GraphModule):
        gm = trace(gm)
    work = GraphModule(gm, copy_graph(gm), type(gm).__name__)
    shapes_pass(work, inputs)
    channels_pass(work)
    groups_pass(work)
    return Analysis(work, work.meta[GROUPS], inputs)


def shrink(gm: GraphModule, analysis: Analysis | None = None, example_inputs: Any = None,
           verify: bool = True) -> GraphModule:
    """A smaller copy of ``gm`` without its exactly-zero channels; ``gm`` is not modified.

    ``analysis`` must come from ``analyze`` on this graph (weights may have changed since);
    without it, ``example_inputs`` are needed to analyse first. With ``verify`` (default) the
    result is checked against ``gm`` on the example inputs and ``ShrinkError`` is raised if they
    differ.
    """
    if not isinstance(gm, GraphModule):
        raise OtofxError(f"shrink takes a GraphModule (see otofx.trace), got {type(gm).__name__}.")
    if analysis is None:
        if example_inputs is None:
            raise AnalysisError("shrink needs an analysis (otofx.analyze) or example_inputs.")
        analysis = analyze(gm, example_inputs)
    inputs = _inputs(example_inputs) or analysis.example_inputs
    small, stats = shrink_graph(gm, analysis.gm, inputs, verify=verify)
    small.meta["otofx.shrink"] = stats
    return small


__all__: Sequence[str] = ["analyze", "shrink", "trace"]
