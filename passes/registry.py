"""The op-rule registry: everything otofx knows about ops, one declarative rule per op family.

A rule is keyed by every spelling of its op: module classes (``nn.Conv2d``), torch functions
(``torch.relu``, ``F.relu``, ``operator.add``), tensor methods (``Method("relu")``) and aten
overloads (``torch.ops.aten.relu.default``). One rule serves fx graphs, export graphs and the
graphs dynamo hands a backend.

A rule has two halves:

* ``propagate(ctx, node)`` (channels pass, ``ctx`` a :class:`PropagateContext`) returns the
  labels of ``node``'s output, and may unify channels, record parameter slices and consumer
  sites, or pin channels it cannot handle;
* ``rewrite(ctx, node)`` (shrink pass, ``ctx`` a :class:`RewriteContext`), optional, fixes what
  the smaller graph needs beyond sliced parameters: module attributes (``out_channels``) and
  literal arguments (``view`` sizes).

Both contexts read the node's arguments the same way, ``ctx.arg(index, name, default)``. Every
rule file registers with the decorator ``@RULES.register(*keys, ...)`` on its propagate
function. An op with no rule pins every channel it touches (see ``passes.channels``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.fx import GraphModule, Node

from .table import ChannelTable


class PropagateContext(Protocol):
    """What a rule's ``propagate(ctx, node)`` receives (``passes.channels.ChannelContext``).

    Reading: the node's arguments, their labels (``passes.labels``) and real shapes, parameter
    names. Effects: unify and record through ``table``; pin what the rule cannot follow."""

    gm: GraphModule
    table: ChannelTable
    node: Node
    attention_unit: str           # "head" or "head_dim": what a head split makes prunable
    prune_hidden: bool            # norms and means over channels keep them prunable

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """The node's argument by position ``index`` or keyword ``name``."""

    def labels(self, arg: Any) -> Any:
        """The labels of an argument (a label tensor, a tuple of them, a ``SizeDep``, None)."""

    def shape(self, arg: Any) -> Any:
        """The real shape of a tensor argument (``torch.Size``), ``()`` for numbers, else None."""

    @property
    def out_shape(self) -> Any:
        """The real shape of the node's output."""

    def is_tensor(self, arg: Any) -> bool:
        """Whether the argument is a tensor the pass follows."""

    def module(self, node: Node | None = None) -> nn.Module:
        """The module a ``call_module`` node (default: this one) calls."""

    def param_of(self, arg: Any) -> str | None:
        """Canonical name of the parameter a ``get_attr`` argument reads, else None."""

    def module_param(self, attr: str, node: Node | None = None) -> str | None:
        """Canonical name of ``module.attr`` of a ``call_module`` node, if it is a tensor."""

    def param_named(self, name: str) -> str | None:
        """Canonical name of the parameter or buffer ``name``, None when there is none."""

    def uses(self, target: str) -> int:
        """How many nodes call the module or read the tensor ``target``."""

    def channels_along(self, arg: Any, dim: int, why: str, others: Iterable[int] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels, ids along dim)`` of an argument; channels along the other dims pinned."""

    def output_along(self, ids: torch.Tensor, dim: int, ndim: int | None = None) -> torch.Tensor:
        """Output labels with ``ids`` along ``dim``, size 1 elsewhere."""

    def pin(self, L: Any, reason: str) -> None:
        """Pin every channel in the labels ``L``, saying why."""

    def pin_soft(self, labels: Any, what: str) -> None:
        """Pin the soft ids in ``labels`` (an op that does not carry them)."""

    def couple_along(self, L: torch.Tensor, dim: int, reason: str) -> torch.Tensor:
        """Make the channels on each line of ``L`` along ``dim`` one channel."""

    def untracked(self, shape: Any = ...) -> Any:
        """Labels of data the pass does not follow (default: shaped like the output)."""

    def unknown(self, reason: str) -> Any:
        """Treat the node as an op without a rule: pin all it touches."""

    def combine(self, args: list[Any], zero_preserving: tuple[int, ...] = ()) -> torch.Tensor:
        """Labels of an elementwise op over broadcast ``args`` (joins unify channels)."""

    def join(self, ops: list[tuple[torch.Tensor, Any]], shape: Any,
             keeps_zero: list[bool]) -> torch.Tensor:
        """Labels of an elementwise join of (labels, real shape) operands into ``shape``."""


class RewriteContext(Protocol):
    """What a rule's ``rewrite(ctx, node)`` receives (``passes.shrink.ShrinkContext``): the
    smaller graph's module and the node being rewritten, every node's labels and shapes before
    and after the removal."""

    gm: GraphModule
    table: ChannelTable
    node: Node

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """The node's argument by position ``index`` or keyword ``name``."""

    def set_arg(self, index: int, name: str, value: Any) -> None:
        """Replace the node's argument ``name`` (at ``index`` when given by position)."""

    def module(self, node: Node | None = None) -> nn.Module:
        """The (already sliced) module a ``call_module`` node (default: this one) calls."""

    def labels(self, arg: Node) -> Any:
        """A node's labels from the analysis."""

    def old_shape(self, arg: Node) -> Any:
        """A node's shape before the removal."""

    def new_shape(self, arg: Node) -> Any:
        """A node's shape after the removal."""

    def changed(self, arg: Node) -> bool:
        """Whether a node's shape (or, for a size, its value) changes."""

    def kept_mask(self, arg: Node, dim: int) -> torch.Tensor | None:
        """Which positions along ``dim`` of a node stay (None when it holds no labels)."""


@dataclass(frozen=True)
class Method:
    """The key of a tensor method (``x.view(...)`` is ``Method("view")``)."""

    name: str


@dataclass(frozen=True)
class OpRule:
    name: str
    propagate: Callable[[PropagateContext, Node], Any]
    rewrite: Callable[[RewriteContext, Node], None] | None = None
    accepts_sizes: bool = False   # takes channel counts (``x.size(1)``) as shape arguments
    carries_soft: bool = False    # passes soft ids (attention scores) on unchanged in meaning
    reads_channels: bool = False  # may record a consumer site (``ChannelTable.consume``)


class RuleRegistry:
    def __init__(self) -> None:
        self._rules: dict[Any, OpRule] = {}

    def register(self, *keys: Any, rewrite: Callable[[RewriteContext, Node], None] | None = None,
                 accepts_sizes: bool = False, carries_soft: bool = False,
                 reads_channels: bool = False, name: str | None = None) -> Callable:
        """Decorator: ``@RULES.register(nn.ReLU, F.relu, Method("relu"))`` on a propagate
        function, which it returns unchanged (so decorators stack: one function may serve
        several rules)."""

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
