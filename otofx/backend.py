"""The torch.compile backend stage: ``torch.compile(model, backend="otofx")``.

Dynamo hands a backend each captured graph with the module's parameters and buffers as extra
inputs. For an inference graph (autograd not recording, nothing updated in place, no layer in
training mode) this stage makes those inputs attributes again (``passes.params_as_attrs``), runs
``otofx.analyze`` and ``otofx.shrink`` on the graph, and gives the smaller graph to the inner
backend (inductor by default). The callable it returns keeps dynamo's calling convention: it
receives every input, parameters included, and checks on each call that the parameters are the
same tensors, unmodified (identity, storage and version counter), since the smaller graph holds
sliced copies of them. When they changed it shrinks and compiles again; after ``max_reshrinks``
such refreshes it settles on the unshrunk graph, which reads the parameters afresh on every call.
Writes through ``param.data`` bypass the version counter and are not seen: compile after
training, or call ``torch._dynamo.reset()`` after changing weights that way.

Training graphs, and graphs where nothing is exactly zero, go to the inner backend unchanged, with
one log line saying why. Each subgraph of a graph break is handled on its own; channels that cross
a break reach a subgraph's output or input there, so they are pinned and stay.

    compiled = torch.compile(model, backend="otofx")                    # inductor inside
    compiled = torch.compile(model, backend=otofx.backend(inner="aot_eager"))
    compiled = torch.compile(model, backend="otofx", options={"inner": "eager"})
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.fx import GraphModule

from otofx.api import analyze, shrink
from otofx.errors import ConfigError
from otofx.passes.functional_mha import mha_as_modules
from otofx.passes.meta import INPUTS_KEPT, SHRINK
from otofx.passes.params_as_attrs import lifted_paths, params_as_attrs

log = logging.getLogger(__name__)

NAME = "otofx"
Backend = Callable[[GraphModule, list], Callable]
_IN_PLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                       operator.imod, operator.ipow, operator.imatmul, operator.iand, operator.ior,
                       operator.ixor, operator.ilshift, operator.irshift, operator.setitem}


def _lookup(inner: str | Backend) -> Backend:
    from torch._dynamo.backends.registry import list_backends, lookup_backend
    if isinstance(inner, str) and inner == NAME:
        raise ConfigError("otofx.backend: inner='otofx' would call itself; name the backend that "
                          "compiles the smaller graph, e.g. inner='inductor'.")
    try:
        return lookup_backend(inner)
    except Exception as exc:
        known = ", ".join(b for b in list_backends(exclude_tags=()) if b != NAME)
        raise ConfigError(f"otofx.backend: inner={inner!r} is not a torch.compile backend "
                          f"({type(exc).__name__}). Known backends: {known}.") from exc


def _training_reason(gm: GraphModule, example_inputs: Sequence[Any]) -> str | None:
    """Why ``gm`` must not be shrunk as an inference graph, or None."""
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                       for t in example_inputs):
        return "autograd is recording (grad enabled, inputs that require grad): a training graph"
    inputs = {n for n in gm.graph.nodes if n.op == "placeholder"}
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if node.target is torch._C._set_grad_enabled and node.args and node.args[0]:
            return f"the graph turns grad mode on (node '{node.name}')"
        in_place = node.target in _IN_PLACE_OPERATORS or (name.endswith("_") and not name.endswith("__"))
        if in_place and node.args and node.args[0] in inputs:
            return f"the graph updates an input or parameter in place (node '{node.name}': {name})"
        if node.op == "call_function":
            try:
                normalized = node.normalized_arguments(gm, normalize_to_only_use_kwargs=True)
            except Exception:   # a signature torch cannot match: read the keywords as given
                normalized = None
            flags = normalized.kwargs if normalized is not None else node.kwargs
            if flags.get("training") is True or flags.get("train") is True:
                return f"a layer runs in training mode (node '{node.name}'); call model.eval() first"
            if flags.get("inplace") is True and node.args and node.args[0] in inputs:
                return f"the graph updates an input in place (node '{node.name}': inplace=True)"
    return None


def _stamp(args: Sequence[Any], positions: Sequence[int]) -> tuple:
    """What identifies the parameter values a graph was shrunk with."""
    return tuple((id(t), t.data_ptr(), t._version) for t in (args[i] for i in positions))


class _ShrunkGraph:
    """What dynamo calls: the inner backend's compiled smaller graph, refreshed when parameters
    change, or the inner backend's compiled original graph once refreshing stopped paying."""

    def __init__(self, stage: OtofxBackend, gm: GraphModule, example_inputs: Sequence[Any]):
        self.stage = stage
        self.gm = gm
        self.refreshes = 0
        self.full: Callable | None = None       # the unshrunk graph, compiled, once used
        self.shrunk: Callable | None = None
        self.paths = lifted_paths(gm, example_inputs)   # dynamo drops the metadata it needs later
        self.lifted = sorted(self.paths)
        self._shrink(example_inputs)

    def _shrink(self, args: Sequence[Any]) -> None:
        lifted = mha_as_modules(params_as_attrs(self.gm, args, self.paths).graph_module).graph_module
        self.kept = lifted.meta[INPUTS_KEPT]
        inputs = [args[i] for i in self.kept]
        small = shrink(lifted, analyze(lifted, inputs), inputs, verify=self.stage.verify)
        stats = small.meta[SHRINK]
        self.removed = sum(stats.removed.values())
        self.stamp = _stamp(args, self.lifted)
        self.shrunk = self.stage.compile_inner(small, inputs) if self.removed else None

    def _settle_on_full(self, args: Sequence[Any], why: str) -> None:
        log.info("otofx backend: using the unshrunk graph from now on: %s", why)
        self.shrunk = None
        self.full = self.stage.compile_inner(self.gm, list(args))

    def __call__(self, *args: Any) -> Any:
        if self.full is not None:
            return self.full(*args)
        if _stamp(args, self.lifted) != self.stamp:
            if self.refreshes >= self.stage.max_reshrinks:
                self._settle_on_full(args, f"the parameters changed more than max_reshrinks="
                                     f"{self.stage.max_reshrinks} times")
                return self.full(*args)
            self.refreshes += 1
            log.info("otofx backend: parameters changed since the graph was shrunk; shrinking again")
            try:
                self._shrink(args)
            except Exception as exc:   # the unshrunk graph is always right
                self._settle_on_full(args, f"shrinking again failed ({type(exc).__name__}: {exc})")
                return self.full(*args)
            if self.shrunk is None:
                self._settle_on_full(args, "no channel is exactly zero any more")
                return self.full(*args)
        return self.shrunk(*[args[i] for i in self.kept])


