"""The op-rule registry: everything otofx knows about ops, one declarative rule per op family.

A rule is keyed by every spelling of its op: module classes (``nn.Conv2d``), torch functions
(``torch.relu``, ``F.relu``, ``operator.add``), tensor methods (``Method("relu")``) and aten
overloads (``torch.ops.aten.relu.default``). One rule serves fx graphs, export graphs and the
graphs dynamo hands a backend.

A rule has two halves:

* ``propagate(ctx, node)`` (channels pass) returns the labels of ``node``'s output, and may unify
  channels, record parameter slices and consumer sites, or pin channels it cannot handle;
* ``rewrite(ctx, node)`` (shrink pass), optional, fixes what the smaller graph needs beyond sliced
  parameters: module attributes (``out_channels``) and literal arguments (``view`` sizes).

An op with no rule pins every channel it touches (see ``passes.channels``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule, Node


@dataclass(frozen=True)
class Method:
    """The key of a tensor method (``x.view(...)`` is ``Method("view")``)."""

    name: str


@dataclass(frozen=True)
class OpRule:
    name: str
    propagate: Callable[[Any, Node], Any]
    rewrite: Callable[[Any, Node], None] | None = None
    accepts_sizes: bool = False   # takes channel counts (``x.size(1)``) as shape arguments
    carries_soft: bool = False    # passes soft ids (attention scores) on unchanged in meaning
    reads_channels: bool = False  # may record a consumer site (``ChannelTable.consume``)


class RuleRegistry:
    def __init__(self) -> None:
        self._rules: dict[Any, OpRule] = {}

    def register(self, *keys: Any, rewrite: Callable | None = None, accepts_sizes: bool = False,
                 carries_soft: bool = False, reads_channels: bool = False, name: str | None = None
                 ) -> Callable:
        """Decorator: ``@RULES.register(nn.ReLU, F.relu, Method("relu"))`` on a propagate function."""

        def wrap(propagate: Callable) -> Callable:
            rule = OpRule(name or propagate.__name__, propagate, rewrite, accepts_sizes, carries_soft,
                          reads_channels)
            for key in keys:
                if key is None:
                    continue
                self._rules[key] = rule
            return propagate

        return wrap

    def key(self, gm: GraphModule, node: Node) -> Any:
        if node.op == "call_module":
            return type(gm.get_submodule(node.target))
        if node.op == "call_method":
            return Method(node.target)
        return node.target

    def lookup(self, gm: GraphModule, node: Node) -> OpRule | None:
        if node.op == "call_module":
            # a subclass may reuse a rule only if it did not replace forward()
            return self.module_rule(gm.get_submodule(node.target))
        if node.op == "call_method":
            return self._rules.get(Method(node.target))
        if node.op == "call_function":
            rule = self._rules.get(node.target)
            if rule is None and isinstance(node.target, torch._ops.OpOverload):
                rule = self._rules.get(node.target.overloadpacket)
            if rule is None and callable(node.target):
                rule = self._rules.get(_qualified(node.target))
            return rule
        return None

    def module_rule(self, module: nn.Module) -> OpRule | None:
        """The rule of a module instance (as a ``call_module`` of it would find)."""
        cls = type(module)
        for base in cls.__mro__:
            rule = self._rules.get(base) or self._rules.get(_qualified(base))
            if rule is not None and cls.forward is base.forward:
                return rule
        return None

    def describe(self, gm: GraphModule, node: Node) -> str:
        """How an op is spelled in messages: module class, function or method name."""
        if node.op == "call_module":
            return f"{type(gm.get_submodule(node.target)).__name__} module '{node.target}'"
        if node.op == "call_method":
            return f"method .{node.target}()"
        target = node.target
        return f"function {getattr(target, '__module__', '') or ''}.{getattr(target, '__name__', target)}"


RULES = RuleRegistry()


def _qualified(obj: Any) -> str:
    """``module.qualname`` of a class or function: how rules name ops of optional libraries
    (``"timm.layers.drop.DropPath"``) without importing them."""
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def arg_of(node: Node, index: int, name: str, default: Any = None) -> Any:
    """A call's argument by keyword ``name`` or position ``index``."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def aten(name: str, *overloads: str) -> list:
    """Aten spellings of an op that exist in the installed torch (``aten("relu", "default")``)."""
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return []
    return [packet] + [getattr(packet, o) for o in overloads if hasattr(packet, o)]


def functions(*names: str, modules: tuple = (torch, torch.nn.functional, torch.Tensor)) -> list:
    """Every torch function and tensor method spelled ``name`` (``functions("relu")``)."""
    keys: list = []
    for name in names:
        for mod in modules:
            fn = getattr(mod, name, None)
            if fn is not None and mod is not torch.Tensor:
                keys.append(fn)
        keys.append(Method(name))
    return keys


def module_classes(*names: str) -> list[type[nn.Module]]:
    """``torch.nn`` module classes by name, skipping ones this torch does not have."""
    return [getattr(nn, n) for n in names if hasattr(nn, n)]
