"""The params-as-attrs pass: the graph dynamo hands a backend, with its parameters made attributes.

Dynamo lifts every parameter and buffer of the compiled module to a placeholder input; the real
tensors arrive in ``example_inputs`` and each placeholder's ``meta["grapharg"].source`` says where
it came from (``L['self']._modules['conv1']._parameters['weight']``). This pass builds a new
GraphModule whose root holds those tensors (the same objects, not copies) under their module
paths and reads them with ``get_attr``; the remaining placeholders are the real inputs. The other
passes then see parameters as in an fx-traced model: rules find them with ``ctx.param_of`` and
shrink can slice them. ``gm.meta["otofx.inputs_kept"]`` lists the positions of the original inputs
the new graph still takes, ``gm.meta["otofx.lifted"]`` maps the others to their attribute paths.

Before::

    def forward(self, L_self_modules_conv1_parameters_weight_, L_x_):
        conv2d = torch.conv2d(l_x_, l_self_modules_conv1_parameters_weight_, None, ...)

After::

    def forward(self, L_x_):
        conv1_weight = self.conv1.weight
        conv2d = torch.conv2d(l_x_, conv1_weight, None, ...)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.fx.passes.infra.pass_base import PassResult

from .meta import INPUTS_KEPT, LIFTED

_MEMBER = re.compile(r"\._(?:modules|parameters|buffers)\[['\"]([^'\"]+)['\"]\]")


def _source(node: Node) -> Any:
    grapharg = node.meta.get("grapharg")
    return getattr(grapharg, "source", None)


def is_param_or_buffer(node: Node, example: Any) -> bool:
    """Whether placeholder ``node`` (with its real value ``example``) is a lifted parameter or buffer."""
    if not isinstance(example, torch.Tensor):
        return False
    if isinstance(example, nn.Parameter):
        return True
    source = _source(node)
    if source is None:
        return False
    from torch._dynamo.source import is_from_unspecialized_param_buffer_source
    return bool(is_from_unspecialized_param_buffer_source(source))


def module_path(node: Node) -> str:
    """``conv1.weight`` for a placeholder whose source is ``L['self']._modules['conv1']._parameters
    ['weight']``; the placeholder's name when the source says nothing better."""
    source = _source(node)
    parts = _MEMBER.findall(source.name) if source is not None else []
    parts = [re.sub(r"\W", "_", p) for p in parts]
    return ".".join(parts) if parts else re.sub(r"\W", "_", node.name)


def _register(root: nn.Module, path: str, tensor: torch.Tensor) -> None:
    *mods, attr = path.split(".")
    owner = root
    for m in mods:
        if not hasattr(owner, m):
            owner.add_module(m, nn.Module())
        owner = getattr(owner, m)
    if isinstance(tensor, nn.Parameter):
        owner.register_parameter(attr, tensor)
    else:
        owner.register_buffer(attr, tensor)


def _free_path(used: set[str], path: str) -> str:
    """``path``, or ``path_1``, ``path_2``... when it is taken: by a tensor, by a module on the way
    to a tensor, or when one of its prefixes is a tensor."""

    def clashes(p: str) -> bool:
        prefixes = {p.rsplit(".", k)[0] for k in range(1, p.count(".") + 1)}
        return p in used or bool(prefixes & used) or any(u.startswith(p + ".") for u in used)

    candidate, i = path, 0
    while clashes(candidate):
        i += 1
        candidate = f"{path}_{i}"
    used.add(candidate)
    return candidate


def lifted_paths(gm: GraphModule, example_inputs: Sequence[Any]) -> dict[int, str]:
    """Position of each lifted parameter or buffer among ``gm``'s placeholders -> attribute path.

    Read it while dynamo's placeholder metadata is there (in the backend call; dynamo drops it
    afterwards). A tensor lifted twice gets one path.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise ValueError(f"the graph has {len(placeholders)} inputs but {len(example_inputs)} "
                         "example inputs were given")
    paths: dict[int, str] = {}
    path_of: dict[int, str] = {}
    used: set[str] = set()
    for i, (node, example) in enumerate(zip(placeholders, example_inputs)):
        if is_param_or_buffer(node, example):
            if id(example) not in path_of:
                path_of[id(example)] = _free_path(used, module_path(node))
            paths[i] = path_of[id(example)]
    return paths


def params_as_attrs(gm: GraphModule, example_inputs: Sequence[Any],
                    paths: dict[int, str] | None = None) -> PassResult:
    """A new GraphModule reading ``gm``'s lifted parameters and buffers with ``get_attr``.

    ``gm`` is not modified; the new module shares the tensors in ``example_inputs``. ``paths``
    (from :func:`lifted_paths`, the default) says which inputs become which attributes.
    """
    if paths is None:
        paths = lifted_paths(gm, example_inputs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    root = nn.Module()
    held: dict[str, torch.Tensor] = {}
    for i, path in paths.items():
        if path in held:
            if held[path] is not example_inputs[i]:
                raise ValueError(f"inputs {sorted(j for j, p in paths.items() if p == path)} were one "
                                 f"tensor ('{path}') and now are different tensors")
            continue
        held[path] = example_inputs[i]
        _register(root, path, example_inputs[i])
    graph = torch.fx.Graph()
    env: dict[Node, Node] = {}
    # placeholders first (in their order), then the attribute reads, then the rest of the graph
    for i, node in enumerate(placeholders):
        if i not in paths:
            env[node] = graph.node_copy(node, lambda n: env[n])
    for i, node in enumerate(placeholders):
        if i in paths:
            attr = graph.get_attr(paths[i])
            attr.meta = dict(node.meta)
            env[node] = attr
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            env[node] = graph.node_copy(node, lambda n: env[n])
    new = GraphModule(root, graph, type(gm).__name__)
    new.meta.update(gm.meta)
    new.meta[INPUTS_KEPT] = [i for i in range(len(placeholders)) if i not in paths]
    new.meta[LIFTED] = dict(paths)
    return PassResult(new, bool(paths))
