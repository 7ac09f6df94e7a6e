"""Sizes and constants: ``x.size(1)``, ``x.shape``, arithmetic on them, and tensor factories.

A size is a python number; when it counts channels it carries a :class:`SizeDep` so that its
uses can be checked: as a shape argument (``view(b, c // g, ...)``) it adapts to the new count by
itself; used as a value (``x / x.size(1)``) it pins the channels it counts.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch.fx import Node

from .. import labels as lb
from ..common import SizeDep
from ..registry import RULES, Method, PropagateContext, aten, functions
from .elementwise import elementwise


def _dim_dep(L: torch.Tensor, shape: torch.Size, dim: int) -> SizeDep:
    """The channels ``shape[dim]`` counts: those along ``dim`` (none when every position along
    it has the same labels: that dim never shrinks, whatever the channels along the others)."""
    if L.size(dim) == 1:
        return SizeDep(torch.empty(0, dtype=torch.long))
    full = lb.materialize(L, shape, [dim])
    ids = full.movedim(dim, 0).reshape(full.size(dim), -1)
    ids = ids[ids >= 0]
    return SizeDep(ids.unique())


def shape_of(ctx: PropagateContext, x: Node) -> tuple:
    L, shape = ctx.labels(x), ctx.shape(x)
    return tuple(_dim_dep(L, shape, d) for d in range(len(shape)))


@RULES.register(Method("size"), accepts_sizes=True, name="size")
def size(ctx: PropagateContext, node: Node) -> Any:
    x = node.args[0]
    dim = ctx.arg(1, "dim")
    if dim is None:
        return shape_of(ctx, x)
    return _dim_dep(ctx.labels(x), ctx.shape(x), dim % len(ctx.shape(x)))


@RULES.register(Method("dim"), Method("ndimension"), Method("numel"), torch.numel, len,
                accepts_sizes=True, name="rank")
def rank(ctx: PropagateContext, node: Node) -> SizeDep:
    x = node.args[0]
    if node.target in ("numel", torch.numel):
        deps = [d.ids for d in shape_of(ctx, x)]
        return SizeDep(torch.cat(deps).unique() if deps else torch.empty(0, dtype=torch.long))
    if node.target is len:
        return _dim_dep(ctx.labels(x), ctx.shape(x), 0)
    return SizeDep(torch.empty(0, dtype=torch.long))


@RULES.register(operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
                operator.neg, operator.pow, accepts_sizes=True, carries_soft=True, name="arithmetic")
@RULES.register(math.sqrt, int, float, math.ceil, math.floor, accepts_sizes=True, name="size arithmetic")
def arithmetic(ctx: PropagateContext, node: Node) -> Any:
    """Python arithmetic: on sizes it keeps track of the channels counted; on tensors it is an
    elementwise op, where a size used as a value pins what it counts."""
    deps = [ctx.labels(a) for a in node.args]
    if any(ctx.is_tensor(a) for a in node.args):
        for d in deps:
            if isinstance(d, SizeDep):
                ctx.table.pin(d.ids, f"a channel count is used as a value (at node '{node.name}')")
        return elementwise(ctx, node)
    ids = [d.ids for d in deps if isinstance(d, SizeDep)]
    if not ids:
        return None
    return SizeDep(torch.cat(ids).unique())


# ---- tensor factories -------------------------------------------------------------------------

_FILL_LIKE = ("zeros_like", "ones_like", "full_like", "empty_like")
_RANDOM_LIKE = ("rand_like", "randn_like", "randint_like")
_FACTORIES = ("zeros", "ones", "full", "empty", "arange", "linspace", "tensor", "as_tensor",
              "eye", "rand", "randn", "randint", "new_zeros", "new_ones", "new_full", "new_empty",
              "new_tensor", "scalar_tensor")


@RULES.register(*functions(*_FILL_LIKE), accepts_sizes=True, name="fill_like")
def fill_like(ctx: PropagateContext, node: Node) -> torch.Tensor:
    """A uniform fill whose shape follows its argument: a constant that needs no slicing."""
    return lb.full(ctx.out_shape, lb.CONSTANT)


@RULES.register(*functions(*_RANDOM_LIKE), name="random_like")
def random_like(ctx: PropagateContext, node: Node) -> torch.Tensor:
    return ctx.untracked()


def _checks() -> list:
    # export's input guards by name: importing torch.export here would cost seconds
    return aten("_assert_tensor_metadata") + aten("_assert_scalar") + aten("_assert_async") + [
        "torch.export._unlift.GuardsFn"]


@RULES.register(*_checks(), accepts_sizes=True, carries_soft=True, name="check")
def check(ctx: PropagateContext, node: Node) -> None:
    """Assertions and input guards of export graphs: they compute nothing."""
    return None


@RULES.register(*functions(*_FACTORIES), *[k for n in _FACTORIES for k in aten(n)], accepts_sizes=True,
                name="factory")
def factory(ctx: PropagateContext, node: Node) -> Any:
    """A new tensor: a uniform constant when every size is computed (``new_zeros(x.shape)``),
    data we do not follow when a literal size could count channels."""
    if not isinstance(ctx.out_shape, torch.Size):
        return None
    sizes = [a for a in node.args[1 if node.op == "call_method" else 0:]]
    uniform = node.target in ("zeros", "ones", "full", "empty", "new_zeros", "new_ones",
                              "new_full", "new_empty", torch.zeros, torch.ones, torch.full,
                              torch.empty)
    literal = [s for s in _flatten(sizes) if isinstance(s, int) and s > 1]
    if uniform and not literal:
        return lb.full(ctx.out_shape, lb.CONSTANT)
    return ctx.untracked()


def _flatten(xs):
    for x in xs:
        if isinstance(x, (list, tuple)):
            yield from _flatten(x)
        else:
            yield x
