"""Elementwise ops: activations, arithmetic and friends. Joins unify the channels they meet.

``relu(x)`` keeps x's labels; ``x + y`` and ``x * gate`` unify x's channels with y's (or the
gate's) position by position after broadcasting; a join with data that carries no channel pins.
Activations need no zero-invariance here: a removed channel's value is read and folded by
shrink wherever it is not exactly zero.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch.fx import Node

from .. import labels as lb
from ..registry import RULES, Method, PropagateContext, RewriteContext, aten, functions, module_classes
from ..table import AFFINE

UNARY = (
    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh",
    "leaky_relu", "elu", "selu", "celu", "softplus", "mish", "softsign", "tanhshrink",
    "logsigmoid", "hardshrink", "softshrink", "rrelu", "threshold", "exp", "exp2", "expm1", "log",
    "log1p",
    "log2", "sqrt", "rsqrt", "abs", "neg", "negative", "square", "pow", "clamp", "clip", "clamp_min",
    "clamp_max", "sin", "cos", "tan", "erf", "erfc", "reciprocal", "sign", "floor", "ceil", "round",
    "trunc", "frac", "nan_to_num", "sinh", "cosh", "asinh", "atan", "sgn", "logit",
)
PASSTHROUGH = (
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "type", "type_as",
    "cpu", "cuda", "requires_grad_", "detach_",
)
UNARY_MODULES = (
    "ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh", "Hardswish", "Hardsigmoid", "Hardtanh",
    "LeakyReLU", "ELU", "SELU", "CELU", "Softplus", "Mish", "Softsign", "Tanhshrink", "LogSigmoid",
    "Hardshrink", "Softshrink", "RReLU", "Threshold",
)
PASSTHROUGH_MODULES = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                       "FeatureAlphaDropout", "Identity")
BINARY = (
    "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "maximum",
    "minimum", "fmax", "fmin", "rsub", "atan2", "hypot", "remainder", "fmod", "floor_divide",
    "where", "lerp", "addcmul", "addcdiv", "masked_fill", "eq", "ne", "ge", "gt", "le", "lt",
    "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor",
    "__and__", "__or__", "__xor__",
)

_inplace = [Method(n + "_") for n in UNARY + BINARY]
_operators = [operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
              operator.neg, operator.pos, operator.abs, operator.pow, operator.iadd, operator.isub,
              operator.imul, operator.itruediv, operator.mod]


@RULES.register(*functions(*UNARY, *BINARY), *module_classes(*UNARY_MODULES), *_inplace,
                *_operators, *[k for n in UNARY + BINARY for k in aten(n)],
                *[k for n in UNARY + BINARY for k in aten(n + "_")], carries_soft=True,
                name="elementwise")
def elementwise(ctx: PropagateContext, node: Node) -> torch.Tensor:
    return ctx.combine(list(node.args) + list(node.kwargs.values()), _zero_preserving(node))


_MULS = {"mul", "mul_", "multiply", "multiply_", "__mul__", "__rmul__", "__imul__", "imul"}
_DIVS = {"div", "div_", "divide", "divide_", "true_divide", "true_divide_", "__truediv__",
         "__itruediv__", "truediv", "itruediv"}


def _zero_preserving(node: Node) -> tuple[int, ...]:
    """Operands whose zeros stay zeros: both factors of a product, the numerator of a division."""
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    name = (packet or target).__name__ if not isinstance(target, str) else target
    if name in _MULS:
        return (0, 1)
    if name in _DIVS:
        return (0,)
    return ()


def _library_passthroughs() -> list:
    """Dropout-like ops of libraries that may be installed (identity in eval mode), by qualified
    name: importing torchvision or timm here would cost seconds in every process."""
    return ["torchvision.ops.stochastic_depth.StochasticDepth",
            "torchvision.ops.stochastic_depth.stochastic_depth",
            "timm.layers.drop.DropPath", "timm.layers.drop.drop_path"]


@RULES.register(*functions(*PASSTHROUGH), *module_classes(*PASSTHROUGH_MODULES),
                *[k for n in PASSTHROUGH for k in aten(n)], *_library_passthroughs(),
                *aten("dropout_"), *aten("_to_copy"), *aten("lift_fresh_copy"), *aten("alias"),
                carries_soft=True, name="passthrough")
def passthrough(ctx: PropagateContext, node: Node) -> torch.Tensor:
    """Ops that return their first argument's values (dropout, dtype casts, copies)."""
    L = ctx.labels(node.args[0])
    if not isinstance(L, torch.Tensor):
        return ctx.unknown("passthrough op on a non-tensor")
    return L.clone()


@RULES.register(*functions("softmax", "log_softmax", "softmin"),
                *module_classes("Softmax", "LogSoftmax", "Softmin"), *aten("softmax"),
                *aten("_softmax"), *aten("log_softmax"), *aten("_log_softmax"), carries_soft=True,
                name="softmax")
def softmax(ctx: PropagateContext, node: Node) -> torch.Tensor:
    """Normalises along one dim: fine unless that dim carries channels."""
    x = node.args[0]
    L = ctx.labels(x)
    if node.op == "call_module":
        dim = ctx.module(node).dim
    else:
        dim = ctx.arg(1, "dim")
    if dim is None:
        return ctx.unknown("softmax without an explicit dim")
    dim = dim % len(ctx.shape(x))
    if L.size(dim) > 1:
        ctx.pin(L, "softmax normalises across channels")
        return ctx.untracked()
    return L.clone()


def _prelu_rewrite(ctx: RewriteContext, node: Node) -> None:
    if node.op == "call_module":
        module = ctx.module(node)
        module.num_parameters = module.weight.numel()


@RULES.register(F.prelu, torch.prelu, *module_classes("PReLU"), rewrite=_prelu_rewrite, name="prelu")
def prelu(ctx: PropagateContext, node: Node) -> torch.Tensor:
    """PReLU with one slope per channel: the slopes are sliced with the channel (dim 1)."""
    x = node.args[0]
    L = ctx.labels(x)
    if node.op == "call_module":
        weight = ctx.module_param("weight")
    else:
        weight = ctx.param_of(ctx.arg(1, "weight"))
        if weight is None:
            return ctx.unknown("prelu slopes that are not a parameter")
    n = ctx.gm.get_parameter(weight).numel()
    if n == 1:
        return L.clone()
    cdim = 1 if len(ctx.shape(x)) > 1 else 0
    ids = ctx.table.param_slices(weight, 0, n, AFFINE)
    ctx.table.unify(lb.along(lb.materialize(L, ctx.shape(x), [cdim]), cdim), ids)
    return L.clone()