class OtofxBackend:
    """A dynamo backend that shrinks inference graphs before ``inner`` compiles them.

    ``inner``: a backend name (``"inductor"``, ``"aot_eager"``, ``"eager"``...) or a backend
    callable; unknown names raise ``ConfigError`` here, not on the first call.
    ``verify``: check each smaller graph against the original on the first call's inputs.
    ``max_reshrinks``: how often changed parameters are shrunk and compiled again before the
    stage settles on the unshrunk graph. ``inner_kwargs``: passed to the inner backend.
    """

    def __init__(self, inner: str | Backend = "inductor", *, verify: bool = True,
                 max_reshrinks: int = 2, inner_kwargs: dict[str, Any] | None = None) -> None:
        if not isinstance(max_reshrinks, int) or isinstance(max_reshrinks, bool) or max_reshrinks < 0:
            raise ConfigError(f"otofx.backend: max_reshrinks must be an int >= 0, got {max_reshrinks!r}.")
        self.inner = inner
        self.inner_fn = _lookup(inner)
        self.verify = bool(verify)
        self.max_reshrinks = max_reshrinks
        self.inner_kwargs = dict(inner_kwargs or {})

    def compile_inner(self, gm: GraphModule, example_inputs: list) -> Callable:
        return self.inner_fn(gm, example_inputs, **self.inner_kwargs)

    def __call__(self, gm: GraphModule, example_inputs: list) -> Callable:
        why = _training_reason(gm, example_inputs)
        if why is not None:
            log.info("otofx backend: graph passed to %s unchanged: %s", self._inner_name, why)
            return self.compile_inner(gm, example_inputs)
        try:
            stage = _ShrunkGraph(self, gm, example_inputs)
        except Exception as exc:   # never wrong: the original graph is always a correct answer
            log.warning("otofx backend: graph passed to %s unchanged: shrinking failed (%s: %s)",
                        self._inner_name, type(exc).__name__, exc)
            return self.compile_inner(gm, example_inputs)
        if stage.shrunk is None:
            log.info("otofx backend: graph passed to %s unchanged: no channel is exactly zero",
                     self._inner_name)
            return self.compile_inner(gm, example_inputs)
        log.info("otofx backend: removed %d channels before %s", stage.removed, self._inner_name)
        return stage

    @property
    def _inner_name(self) -> str:
        return self.inner if isinstance(self.inner, str) else getattr(self.inner, "__name__", "inner")

    def __repr__(self) -> str:
        return f"otofx.backend(inner={self._inner_name!r})"


def backend(inner: str | Backend = "inductor", **options: Any) -> OtofxBackend:
    """A ``torch.compile`` backend that shrinks what training zeroed, then compiles with ``inner``.

    ``torch.compile(model, backend=otofx.backend(inner="aot_eager"))``; ``options`` are
    ``verify``, ``max_reshrinks`` and ``inner_kwargs`` (see :class:`OtofxBackend`).
    """
    known = {"verify", "max_reshrinks", "inner_kwargs"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"otofx.backend: unknown option(s) {', '.join(unknown)}; "
                          f"the options are inner, {', '.join(sorted(known))}.")
    return OtofxBackend(inner, **options)


def otofx_backend(gm: GraphModule, example_inputs: list, mode: str | None = None,
                  options: dict[str, Any] | None = None) -> Callable:
    """The backend registered as ``"otofx"``: ``torch.compile(model, backend="otofx",
    options={"inner": "aot_eager"})``; ``mode`` is inductor's (``"max-autotune"``...)."""
    options = dict(options or {})
    inner = options.pop("inner", "inductor")
    if mode is not None and mode != "default":
        if inner != "inductor":
            raise ConfigError(f"otofx backend: mode={mode!r} is an inductor mode but inner={inner!r}.")
        from torch._inductor import list_mode_options
        inner_kwargs = dict(options.pop("inner_kwargs", None) or {})
        inner_kwargs["config_patches"] = {**list_mode_options(mode), **inner_kwargs.get("config_patches", {})}
        options["inner_kwargs"] = inner_kwargs
    return backend(inner, **options)(gm, example_inputs)


def _register() -> None:
    """Register ``"otofx"`` with dynamo unless the installed entry point already provides it
    (registering both would make dynamo's lookup fail on a duplicate name)."""
    from importlib.metadata import entry_points
    if any(ep.name == NAME for ep in entry_points(group="torch_dynamo_backends")):
        return
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend
    if NAME not in _COMPILER_FNS:
        register_backend(otofx_backend, name=NAME)


_register()

__all__ = ["OtofxBackend", "backend", "otofx_backend"]
