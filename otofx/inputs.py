"""Example inputs in every form the public API takes, turned into what a graph is called with.

A user passes a tensor, a tuple/list of positional inputs, a dict of inputs by name, or an
``(args, kwargs)`` pair. :func:`split_inputs` reads any of them as ``(args, kwargs)``;
:func:`bind_inputs` lays them out as a graph's positional inputs; :func:`inputs_on_module_device`
moves them to where the module lives.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule

from otofx.errors import ShapeError


def split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """Positional and keyword example inputs: a tensor, a tuple/list, a dict (keywords), or a
    ``(args, kwargs)`` pair whose second item is a dict."""
    if example_inputs is None:
        return (), {}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    items = tuple(example_inputs)
    if len(items) == 2 and isinstance(items[0], (tuple, list)) and isinstance(items[1], dict):
        return tuple(items[0]), dict(items[1])
    return items, {}


def bind_inputs(gm: GraphModule, example_inputs: Any) -> tuple:
    """``example_inputs`` (see :func:`split_inputs`) as positional inputs of ``gm``: keyword inputs
    go to the placeholders of that name, and the ones left out take their defaults."""
    args, kwargs = split_inputs(example_inputs)
    if not kwargs:
        return args
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names = [str(p.target).lstrip("*") for p in placeholders]
    unknown = sorted(set(kwargs) - set(names[len(args):]))
    if unknown:
        raise ShapeError(f"keyword example inputs {unknown} are not inputs of the graph after its "
                         f"{len(args)} positional ones; it takes ({', '.join(names)}).")
    bound = list(args)
    for name, p in list(zip(names, placeholders))[len(args):]:
        if name in kwargs:
            bound.append(kwargs[name])
        elif p.args:
            bound.append(p.args[0])
        else:
            raise ShapeError(f"the example inputs lack '{name}', which has no default; the graph "
                             f"takes ({', '.join(names)}). Pass it by position or by name.")
    return tuple(bound)


def inputs_on_module_device(module: nn.Module, inputs: tuple) -> tuple:
    """``inputs`` with their tensors moved to the device that holds all of ``module``'s
    parameters and buffers (a model moved to the GPU after its analysis on CPU inputs); left as
    they are when the module spans several devices or has no tensors."""
    devices = {t.device for t in module.parameters()} | {t.device for t in module.buffers()}
    if len(devices) != 1:
        return inputs
    device = devices.pop()
    return tuple(x.to(device) if isinstance(x, torch.Tensor) and x.device != device else x
                 for x in inputs)   # a tensor, a tuple/list, a dict by name, or an (args, kwargs) pair
