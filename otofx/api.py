"""The public entry points: trace, analyze, shrink."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn
from torch.fx import GraphModule

from otofx.analysis import Analysis
from otofx.errors import AnalysisError, OtofxError
from otofx.inputs import bind_inputs, inputs_on_module_device, split_inputs
from otofx.passes import channels_pass, groups_pass, shapes_pass, shrink_graph, trace_module
from otofx.passes.capture import reference_pass
from otofx.passes.channels import ATTENTION_UNITS
from otofx.passes.meta import GROUPS, SHRINK
from otofx.passes.trace import analysis_module, copy_graph


def _without_gc(fn: Callable) -> Callable:
    """Run ``fn`` with Python's cycle collector paused (restored after, even on error). The passes
    allocate many small objects; on a large graph the collector would walk the whole heap again
    and again, a third of analysis time at 2000 nodes. Cycles made meanwhile are collected later."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper


def trace(model: nn.Module, example_inputs: Any = None,
          leaf_modules: Iterable[Any] = ()) -> GraphModule:
    """``model`` as a GraphModule, traced from a deepcopy (the model is never touched).

    ``leaf_modules``: qualified names or classes of submodules to keep opaque (their channels
    are pinned unless a rule knows them). When torch.fx cannot trace the model (HF transformers 5.x,
    data-dependent Python), ``example_inputs`` (a tuple of positional inputs, a dict of keyword
    inputs, or ``(args, kwargs)``) let otofx fall back to ``torch.export``: the graph is then made
    of aten ops and fixed to the example inputs' shapes.
    """
    return trace_module(model, leaf_modules, example_inputs)


@_without_gc
def analyze(gm: nn.Module, example_inputs: Any, attention_unit: str = "head",
            prune_hidden: bool = True) -> Analysis:
    """Run shapes, channels and groups on a copy of ``gm``'s graph (sharing its parameters).

    ``gm`` may be an ``nn.Module``; it is traced first. Neither it nor its parameters change.
    ``attention_unit``: the pruning unit of attention, whole ``"head"``s (default) or
    ``"head_dim"`` (the same head_dim channels removed from every head).
    ``prune_hidden``: channels that a LayerNorm, RMSNorm or ``mean`` computes statistics over stay
    prunable (a transformer's hidden size shrinks; shrink gives those norms the dense divisor, so
    the result stays exact); ``False`` pins them, as otofx did before.
    ``example_inputs``: a tensor, a tuple of positional inputs, a dict of inputs by name, or an
    ``(args, kwargs)`` pair (inputs left out take their defaults).
    """
    if attention_unit not in ATTENTION_UNITS:
        raise AnalysisError(f"attention_unit must be one of {ATTENTION_UNITS}, got {attention_unit!r}.")
    if not any(split_inputs(example_inputs)):
        raise AnalysisError("analyze needs example inputs, e.g. analyze(gm, (torch.randn(1, 3, "
                            "224, 224),)) or by name: analyze(gm, {'x': x, 'mask': mask}).")
    if not isinstance(gm, GraphModule):
        gm = trace(gm, example_inputs)
    inputs = bind_inputs(gm, example_inputs)
    work = analysis_module(gm, copy_graph(gm), type(gm).__name__)
    shapes_pass(work, inputs, keep_values=True)
    if not isinstance(prune_hidden, bool):
        raise AnalysisError(f"prune_hidden must be True or False, got {prune_hidden!r}.")
    channels_pass(work, attention_unit, prune_hidden)
    groups_pass(work)
    reference_pass(work, gm, inputs)
    return Analysis(work, work.meta[GROUPS], inputs)


@_without_gc
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
    inputs = inputs_on_module_device(gm, bind_inputs(gm, example_inputs) or analysis.example_inputs)
    small, stats = shrink_graph(gm, analysis.gm, inputs, verify=verify)
    small.meta[SHRINK] = stats
    return small


__all__: Sequence[str] = ["analyze", "shrink", "trace"]
