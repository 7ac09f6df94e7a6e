"""FLOP formulas, one per op family that ``FlopCounterMode`` counts, over symbolic shapes.

Each formula gets a :class:`FlopContext` (the node's argument shapes as tuples of sympy sizes in
the groups' widths, its parameters' shapes likewise) and returns the node's FLOPs as a sympy
expression: the same count ``torch.utils.flop_counter`` makes (multiplies and adds of the
matrix products and convolutions, 2 per multiply-accumulate, biases not counted), so that the
expression evaluated at the dense widths equals the node's measured FLOPs. ``otofx.cost`` checks
exactly that and holds a node's FLOPs constant (and says so) when no formula fits.

Before/after, for ``nn.Conv2d(3, 8, 3)`` on a (2, 3, 10, 10) input, ``c`` the width of its
output group: measured 2 * 2 * 8 * 8 * 8 * 3 * 9 = 27648 FLOPs, formula ``3456 * c``.
"""

from __future__ import annotations

import operator
from typing import Any

import sympy
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node

from ..registry import Method, RuleRegistry, arg_of, aten, module_classes

FLOPS = RuleRegistry()

Shape = tuple[sympy.Expr, ...]


class FlopContext:
    """What a FLOP formula reads: symbolic shapes of arguments, parameters and the output."""

    def __init__(self, gm: GraphModule, node_dims: dict[str, Shape],
                 param_dims: dict[str, Shape]) -> None:
        self.gm = gm
        self._node_dims = node_dims
        self._param_dims = param_dims
        self.node: Node | None = None

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        return arg_of(self.node, index, name, default)

    def module(self) -> nn.Module:
        return self.gm.get_submodule(self.node.target)

    def dims(self, x: Any) -> Shape:
        """Symbolic shape of an argument (a node, or a parameter read by ``get_attr``)."""
        if isinstance(x, Node) and x.op == "get_attr" and x.target in self._param_dims:
            return self._param_dims[x.target]
        if isinstance(x, Node) and x.name in self._node_dims:
            return self._node_dims[x.name]
        raise KeyError(f"no symbolic shape for {x}")

    def param(self, attr: str) -> Shape:
        """Symbolic shape of the current module's parameter ``attr``."""
        return self._param_dims[f"{self.node.target}.{attr}"]

    @property
    def out(self) -> Shape:
        return self.dims(self.node)


def _prod(xs) -> sympy.Expr:
    return sympy.Mul(*xs)


@FLOPS.register(*module_classes("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"),
                F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
                *[k for d in (1, 2, 3) for k in aten(f"conv{d}d", "default")
                  + aten(f"conv_transpose{d}d", "input")], name="conv")
def conv(ctx: FlopContext, node: Node) -> sympy.Expr:
    """``batch * prod(spatial) * prod(weight) * 2`` over the output (input when transposed)."""
    if node.op == "call_module":
        w = ctx.param("weight")
        transposed = isinstance(ctx.module(), nn.modules.conv._ConvTransposeNd)
    else:
        w = ctx.dims(ctx.arg(1, "weight"))
        transposed = "transpose" in getattr(node.target, "__name__", str(node.target))
    x = ctx.dims(node.args[0])
    spatial = (x if transposed else ctx.out)[-(len(w) - 2):]
    batch = x[0] if len(x) == len(w) else 1      # unbatched: (C, *spatial)
    return 2 * batch * _prod(spatial) * _prod(w)


@FLOPS.register(*module_classes("Linear"), F.linear, torch._C._nn.linear, *aten("linear"), name="linear")
def linear(ctx: FlopContext, node: Node) -> sympy.Expr:
    """``2 * tokens * in * out``."""
    x = ctx.dims(node.args[0])
    w = ctx.param("weight") if node.op == "call_module" else ctx.dims(ctx.arg(1, "weight"))
    return 2 * _prod(x[:-1]) * x[-1] * w[0]


@FLOPS.register(torch.matmul, torch.mm, torch.bmm, operator.matmul, Method("matmul"), Method("mm"),
                Method("bmm"), Method("__matmul__"), *aten("matmul"), *aten("mm"), *aten("bmm"),
                torch.addmm, torch.baddbmm, Method("addmm"), Method("baddbmm"), *aten("addmm"),
                *aten("baddbmm"), name="matmul")
def matmul(ctx: FlopContext, node: Node) -> sympy.Expr:
    """``2 * numel(out) * contracted``; ``addmm``/``baddbmm`` count only the product."""
    a = ctx.dims(node.args[1] if _adds(node) else node.args[0])
    return 2 * _prod(ctx.out) * a[-1]


def _adds(node: Node) -> bool:
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return name.split(".")[0] in ("addmm", "baddbmm")


@FLOPS.register(F.scaled_dot_product_attention, *aten("scaled_dot_product_attention"),
                name="scaled_dot_product_attention")
def sdpa(ctx: FlopContext, node: Node) -> sympy.Expr:
    """``q @ k^T`` and ``attn @ v``: ``2 * batch * L * S * (E + Ev)``, batch and heads from q."""
    q, k, v = ctx.dims(node.args[0]), ctx.dims(ctx.arg(1, "key")), ctx.dims(ctx.arg(2, "value"))
    return 2 * _prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


@FLOPS.register(nn.MultiheadAttention, name="multihead_attention")
def multihead_attention(ctx: FlopContext, node: Node) -> sympy.Expr:
    """Self-attention through ``nn.MultiheadAttention``: the packed projection, the two
    products over ``rows / 3`` inner features, the out projection."""
    m = ctx.module()
    x = ctx.dims(node.args[0])
    rows, width = ctx.param("in_proj_weight")
    out_rows = ctx.param("out_proj.weight")[0]
    seq = x[0] if len(x) == 2 or not m.batch_first else x[1]
    tokens = _prod(x[:-1])
    inner = rows / 3
    return 2 * tokens * width * rows + 4 * tokens * seq * inner + 2 * tokens * inner * out_rows


def formula(ctx: FlopContext, node: Node) -> sympy.Expr | None:
    """The FLOPs of ``node`` in its symbolic shapes, or None when no formula applies."""
    rule = FLOPS.lookup(ctx.gm, node)
    if rule is None:
        return None
    ctx.node = node
    try:
        return sympy.expand(rule.propagate(ctx, node))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
