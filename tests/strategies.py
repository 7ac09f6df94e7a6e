"""Hypothesis strategies: random CNNs from a small grammar of blocks, as runnable Python source.

Each strategy draws a ``ModelCase``: the source of an ordinary ``nn.Module`` (``class Model``)
whose ``forward`` mixes module calls (``self.m3(x)``) and functional calls (``F.relu``,
``torch.cat``, ``x.view``), the input shape, and a weight seed. Because the model is source text,
the falsifying example hypothesis prints is a self-contained script that rebuilds the model.

Grammar (each block maps a (B, C, H, W) feature map to another; C in 2..12, H, W in 4..12):
conv, batchnorm, activation, residual add, cat of branches, depthwise conv, grouped conv, SE gate,
channel shuffle, group norm, instance norm, pooling, adaptive pooling, upsampling, channel split,
concatenating the model's input (channels otofx cannot track), and (for the conservatism tests)
ops otofx has no rule for: an opaque leaf module wrapping a custom ``autograd.Function`` and
``torch.fft`` calls. A model ends in a linear head (global pool or
flatten, then ``self.head = nn.Linear``).
"""

from __future__ import annotations

import linecache
import textwrap
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st
from strategies_kinds import drew, grammar
from torch import nn

# ---- what every generated script starts with -----------------------------------------------------

PRELUDE = '''\
import torch
import torch.nn as nn
import torch.nn.functional as F


class _RollChannels(torch.autograd.Function):
    """A custom op otofx cannot know: mixes neighbouring channels."""

    @staticmethod
    def forward(ctx, x):
        return x + 0.5 * torch.roll(x, 1, dims=1)

    @staticmethod
    def backward(ctx, g):
        return g + 0.5 * torch.roll(g, -1, dims=1)


class Opaque(nn.Module):
    """Passed as a leaf module: otofx sees one call_module node with no rule."""

    def forward(self, x):
        return _RollChannels.apply(x)


@torch.no_grad()
def init_weights(model, seed):
    """Deterministic, non-trivial weights and norm statistics."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
        elif name.endswith("weight"):
            p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.3 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model
'''

_counter = [0]


@dataclass
class ModelCase:
    """A generated model: ``source`` defines ``Model``; ``build()`` instantiates it."""

    source: str
    input_shape: tuple[int, ...]
    seed: int
    leaves: tuple[str, ...] = ()          # class names to pass as leaf_modules
    unknown_nodes: tuple[str, ...] = ()   # what the forward calls that otofx has no rule for
    blocks: tuple[str, ...] = field(default=())

    def namespace(self) -> dict:
        _counter[0] += 1
        filename = "<otofx-generated>"     # one name: hypothesis keys failures by location
        linecache.cache[filename] = (len(self.source), None, self.source.splitlines(True),
                                     filename)
        ns: dict = {"__name__": f"otofx_generated_{_counter[0]}"}
        exec(compile(self.source, filename, "exec"), ns)
        return ns

    def build(self) -> tuple[nn.Module, list[type]]:
        """(the model with deterministic weights, its leaf-module classes)."""
        ns = self.namespace()
        model = ns["init_weights"](ns["Model"](), self.seed)
        return model, [ns[name] for name in self.leaves]

    def input(self, seed: int = 0) -> torch.Tensor:
        return torch.randn(self.input_shape, generator=torch.Generator().manual_seed(seed))

    def script(self) -> str:
        leaves = ", ".join(self.leaves)
        return (f"{self.source}\n\n"
                f"model = init_weights(Model(), seed={self.seed})\n"
                f"x = torch.randn{self.input_shape}\n"
                f"# gm = otofx.trace(model, leaf_modules=[{leaves}])\n")

    def __repr__(self) -> str:
        return f"ModelCase(blocks={list(self.blocks)}, script=<<<\n{self.script()}>>>)"

    def _repr_pretty_(self, p, cycle) -> None:   # what hypothesis prints for a failing example
        p.text(repr(self))


# ---- code generation ------------------------------------------------------------------------------


@dataclass
class Feat:
    var: str
    c: int
    h: int
    w: int


