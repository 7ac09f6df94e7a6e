"""The trace pass: an ``nn.Module`` becomes a ``torch.fx.GraphModule``, the user's model untouched.

A deepcopy of the model is traced with ``torch.fx.symbolic_trace`` semantics; modules named in
``leaf_modules`` (instances' qualified names or classes) stay opaque ``call_module`` nodes, which
pins the channels they touch unless a rule knows them. When tracing fails, ``TraceError`` names the
innermost module being traced and suggests making it a leaf.

Before: ``model = ResNet()``; after: a GraphModule whose nodes are ``conv1``, ``bn1``, ``relu``...
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule, Tracer
from torch.overrides import has_torch_function_unary

from otofx.errors import TraceError
from otofx.inputs import split_inputs

from .export import export_module


def default_leaves() -> list[type[nn.Module]]:
    """Library modules kept opaque by default: ones whose forward reads ``self.training`` (it
    would be baked into the graph as a constant) and that a rule knows as a whole."""
    leaves: list[type[nn.Module]] = []
    # only libraries the model's code has imported already: importing them here costs seconds
    tv = sys.modules.get("torchvision.ops")
    if tv is not None and hasattr(tv, "StochasticDepth"):
        leaves.append(tv.StochasticDepth)
    timm_layers = sys.modules.get("timm.layers")
    if timm_layers is not None and hasattr(timm_layers, "DropPath"):
        leaves.append(timm_layers.DropPath)
    return leaves


class _LeafTracer(Tracer):
    def __init__(self, leaf_modules: Iterable[Any] = ()) -> None:   # no argument: as torch.load
        # rebuilds a pickled GraphModule (it re-traces the saved code with this class)
        super().__init__()
        leaves = list(leaf_modules) + default_leaves()
        self._leaf_types = tuple(x for x in leaves if isinstance(x, type))
        self._leaf_names = {x for x in leaves if isinstance(x, str)}
        self.stack: list[tuple[str, nn.Module]] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self._leaf_names or (self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, dict) and dataclasses.is_dataclass(a):
            # an HF ModelOutput: rebuilt as itself (torch.fx would return a plain dict)
            return self.create_node("call_function", type(a), (), {k: self.create_arg(v)
                                                                   for k, v in a.items()})
        return super().create_arg(a)

    def call_module(self, m, forward, args, kwargs):
        self.stack.append((self.path_of_module(m), m))
        out = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return out


def trace_module(model: nn.Module, leaf_modules: Iterable[Any] = (),
                 example_inputs: Any = None) -> GraphModule:
    """Symbolically trace a deepcopy of ``model``; when fx cannot and ``example_inputs`` are
    given, export it with ``torch.export`` instead (``passes.export``). ``TraceError`` names what
    failed in each."""
    if isinstance(model, GraphModule):
        return copy.deepcopy(model)
    if not isinstance(model, nn.Module):
        raise TraceError(f"expected an nn.Module to trace, got {type(model).__name__}.")
    try:
        return _fx_trace(model, leaf_modules)
    except TraceError as fx_error:
        if example_inputs is None:
            raise TraceError(f"{fx_error} Or pass example inputs (otofx.trace(model, (x,))) so otofx "
                             "can fall back to torch.export.") from fx_error.__cause__
        args, kwargs = split_inputs(example_inputs)
        try:
            return export_module(model, args, kwargs)
        except Exception as exc:
            raise TraceError(
                f"neither torch.fx nor torch.export could trace {type(model).__name__}. "
                f"torch.fx: {fx_error} torch.export: {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. Try making the "
                "failing code a leaf module (leaf_modules=[...]), or check the example inputs fit "
                "the model's forward.") from exc


_ATOMS = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device)


def _plain(cls: type) -> bool:
    """Whether ``cls`` copies like an ``nn.Module``: no copy hooks of its own (a
    ``__setstate__`` only upgrades old pickles, whose ``__dict__`` lacks new attributes)."""
    return (getattr(cls, "__deepcopy__", None) is None
            and cls.__reduce_ex__ is nn.Module.__reduce_ex__ and cls.__reduce__ is nn.Module.__reduce__
            and cls.__getstate__ is nn.Module.__getstate__)


def _storage_users(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


_SOLE_USERS = _storage_users(torch.zeros(1))     # a tensor alone on its storage (and its wrapper)


def _alone(t: torch.Tensor) -> bool:
    """Whether ``copy.deepcopy(t)`` is ``t.clone()``: a plain dense leaf tensor without grad,
    attributes or view bits, filling a storage that nothing else uses (so no copy could share
    it), on a device whose deepcopy copies the storage."""
    return (type(t) is torch.Tensor and t.layout is torch.strided and t.device.type in ("cpu", "cuda")
            and not t.is_quantized and t.is_leaf and not t.requires_grad and t.grad is None
            and not t.is_conj() and not t.is_neg() and not t.__dict__ and t.numel() > 0
            and t.storage_offset() == 0 and t.is_contiguous()
            and t.untyped_storage().nbytes() == t.numel() * t.element_size()
            and _storage_users(t) == _SOLE_USERS and not has_torch_function_unary(t))


def _copy_tensor(t: torch.Tensor | None, memo: dict[int, Any]) -> torch.Tensor | None:
    """``copy.deepcopy(t, memo)``; a tensor :func:`_alone` on its storage (BatchNorm's running
    statistics) is cloned directly, ten times faster than ``Tensor.__deepcopy__``."""
    if t is None or id(t) in memo or not _alone(t):
        return copy.deepcopy(t, memo)
    new = memo[id(t)] = t.clone(memory_format=torch.contiguous_format)
    return new


def clone_module(model: nn.Module) -> nn.Module:
    """What ``copy.deepcopy(model)`` gives, several times faster on a deep model: each module of
    a plain class (no copy hooks of its own) is rebuilt from its ``__dict__``, parameters and
    buffers deep-copied, numbers and strings shared, and anything else (a hook, a list, a
    config object) deep-copied with the same memo, so references between them stay consistent.
    A module with its own copy hooks is deep-copied as a whole."""
    memo: dict[int, Any] = {}

    def clone(m: nn.Module) -> nn.Module:
        done = memo.get(id(m))
        if done is not None:
            return done
        if not _plain(type(m)):
            return copy.deepcopy(m, memo)
        new = object.__new__(type(m))
        memo[id(m)] = new
        body = {}
        for key, value in m.__dict__.items():
            if isinstance(value, _ATOMS):
                body[key] = value
            elif key == "_modules":
                body[key] = type(value)((k, None if c is None else clone(c)) for k, c in value.items())
            elif isinstance(value, dict) and not value and type(value) in (dict, OrderedDict):
                body[key] = type(value)()
            elif key in ("_parameters", "_buffers") and type(value) in (dict, OrderedDict):
                body[key] = type(value)((k, _copy_tensor(t, memo)) for k, t in value.items())
            else:
                body[key] = copy.deepcopy(value, memo)
        new.__dict__ = body
        return new

    return clone(model)


def _fx_trace(model: nn.Module, leaf_modules: Iterable[Any]) -> GraphModule:
    model = clone_module(model)
    tracer = _LeafTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        if tracer.stack:
            path, module = tracer.stack[-1]
            where = f"inside module '{path or '<root>'}' ({type(module).__name__})"
            hint = (f"pass leaf_modules=['{path}'] (or leaf_modules=[{type(module).__name__}]) "
                    "to keep it as an opaque layer whose channels are pinned")
        else:
            where = f"in the forward of {type(model).__name__}"
            hint = "make the failing code a module and pass it in leaf_modules=[...]"
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: it failed {where} with "
            f"{type(exc).__name__}: {exc}. Data-dependent control flow cannot be traced; {hint}."
        ) from exc
    name = type(model).__name__
    return GraphModule(tracer.root, graph, name)


def analysis_module(root: nn.Module, graph: torch.fx.Graph, name: str) -> GraphModule:
    """``GraphModule(root, graph, name)`` for the analysis, which never changes its modules: its
    Python code is generated on first use (torch's ``_LazyGraphModule``, where this torch has
    it: the analysis' copy is rarely run) and ``get_submodule`` is a dictionary lookup."""
    try:
        from torch.fx._lazy_graph_module import _LazyGraphModule as cls
    except ImportError:            # pragma: no cover - torch without lazy graph modules
        cls = GraphModule
    gm = cls(root, graph, name)
    gm.get_submodule = _ModuleIndex(gm).get
    return gm


class _ModuleIndex:
    """``gm.get_submodule`` as a dictionary lookup (an object, not a closure, so that a deepcopy
    of the module copies the index along with the modules it points to)."""

    def __init__(self, gm: GraphModule) -> None:
        self.modules = dict(gm.named_modules(remove_duplicate=False))
        self.walk = gm.get_submodule

    def get(self, target: str) -> nn.Module:
        found = self.modules.get(target)
        return found if found is not None else self.walk(target)


def copy_graph(gm: GraphModule) -> torch.fx.Graph:
    """A copy of ``gm.graph`` (same node names, shallow-copied meta, same codegen)."""
    graph = torch.fx.Graph(tracer_cls=gm.graph._tracer_cls,
                           tracer_extras=getattr(gm.graph, "_tracer_extras", None))
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    return graph


def _copy_tree(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """A new module object for ``module`` and each submodule (same class, attributes copied one
    level: containers are new, tensors and other objects are the same objects)."""
    done = memo.get(id(module))
    if done is not None:
        return done
    new = object.__new__(type(module))
    memo[id(module)] = new
    body = {}
    for key, value in module.__dict__.items():
        if key == "_modules":
            value = {name: None if m is None else _copy_tree(m, memo) for name, m in value.items()}
        elif isinstance(value, (dict, list, set)):
            value = value.copy() if value else type(value)()   # OrderedDict.copy is slow
        body[key] = value
    new.__dict__ = body
    return new


def copy_module(gm: GraphModule) -> GraphModule:
    """A copy of ``gm`` with its own graph and module objects that *shares* its parameter,
    buffer and tensor-attribute objects (shrink replaces the ones it slices and then calls
    :func:`own_tensors`). Far cheaper than ``copy.deepcopy``, which rebuilds every attribute."""
    memo: dict[int, Any] = {id(gm.graph): copy_graph(gm)}
    for child in gm._modules.values():
        if child is not None:
            memo[id(child)] = _copy_tree(child, memo)
    for value in gm.__dict__.values():
        if isinstance(value, torch.Tensor):
            memo[id(value)] = value
    for group in (gm._parameters, gm._buffers):
        for t in group.values():
            if t is not None:
                memo[id(t)] = t
    try:
        from torch.fx._lazy_graph_module import _LazyGraphModule
        from torch.fx.graph_module import _CodeOnlyModule
    except ImportError:            # pragma: no cover - older torch: generates the code now
        return copy.deepcopy(gm, memo)
    # what GraphModule.__deepcopy__ does, but as a _LazyGraphModule: shrink edits the graph, so
    # the code is generated once at the end (``finish_copy``), not here as well
    body = copy.deepcopy(gm.__dict__, memo)
    res = _LazyGraphModule(_CodeOnlyModule(body), body["_graph"], type(gm).__name__)
    for attr in ("_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"):
        if attr in gm.__dict__:
            setattr(res, attr, copy.deepcopy(gm.__dict__[attr], memo))
    res.meta = copy.deepcopy(getattr(gm, "meta", {}), memo)
    return res


def finish_copy(gm: GraphModule) -> GraphModule:
    """Generate the code of a :func:`copy_module` copy now (it is a lazy GraphModule)."""
    recompile = getattr(gm, "real_recompile", None)
    if recompile is not None:
        recompile()
    return gm


def held_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every tensor ``module`` and its submodules hold: parameters, buffers and plain tensor
    attributes (a tensor held twice is listed twice)."""
    tensors: list[torch.Tensor] = []
    for m in module.modules():
        tensors += [t for t in m._parameters.values() if t is not None]
        tensors += [t for t in m._buffers.values() if t is not None]
        tensors += [v for v in m.__dict__.values() if isinstance(v, torch.Tensor)]
    return tensors


def own_tensors(copied: nn.Module, original: nn.Module) -> None:
    """Give ``copied`` its own copy of every tensor it still shares with ``original`` (ties
    between its own attributes are kept: a tensor used twice is cloned once)."""
    theirs = {id(t) for t in held_tensors(original)}
    clones: dict[int, torch.Tensor] = {}

    def own(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in clones:
            c = t.detach().clone()
            if isinstance(t, nn.Parameter):
                c = nn.Parameter(c, requires_grad=t.requires_grad)
            clones[id(t)] = c
        return clones[id(t)]

    for m in copied.modules():
        for group in (m._parameters, m._buffers):
            for k, t in group.items():
                if t is not None and id(t) in theirs:
                    group[k] = own(t)
        for k, v in list(m.__dict__.items()):
            if isinstance(v, torch.Tensor) and id(v) in theirs:
                m.__dict__[k] = own(v)
