"""A grammar of random super-networks for the erasing property tests (hypothesis).

    net    := stem block+ head
    block  := plain | residual(branch) | sum(branch{2,3}, skip?) | cat(branch{1,2}, skip?) proj
    branch := op{1,2}
    op     := conv_bn(k in 1, 3) | relu conv_bn | pool bn | block          (nesting depth <= 2)

Every ``residual``/``sum``/``cat`` is a join whose operands the erasable pass turns into
structures (nested ones inside the branches of outer ones). A spec is plain nested tuples, so a
falsifying example prints readably and :func:`build` rebuilds the model from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from strategies_kinds import drew, grammar
from torch import nn
from zoo.supernets import PoolBN

C = 4            # channels everywhere inside the network
INPUT = (2, 3, 6, 6)


class ConvBN(nn.Module):
    def __init__(self, k: int, relu_first: bool):
        super().__init__()
        self.relu_first = relu_first
        self.conv = nn.Conv2d(C, C, k, padding=k // 2)
        self.bn = nn.BatchNorm2d(C)

    def forward(self, x):
        return self.bn(self.conv(F.relu(x) if self.relu_first else x))


class Seq(nn.Module):
    def __init__(self, ops):
        super().__init__()
        self.ops = nn.ModuleList(ops)

    def forward(self, x):
        for op in self.ops:
            x = op(x)
        return x


class Residual(nn.Module):
    def __init__(self, branch):
        super().__init__()
        self.branch = branch

    def forward(self, x):
        return x + self.branch(x)


class Sum(nn.Module):
    def __init__(self, branches, skip: bool):
        super().__init__()
        self.branches, self.skip = nn.ModuleList(branches), skip

    def forward(self, x):
        out = sum(b(x) for b in self.branches)
        return out + x if self.skip else out


class Cat(nn.Module):
    def __init__(self, branches, skip: bool):
        super().__init__()
        self.branches, self.skip = nn.ModuleList(branches), skip
        self.proj = nn.Conv2d(C * (len(branches) + skip), C, 1)

    def forward(self, x):
        parts = [b(x) for b in self.branches] + ([x] if self.skip else [])
        return self.proj(torch.cat(parts, 1))


class Net(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.stem = nn.Conv2d(INPUT[1], C, 3, padding=1)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(C, 3)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = F.relu(b(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build(spec) -> nn.Module:
    """The module a spec describes (a list of blocks: a network; a tuple: one block or op)."""
    if isinstance(spec, list):
        return Net([build(b) for b in spec])
    kind, *rest = spec
    if kind == "conv":
        return ConvBN(rest[0], rest[1])
    if kind == "pool":
        return PoolBN(C, rest[0])
    if kind == "seq":
        return Seq([build(op) for op in rest[0]])
    if kind == "plain":
        return ConvBN(3, False)
    if kind == "residual":
        return Residual(build(rest[0]))
    if kind == "sum":
        return Sum([build(b) for b in rest[0]], rest[1])
    return Cat([build(b) for b in rest[0]], rest[1])


@st.composite
def ops(draw, depth: int):
    kinds = ["conv", "conv", "pool"] + (["block"] if depth < 2 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "conv":
        return ("conv", draw(st.sampled_from([1, 3])), draw(st.booleans()))
    if kind == "pool":
        return ("pool", draw(st.sampled_from(["max", "avg"])))
    return draw(blocks(depth + 1))


@st.composite
def branches(draw, depth: int):
    return ("seq", [draw(ops(depth)) for _ in range(draw(st.integers(1, 2)))])


@st.composite
def blocks(draw, depth: int = 0):
    kind = draw(st.sampled_from(["residual", "sum", "cat", "plain"]))
    if kind == "residual":
        return ("residual", draw(branches(depth)))
    if kind == "sum":
        return ("sum", [draw(branches(depth)) for _ in range(draw(st.integers(2, 3)))],
                draw(st.booleans()))
    if kind == "cat":
        return ("cat", [draw(branches(depth)) for _ in range(draw(st.integers(1, 2)))],
                draw(st.booleans()))
    return ("plain",)


grammar("supernet", ["residual", "sum", "sum with skip", "cat", "cat with skip", "plain", "conv 1",
                      "conv 3", "relu conv", "pool max", "pool avg", "nested block"])


def kinds(spec, depth: int = 0) -> set[str]:
    """The kinds of the grammar a spec (or part of one) holds."""
    if isinstance(spec, list):
        return set().union(*(kinds(b) for b in spec))
    kind, *rest = spec
    if kind == "conv":
        return {f"conv {rest[0]}"} | ({"relu conv"} if rest[1] else set())
    if kind == "pool":
        return {f"pool {rest[0]}"}
    if kind == "seq":
        return set().union(*(kinds(op, depth) for op in rest[0]))
    out = {"nested block"} if depth else set()
    if kind == "plain":
        return out | {"plain"}
    branches = [rest[0]] if kind == "residual" else rest[0]
    out.add(f"{kind} with skip" if kind != "residual" and rest[1] else kind)
    return out.union(*(kinds(b, depth + 1) for b in branches))


@st.composite
def supernets(draw, max_blocks: int = 3):
    """Specs of random super-networks (build them with :func:`build`)."""
    spec = draw(st.lists(blocks(), min_size=1, max_size=max_blocks))
    drew("supernet", kinds(spec))
    return spec