class _Gen:
    """Accumulates ``__init__`` and ``forward`` lines while blocks are drawn."""

    def __init__(self, draw, allow_unknown: bool):
        self.draw = draw
        self.allow_unknown = allow_unknown
        self.init: list[str] = []
        self.body: list[str] = []
        self.nvar = 0
        self.nmod = 0
        self.fresh: str | None = None      # a value nobody else reads: in-place ops are safe on it
        self.leaves: set[str] = set()
        self.unknown: list[str] = []
        self.kinds: list[str] = []

    # helpers
    def mod(self, ctor: str) -> str:
        name = f"m{self.nmod}"
        self.nmod += 1
        self.init.append(f"self.{name} = {ctor}")
        return f"self.{name}"

    def emit(self, expr: str, prefix: str = "x") -> str:
        self.nvar += 1
        v = f"{prefix}{self.nvar}"
        self.body.append(f"{v} = {expr}")
        self.fresh = v
        return v

    def line(self, text: str) -> None:
        self.body.append(text)

    def int(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def pick(self, options):
        return self.draw(st.sampled_from(list(options)))

    def bool(self) -> bool:
        return self.draw(st.booleans())


def _out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _instead(g: _Gen, build, f: Feat, keep: bool, depth: int) -> Feat:
    """Build block ``build`` in place of the one drawn, whose preconditions do not hold here: the
    record of kinds (``g.kinds``, the last entry being the drawn block) names what was built."""
    g.kinds[-1] = build.__name__
    return build(g, f, keep, depth)


# ---- blocks ---------------------------------------------------------------------------------------
# Each takes (gen, feat, keep_spatial, depth) and returns the new Feat. ``keep_spatial``: the block
# sits inside a branch that is joined with others, so H and W must not change.


def conv(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    cout = g.int(2, 12)
    k = g.pick([1, 3])
    if keep:
        p, s = k // 2, 1
    else:
        p = g.pick([0, 1])
        s = g.pick([1, 2]) if min(f.h, f.w) >= 4 else 1
        if min(f.h, f.w) + 2 * p < k:
            p = 1
    bias = g.bool()
    style = g.pick(["module", "module", "functional"])
    if style == "module":
        m = g.mod(f"nn.Conv2d({f.c}, {cout}, {k}, stride={s}, padding={p}, bias={bias})")
        v = g.emit(f"{m}({f.var})")
    else:
        w = g.mod(f"nn.Parameter(torch.randn({cout}, {f.c}, {k}, {k}))")
        b = g.mod(f"nn.Parameter(torch.zeros({cout}))") if bias else "None"
        v = g.emit(f"F.conv2d({f.var}, {w}, {b}, stride={s}, padding={p})")
    return Feat(v, cout, _out(f.h, k, s, p), _out(f.w, k, s, p))


def batchnorm(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    affine = g.draw(st.sampled_from([True, True, False]))
    m = g.mod(f"nn.BatchNorm2d({f.c})" if affine else f"nn.BatchNorm2d({f.c}, affine=False)")
    return Feat(g.emit(f"{m}({f.var})"), f.c, f.h, f.w)


_ACTS = {
    "relu": ["nn.ReLU()", "F.relu({x})", "torch.relu({x})", "{x}.relu()", "nn.ReLU(inplace=True)",
             "F.relu({x}, inplace=True)"],
    "relu6": ["nn.ReLU6()", "F.relu6({x})"],
    "gelu": ["nn.GELU()", "F.gelu({x})", "nn.GELU(approximate='tanh')"],
    "silu": ["nn.SiLU()", "F.silu({x})"],
    "sigmoid": ["torch.sigmoid({x})", "nn.Sigmoid()", "{x}.sigmoid()"],
    "hardswish": ["nn.Hardswish()", "F.hardswish({x})"],
    "tanh": ["torch.tanh({x})", "nn.Tanh()"],
    "leaky_relu": ["F.leaky_relu({x}, 0.1)", "nn.LeakyReLU(0.2)"],
}


def act_expr(g: _Gen, x: str, name: str | None = None) -> str:
    name = name or g.pick(list(_ACTS))
    spelling = g.pick(_ACTS[name])
    if "inplace=True" in spelling and g.fresh != x:
        spelling = spelling.replace(", inplace=True", "").replace("inplace=True", "")
    if spelling.startswith("nn."):
        return f"{g.mod(spelling)}({x})"
    return spelling.format(x=x)


def activation(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    return Feat(g.emit(act_expr(g, f.var)), f.c, f.h, f.w)


def _branch(g: _Gen, f: Feat, depth: int, lo: int, hi: int) -> Feat:
    g.fresh = None        # the branch input is shared with the other branch / the identity
    n = g.int(lo, hi)
    for _ in range(n):
        f = block(g, f, True, depth + 1)
    return f


def residual(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    out = _branch(g, f, depth, 1, 3)
    ident = f.var
    if out.c != f.c or g.draw(st.integers(0, 3)) == 0:
        m = g.mod(f"nn.Conv2d({f.c}, {out.c}, 1, bias={g.bool()})")
        ident = g.emit(f"{m}({f.var})")
        if g.bool():
            bn = g.mod(f"nn.BatchNorm2d({out.c})")
            ident = g.emit(f"{bn}({ident})")
    join = g.pick(["{a} + {b}", "{b} + {a}", "torch.add({a}, {b})", "{a}.add({b})"])
    v = g.emit(join.format(a=out.var, b=ident))
    if g.bool():
        v = g.emit(act_expr(g, v))
    return Feat(v, out.c, f.h, f.w)


def cat(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    n = g.int(2, 3)
    parts = [_branch(g, f, depth, 0, 2) for _ in range(n)]
    names = ", ".join(p.var for p in parts)
    spelling = g.pick(["torch.cat([{xs}], dim=1)", "torch.cat(({xs}), 1)", "torch.cat([{xs}], 1)"])
    out = Feat(g.emit(spelling.format(xs=names)), sum(p.c for p in parts), f.h, f.w)
    if out.c > 16:    # keep widths small
        cout = g.int(2, 12)
        m = g.mod(f"nn.Conv2d({out.c}, {cout}, 1)")
        out = Feat(g.emit(f"{m}({out.var})"), cout, f.h, f.w)
    return out


def depthwise(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    mult = g.pick([1, 2]) if f.c <= 8 else 1
    s = 1 if keep or min(f.h, f.w) < 4 else g.pick([1, 2])
    bias = g.bool()
    m = g.mod(f"nn.Conv2d({f.c}, {f.c * mult}, 3, stride={s}, padding=1, groups={f.c}, "
              f"bias={bias})")
    return Feat(g.emit(f"{m}({f.var})"), f.c * mult, _out(f.h, 3, s, 1), _out(f.w, 3, s, 1))


def grouped(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    options = [n for n in (2, 4) if f.c % n == 0]
    if not options:
        return _instead(g, conv, f, keep, depth)
    n = g.pick(options)
    cout = n * g.int(1, max(1, 12 // n))
    k = g.pick([1, 3])
    m = g.mod(f"nn.Conv2d({f.c}, {cout}, {k}, padding={k // 2}, groups={n}, bias={g.bool()})")
    return Feat(g.emit(f"{m}({f.var})"), cout, f.h, f.w)


def se(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    hidden = g.int(2, 8)
    x = f.var
    style = g.pick(["linear", "conv"])
    if style == "linear":
        fc1 = g.mod(f"nn.Linear({f.c}, {hidden})")
        fc2 = g.mod(f"nn.Linear({hidden}, {f.c})")
        pool = g.pick(["{x}.mean((2, 3))", "F.adaptive_avg_pool2d({x}, 1).flatten(1)",
                       "{x}.mean(dim=[2, 3])"])
        s = g.emit(pool.format(x=x), "s")
        s = g.emit(f"F.relu({fc1}({s}))", "s")
        s = g.emit(f"torch.sigmoid({fc2}({s}))", "s")
        gate = g.pick(["view", "none", "unsqueeze"])
        if gate == "view":
            sizes = g.pick(["{x}.size(0), {x}.size(1)", "{x}.shape[0], {x}.shape[1]", "unpack"])
            if sizes == "unpack":
                g.line(f"b, c = {x}.shape[:2]")
                sizes = "b, c"
            s = g.emit(f"{s}.view({sizes.format(x=x)}, 1, 1)", "s")
        elif gate == "none":
            s = g.emit(f"{s}[:, :, None, None]", "s")
        else:
            s = g.emit(f"{s}.unsqueeze(-1).unsqueeze(-1)", "s")
    else:
        fc1 = g.mod(f"nn.Conv2d({f.c}, {hidden}, 1)")
        fc2 = g.mod(f"nn.Conv2d({hidden}, {f.c}, 1)")
        s = g.emit(f"{x}.mean((2, 3), keepdim=True)", "s")
        s = g.emit(f"{fc2}(F.relu({fc1}({s})))", "s")
        s = g.emit(g.pick([f"torch.sigmoid({s})", f"F.hardsigmoid({s})"]), "s")
    mul = g.pick(["{x} * {s}", "{s} * {x}", "torch.mul({x}, {s})"])
    return Feat(g.emit(mul.format(x=x, s=s)), f.c, f.h, f.w)


def shuffle(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    options = [n for n in (2, 3, 4) if f.c % n == 0 and f.c > n]
    if not options:
        return _instead(g, activation, f, keep, depth)
    n = g.pick(options)
    style = g.pick(["unpack", "size", "module"])
    x = f.var
    if style == "unpack":
        g.line(f"b, c, h, w = {x}.size()")
        v = g.emit(f"{x}.view(b, {n}, c // {n}, h, w).transpose(1, 2).contiguous()"
                   ".view(b, c, h, w)")
    elif style == "size":
        v = g.emit(f"{x}.view({x}.size(0), {n}, {x}.size(1) // {n}, {x}.size(2), {x}.size(3))"
                   f".transpose(1, 2).reshape({x}.size(0), -1, {x}.size(2), {x}.size(3))")
    else:
        m = g.mod(f"nn.ChannelShuffle({n})")
        v = g.emit(f"{m}({x})")
    return Feat(v, f.c, f.h, f.w)


def groupnorm(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    n = g.pick([d for d in range(1, f.c + 1) if f.c % d == 0])
    if g.draw(st.integers(0, 3)) == 0:
        v = g.emit(f"F.group_norm({f.var}, {n})")
    else:
        v = g.emit(f"{g.mod(f'nn.GroupNorm({n}, {f.c})')}({f.var})")
    return Feat(v, f.c, f.h, f.w)


def instancenorm(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    if f.h * f.w == 1:    # instance norm of a single pixel raises in training mode
        return _instead(g, batchnorm, f, keep, depth)
    spelling = g.pick([f"nn.InstanceNorm2d({f.c})", f"nn.InstanceNorm2d({f.c}, affine=True)",
                       "F.instance_norm"])
    if spelling.startswith("nn."):
        v = g.emit(f"{g.mod(spelling)}({f.var})")
    else:
        v = g.emit(f"F.instance_norm({f.var})")
    return Feat(v, f.c, f.h, f.w)


def pool(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    same = ["F.max_pool2d({x}, 3, stride=1, padding=1)", "nn.AvgPool2d(3, stride=1, padding=1)",
            "F.avg_pool2d({x}, 3, 1, 1, count_include_pad=False)"]
    half = ["nn.MaxPool2d(2)", "F.max_pool2d({x}, 2)", "F.avg_pool2d({x}, 2)",
            "nn.AvgPool2d(2, stride=2)"]
    options = same if keep or min(f.h, f.w) < 2 else same + half
    spelling = g.pick(options)
    x = f"{g.mod(spelling)}({f.var})" if spelling.startswith("nn.") else spelling.format(x=f.var)
    h, w = (f.h, f.w) if spelling in same else (f.h // 2, f.w // 2)
    return Feat(g.emit(x), f.c, h, w)


def adaptive(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    if keep:
        return _instead(g, pool, f, keep, depth)
    oh, ow = g.int(1, min(f.h, 3)), g.int(1, min(f.w, 3))
    size = str(oh) if oh == ow else f"({oh}, {ow})"
    if g.bool():
        v = g.emit(f"{g.mod(f'nn.AdaptiveAvgPool2d({size})')}({f.var})")
    else:
        v = g.emit(f"F.adaptive_avg_pool2d({f.var}, {size})")
    return Feat(v, f.c, oh, ow)


def upsample(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    if keep or max(f.h, f.w) > 8:
        return _instead(g, activation, f, keep, depth)
    spelling = g.pick(["F.interpolate({x}, scale_factor=2, mode='nearest')",
                       "F.interpolate({x}, scale_factor=2, mode='bilinear', align_corners=False)",
                       "nn.Upsample(scale_factor=2, mode='nearest')",
                       "nn.Upsample(scale_factor=2, mode='bilinear')"])
    x = f"{g.mod(spelling)}({f.var})" if spelling.startswith("nn.") else spelling.format(x=f.var)
    return Feat(g.emit(x), f.c, f.h * 2, f.w * 2)


def split(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    if f.c < 2:
        return _instead(g, conv, f, keep, depth)
    c1 = g.int(1, f.c - 1)
    style = g.pick(["split", "method", "slice", "chunk"])
    x = f.var
    g.nvar += 1
    a, b = f"a{g.nvar}", f"b{g.nvar}"
    if style == "chunk" and f.c % 2 == 0:
        c1 = f.c // 2
        g.line(f"{a}, {b} = {x}.chunk(2, dim=1)")
    elif style == "slice":
        g.line(f"{a} = {x}[:, :{c1}]")
        g.line(f"{b} = {x}[:, {c1}:]")
    elif style == "method":
        g.line(f"{a}, {b} = {x}.split([{c1}, {f.c - c1}], 1)")
    else:
        g.line(f"{a}, {b} = torch.split({x}, [{c1}, {f.c - c1}], dim=1)")
    pa = _branch(g, Feat(a, c1, f.h, f.w), depth, 0, 2)
    pb = _branch(g, Feat(b, f.c - c1, f.h, f.w), depth, 0, 2)
    first, second = (pa, pb) if g.bool() else (pb, pa)
    v = g.emit(f"torch.cat([{first.var}, {second.var}], dim=1)")
    return Feat(v, pa.c + pb.c, f.h, f.w)


def input_cat(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    """Concatenate the model's input (channels otofx does not track) to the features."""
    if (f.h, f.w) != g.input_hw:
        return _instead(g, conv, f, keep, depth)
    first = g.bool()
    xs = f"{f.var}, x" if first else f"x, {f.var}"
    return Feat(g.emit(f"torch.cat([{xs}], dim=1)"), f.c + g.input_c, f.h, f.w)


def unknown(g: _Gen, f: Feat, keep: bool, depth: int) -> Feat:
    """An op otofx has no rule for."""
    kind = g.pick(["leaf", "fft_channels", "fft_spatial"])
    if kind == "leaf":
        m = g.mod("Opaque()")
        g.leaves.add("Opaque")
        v = g.emit(f"{m}({f.var})")
        g.unknown.append(m.removeprefix("self."))
    elif kind == "fft_channels":
        v = g.emit(f"torch.fft.fft({f.var}, dim=1).real")
        g.unknown.append("fft")
    else:
        v = g.emit(f"torch.fft.fft2({f.var}).abs()")
        g.unknown.append("fft2")
    return Feat(v, f.c, f.h, f.w)


BLOCKS = {
    "conv": conv, "batchnorm": batchnorm, "activation": activation, "residual": residual,
    "cat": cat, "depthwise": depthwise, "grouped": grouped, "se": se, "shuffle": shuffle,
    "groupnorm": groupnorm, "instancenorm": instancenorm, "pool": pool, "adaptive": adaptive,
    "upsample": upsample, "split": split, "input_cat": input_cat,
}
grammar("cnn", [*BLOCKS, "unknown"])
_NESTING = {"residual", "cat", "split"}
_SPATIAL = {"pool", "adaptive", "upsample"}


def block(g: _Gen, f: Feat, keep: bool, depth: int, kinds=None) -> Feat:
    names = list(kinds or BLOCKS)
    if depth >= 2:
        names = [n for n in names if n not in _NESTING]
    if keep:
        names = [n for n in names if n not in _SPATIAL or n == "pool"]
    if g.allow_unknown and g.draw(st.integers(0, 5)) == 0:
        g.kinds.append("unknown")
        return unknown(g, f, keep, depth)
    name = g.pick(names)
    g.kinds.append(name)
    return BLOCKS[name](g, f, keep, depth)


def head(g: _Gen, f: Feat) -> Feat:
    classes = g.int(2, 6)
    style = "gap" if f.c * f.h * f.w > 768 else g.pick(["gap", "flatten"])
    if style == "gap":
        spelling = g.pick(["{x}.mean((2, 3))", "F.adaptive_avg_pool2d({x}, 1).flatten(1)",
                           "torch.flatten(POOL, 1)", "{x}.mean(dim=[2, 3])"])
        if "POOL" in spelling:
            spelling = spelling.replace("POOL", f"{g.mod('nn.AdaptiveAvgPool2d(1)')}({{x}})")
        v, width = g.emit(spelling.format(x=f.var)), f.c
    else:
        spelling = g.pick(["{x}.flatten(1)", "torch.flatten({x}, 1)", "{x}.contiguous().view({x}.size(0), -1)",
                           "{x}.reshape({x}.shape[0], -1)", "FLATTEN"])
        if spelling == "FLATTEN":
            spelling = f"{g.mod('nn.Flatten()')}({{x}})"
        v, width = g.emit(spelling.format(x=f.var)), f.c * f.h * f.w
    if g.draw(st.integers(0, 3)) == 0:    # an MLP head: one more prunable linear group
        hidden = g.int(2, 12)
        v = g.emit(f"{g.mod(f'nn.Linear({width}, {hidden})')}({v})")
        v = g.emit(act_expr(g, v))
        if g.bool():
            v = g.emit(f"{g.mod('nn.Dropout(0.1)')}({v})")
        width = hidden
    g.init.append(f"self.head = nn.Linear({width}, {classes})")
    return Feat(g.emit(f"self.head({v})", "y"), classes, 1, 1)


def render(g: _Gen, out: str) -> str:
    init = "\n".join(g.init) or "pass"
    body = "\n".join(g.body + [f"return {out}"])
    return (PRELUDE + "\n\nclass Model(nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            f"{textwrap.indent(init, ' ' * 8)}\n\n"
            "    def forward(self, x):\n"
            f"{textwrap.indent(body, ' ' * 8)}\n")


def handwritten(init: str, forward: str, input_shape: tuple[int, ...], seed: int = 0,
                leaves: tuple[str, ...] = ()) -> ModelCase:
    """A ``ModelCase`` from the body of ``__init__`` and ``forward`` (for ``@example`` cases:
    regressions the fuzzer found, kept in every profile)."""
    g = _Gen(None, False)
    g.init = textwrap.dedent(init).strip().splitlines()
    lines = textwrap.dedent(forward).strip().splitlines()
    g.body, out = lines[:-1], lines[-1].removeprefix("return ").strip()
    return ModelCase(render(g, out), tuple(input_shape), seed, leaves, (), ("handwritten",))


@st.composite
def cnn_models(draw, min_blocks: int = 1, max_blocks: int = 5, allow_unknown: bool = False,
               kinds: tuple[str, ...] | None = None, max_hw: int = 12) -> ModelCase:
    """A random CNN with a linear head. ``allow_unknown`` mixes in (and guarantees at least one)
    op otofx has no rule for; ``kinds`` restricts the top-level block kinds."""
    g = _Gen(draw, allow_unknown)
    cin = draw(st.integers(1, 4))
    h, w = draw(st.integers(4, max_hw)), draw(st.integers(4, max_hw))
    f = Feat("x", cin, h, w)
    g.input_c, g.input_hw = cin, (h, w)
    if draw(st.integers(0, 4)) != 4:     # usually a stem conv, as real CNNs have
        g.kinds.append("conv")
        f = conv(g, f, False, 0)
    n = draw(st.integers(min_blocks, max_blocks))
    forced = draw(st.integers(0, n)) if allow_unknown else -1
    for i in range(n + 1):
        if i == forced:
            g.kinds.append("unknown")
            f = unknown(g, f, False, 0)
        if i < n:
            f = block(g, f, False, 0, kinds)
    y = head(g, f)
    drew("cnn", g.kinds)
    return ModelCase(render(g, y.var), (2, cin, h, w), draw(st.integers(0, 2**16)),
                     tuple(sorted(g.leaves)), tuple(g.unknown), tuple(g.kinds))
