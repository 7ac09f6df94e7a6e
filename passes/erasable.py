"""The erasable pass: structures whose whole output can vanish (OTOv3's operator level).

A *structure* is one operand of a join, together with the nodes that exist only to compute it:

* a residual branch: the operand of ``x + f(x)`` beside an identity or projection skip (a
  transformer block's attention and MLP sub-layers are such branches),
* a candidate of a NAS mixed edge: a term of a sum of parallel ops (``a + b + c`` or ``sum(...)``),
* an operand of a ``cat`` along a channel dim.

Its *region* is the operand's node and every node whose uses all lie in the region (walked
backwards); its parameters are the ones the region reads. A structure is erasable when it owns
its parameters (none is read outside the region), has some, and zeroing all of them makes its
output exactly zero (checked by running the region on the example inputs and on random ones).
Erasing one deletes the region and simplifies the join: an add keeps its other operand, a sum
loses the term, a cat loses the segment (its channels go like zero channels, with the consumers'
input slices). Structures nest: a region inside another one is its child (a DAG, kept as
``parents``/``children``). :func:`connected` answers whether a set of erased structures leaves
every graph output computed from the inputs.

Results: ``gm.meta["otofx.structures"]`` (list of :class:`ErasableStructure`, outer ones first)
and ``node.meta["otofx.structure"]`` (names of the structures whose region holds the node).

Before::

    y = relu(bn1(conv1(x))); out = x + bn2(conv2(y))

After: one structure ``conv2``-branch (kind ``"residual branch"``, nodes conv1..bn2, parameters
conv1.*, bn1.*, conv2.*, bn2.*), erasable; ``out`` would become ``x``.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter, Node
from torch.fx.passes.infra.pass_base import PassResult

from .common import evaluation
from .meta import DTYPE, GROUPS, LABELS, SHAPE, STRUCTURE, STRUCTURES, TABLE
from .registry import RULES, Method, aten, functions
from .table import PRODUCER

# The joins a structure can be erased from: how each spelling of add and cat is read.
ADDS = {operator.add, operator.iadd, torch.add, Method("add"), *aten("add", "Tensor")}
CATS = set(functions("cat", "concat", "concatenate")) | set(aten("cat", "default"))


@dataclass
class ErasableStructure:
    """One operand of a join (``join``) and the nodes only it needs (``nodes``, output last)."""

    name: str
    kind: str      # "residual branch" ("attention"/"MLP sub-layer"), "mixed-edge candidate",
    #                "cat operand"
    join: str                     # the add / cat node the output feeds
    output: str                   # the operand's node
    nodes: tuple[str, ...]
    params: tuple[str, ...]       # canonical names of the parameters it owns
    numel: int = 0
    erasable: bool = True
    why_pinned: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    cat_dim: int | None = None            # cat operands: the dim and positions of the segment
    segment: tuple[int, int] | None = None
    roots: torch.Tensor | None = field(default=None, repr=False)   # cat: the segment's channels

    def __repr__(self) -> str:
        state = "erasable" if self.erasable else f"pinned: {'; '.join(self.why_pinned[:2])}"
        return f"ErasableStructure({self.name!r}, {self.kind}, {len(self.params)} params, {state})"


def join_kind(gm: GraphModule, node: Node) -> str | None:
    """``"add"`` or ``"cat"`` for a join structures can be erased from, else None."""
    if node.op not in ("call_function", "call_method"):
        return None
    key = RULES.key(gm, node)
    try:
        if key in ADDS and "alpha" not in node.kwargs and len(node.args) == 2:
            return "add"
        if key in CATS:
            return "cat"
    except TypeError:        # unhashable targets
        return None
    return None


def zero_literal(a: Any) -> bool:
    """A literal 0 (the start of Python's ``sum``): a term that adds nothing."""
    return isinstance(a, (int, float)) and not isinstance(a, bool) and a == 0


def sum_terms(gm: GraphModule, node: Node) -> list[Any]:
    """The leaves of the tree of adds rooted at ``node`` (an add whose operand is another add
    used only there is one n-ary sum): nodes and literal zeros."""
    out: list[Any] = []
    for a in node.args:
        if isinstance(a, Node) and len(a.users) == 1 and join_kind(gm, a) == "add":
            out += sum_terms(gm, a)
        else:
            out.append(a)
    return out


def _region(output: Node) -> list[Node]:
    """``output`` and every node whose uses all lie in the region, in graph order."""
    region = {output}
    order = [output]
    node = output.prev
    while node.op != "root":
        if node.op in ("call_module", "call_function", "call_method", "get_attr") and node.users \
                and all(u in region for u in node.users):
            region.add(node)
            order.append(node)
        node = node.prev
    return order[::-1]


class _ParamIndex:
    """Canonical parameter names read by each node, and the nodes reading each parameter."""

    def __init__(self, gm: GraphModule) -> None:
        canonical: dict[int, str] = {}
        self.alias: dict[str, str] = {}
        self.numel: dict[str, int] = {}
        for name, p in gm.named_parameters(remove_duplicate=False):
            self.alias[name] = canonical.setdefault(id(p), name)
            self.numel[self.alias[name]] = p.numel()
        self.of: dict[str, set[str]] = {}
        self.readers: dict[str, set[str]] = {}
        for node in gm.graph.nodes:
            names: set[str] = set()
            if node.op == "get_attr" and node.target in self.alias:
                names.add(self.alias[node.target])
            elif node.op == "call_module":
                module = gm.get_submodule(node.target)
                prefix = f"{node.target}." if node.target else ""
                names |= {self.alias[prefix + n] for n, _ in module.named_parameters(
                    remove_duplicate=False) if prefix + n in self.alias}
            self.of[node.name] = names
            for n in names:
                self.readers.setdefault(n, set()).add(node.name)


def _common_name(params: Sequence[str], fallback: str) -> str:
    modules = [p.rsplit(".", 1)[0] if "." in p else "" for p in params]
    prefix = os.path.commonprefix([m.split(".") for m in modules]) if modules else []
    return ".".join(prefix) or fallback


# ---- does zeroing the parameters zero the output? -----------------------------------------------


class _Values(Interpreter):
    """Runs the graph, keeping the values of the nodes named in ``keep`` only."""

    def __init__(self, gm: GraphModule, keep: set[str]) -> None:
        super().__init__(gm)
        self.keep = keep
        self.values: dict[str, Any] = {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        if n.name in self.keep:
            self.values[n.name] = out
        return out


def _fetch(gm: GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _float_tensor(node: Node) -> bool:
    dtype = node.meta.get(DTYPE)
    return isinstance(node.meta.get(SHAPE), torch.Size) and isinstance(dtype, torch.dtype) \
        and dtype.is_floating_point


def _vanishes(gm: GraphModule, region: list[Node], values: dict[str, Any],
              gen: torch.Generator, device: torch.device) -> bool:
    """Whether the region's output is exactly zero with every parameter it reads set to zero,
    on random normal inputs (values from ``values`` for inputs that are not float tensors)."""
    names = {n.name for n in region}
    env: dict[str, Any] = {}

    def arg(a: Node) -> Any:
        if a.name in names:
            return env[a.name]
        if a.name in values or a.op == "get_attr":
            v = values[a.name] if a.name in values else _fetch(gm, a.target)
            return v.clone() if isinstance(v, torch.Tensor) else v
        return torch.randn(a.meta[SHAPE], generator=gen).to(device, a.meta[DTYPE])

    try:
        for node in region:
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), arg)
            if node.op == "get_attr":
                v = _fetch(gm, node.target)
                env[node.name] = torch.zeros_like(v) if isinstance(v, torch.Tensor) else v
            elif node.op == "call_module":
                module = gm.get_submodule(node.target)
                zeros = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
                env[node.name] = torch.func.functional_call(module, zeros, tuple(args), kwargs)
            elif node.op == "call_method":
                env[node.name] = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                env[node.name] = node.target(*args, **kwargs)
    except Exception:      # a region we cannot run alone is not erasable
        return False
    out = env[region[-1].name]
    return isinstance(out, torch.Tensor) and not bool((out != 0).any())


def _inputs_needing_values(parts: list[list[Node]]) -> set[str]:
    return {a.name for part in parts for n in part for a in n.all_input_nodes
            if a not in set(part) and a.op != "get_attr" and not _float_tensor(a)}


def _check_vanishing(gm: GraphModule, structures: list[ErasableStructure],
                     regions: list[list[Node]], index: _ParamIndex,
                     example_inputs: Sequence[Any]) -> None:
    """Pin the structures whose output is not exactly zero once their parameters are.

    First the region's tail alone, from its last node that reads a parameter (a conv, a norm),
    on random inputs: zero there means zero whatever comes in, and costs one layer. Otherwise
    the whole region, on random inputs. Inputs that are not float tensors (sizes, masks,
    indices) take their real values from one run of the graph, made only when some are needed."""
    plans = []
    for s, region in zip(structures, regions):
        if s.erasable:
            last = max(i for i, n in enumerate(region) if index.of[n.name])
            plans.append((s, [region[last:]] + ([region] if last else [])))
    need = _inputs_needing_values([part for _, parts in plans for part in parts])
    values: dict[str, Any] = {}
    with evaluation(gm):
        if need:
            interp = _Values(gm, need)
            interp.run(*example_inputs)
            values = interp.values
        param = next(gm.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        gen = torch.Generator().manual_seed(0)
        for s, parts in plans:
            if not any(_vanishes(gm, part, values, gen, device) for part in parts):
                s.erasable = False
                s.why_pinned.append("zeroing its parameters does not make its output zero")


# ---- finding the structures --------------------------------------------------------------------


def _candidates(gm: GraphModule) -> list[tuple[Node, Node, str, int | None, int]]:
    """(operand, join, kind, cat dim, operand position) for every operand of every join."""
    found = []
    for node in gm.graph.nodes:
        kind = join_kind(gm, node)
        if kind == "add":
            parent = next(iter(node.users)) if len(node.users) == 1 else None
            if parent is not None and join_kind(gm, parent) == "add":
                continue            # an inner add of a longer sum: its top add lists the terms
            terms = sum_terms(gm, node)
            nodes = [t for t in terms if isinstance(t, Node)]
            if any(not isinstance(t, Node) and not zero_literal(t) for t in terms):
                continue            # a literal other than 0 would be left alone
            skip = any(len(t.users) > 1 or t.op in ("placeholder", "get_attr") for t in nodes)
            label = "residual branch" if len(nodes) == 2 and skip else "mixed-edge candidate"
            same = all(t.meta.get(SHAPE) == node.meta.get(SHAPE) for t in nodes)
            for t in nodes:
                join = next(u for u in t.users) if len(t.users) == 1 else node
                found.append((t, join, label if same else "", None, 0))
        elif kind == "cat":
            tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            for i, t in enumerate(tensors):
                if isinstance(t, Node):
                    found.append((t, node, "cat operand", dim, i))
    return found


def find_structures(gm: GraphModule, example_inputs: Sequence[Any]) -> list[ErasableStructure]:
    """Every structure of ``gm`` (analysed by the shapes, channels and groups passes)."""
    index = _ParamIndex(gm)
    structures: list[ErasableStructure] = []
    regions: list[list[Node]] = []
    taken: dict[str, int] = {}
    for operand, join, kind, cat_dim, position in _candidates(gm):
        if operand.op in ("placeholder", "get_attr") or len(operand.users) != 1:
            continue                # a skip: its value is used beyond the join
        why: list[str] = []
        region = _region(operand)
        names = {n.name for n in region}
        params = sorted(set().union(*(index.of[n.name] for n in region)))
        shared = [p for p in params if not index.readers[p] <= names]
        if shared:
            outside = sorted(index.readers[shared[0]] - names)
            why.append(f"parameter '{shared[0]}' is shared with node '{outside[0]}' outside it")
        if not params:
            why.append("it has no parameters to drive to zero")
        if not kind:
            kind = "sum term"
            why.append(f"the terms of the sum at '{join.name}' broadcast to different shapes")
        s = ErasableStructure("", kind, join.name, operand.name, tuple(n.name for n in region),
                              tuple(params), numel=sum(index.numel[p] for p in params))
        if kind == "cat operand":
            try:
                why += _cat_segment(gm, s, join, cat_dim, position)
            except Exception as exc:    # a cat we cannot read: never erased
                why.append(f"its cat segment cannot be read ({type(exc).__name__}: {exc})")
        if kind == "residual branch":
            s.kind = _sublayer(gm, region) or kind
        base = _common_name(params, operand.name)
        if base in taken:
            base = next((n.target for n in reversed(region) if n.op == "call_module"
                         and not n.target.startswith("otofx_")), base)     # not a module of ours
        taken[base] = taken.get(base, 0) + 1
        s.name = base if taken[base] == 1 else f"{base}#{taken[base]}"
        s.erasable, s.why_pinned = not why, why
        structures.append(s)
        regions.append(region)
    _check_vanishing(gm, structures, regions, index, example_inputs)
    _hierarchy(structures)
    return structures


def _op_name(gm: GraphModule, node: Node) -> str:
    """What a call node computes, lower case: a module's class (``linear``, ``layernorm``) or a
    function's name (``linear``, ``softmax``, ``scaled_dot_product_attention``; aten's too)."""
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__.lower()
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return str(name).lower().removeprefix("_").split(".")[0]


_PRODUCTS = {"matmul", "bmm", "baddbmm", "einsum"}
_MLP_OPS = {"linear", "addmm", "gelu", "relu", "silu", "dropout", "mul", "add", "to", "type_as", "pow", "mean",
            "rsqrt", "layernorm", "layer_norm", "rmsnorm", "rms_norm", "identity"}


def _sublayer(gm: GraphModule, region: list[Node]) -> str | None:
    """A transformer block's sub-layer: ``"attention sub-layer"`` when the branch attends (a
    softmax, an attention op, or a product of two computed tensors such as the weights times the
    values), ``"MLP sub-layer"`` when it is linear layers, activations and norms (a label; erasing
    is the same). Parameter names never decide it (a Llama MLP reads ``post_attention_layernorm``)."""
    calls = [n for n in region if n.op in ("call_module", "call_function", "call_method")]
    ops = [_op_name(gm, n) for n in calls]
    inside = {n.name for n in region if n.op != "get_attr"}
    for n, op in zip(calls, ops):
        computed = [a for a in n.all_input_nodes if a.name in inside]
        if "attention" in op or "softmax" in op or (op in _PRODUCTS and len(computed) == 2):
            return "attention sub-layer"
    if "linear" in ops and set(ops) <= _MLP_OPS | {o for o in ops if o.endswith("norm")}:
        return "MLP sub-layer"
    return None


def _cat_segment(gm: GraphModule, s: ErasableStructure, join: Node, dim: int, position: int
                 ) -> list[str]:
    """Record the channels of a cat operand's segment; reasons it cannot go, if any."""
    out_shape = join.meta.get(SHAPE)
    L = join.meta.get(LABELS)
    if not isinstance(out_shape, torch.Size) or not isinstance(L, torch.Tensor):
        return ["the cat's output is not a tracked tensor"]
    dim = dim % len(out_shape)
    tensors = join.args[0] if join.args else join.kwargs["tensors"]
    sizes = [t.meta.get(SHAPE)[dim] if isinstance(t, Node) else 0 for t in tensors]
    start = sum(sizes[:position])
    s.cat_dim, s.segment = dim, (start, start + sizes[position])
    if len(tensors) < 2:
        return ["it is the only operand of the cat"]
    if L.size(dim) != out_shape[dim]:
        return [f"the cat's dim {dim} carries no channels"]
    seg = L.narrow(dim, start, sizes[position])
    table = gm.meta[TABLE]
    roots = table.uf.roots(seg.movedim(dim, 0).reshape(seg.size(dim), -1))
    if bool((roots < 0).any()) or bool((roots != roots[:, :1]).any()):
        return [f"the cat's dim {dim} carries no channels"]
    s.roots = roots[:, 0].clone()
    owner: dict[int, Any] = {}
    for g in gm.meta.get(GROUPS, []):
        for r in g.roots.tolist():
            owner[r] = g
    mine = set(s.params)
    for r in s.roots.tolist():
        g = owner.get(r)
        if g is None or not g.prunable:
            return [f"its channels are pinned ({'; '.join(g.why_pinned[:1]) if g else 'no group'})"]
        if any(m.param not in mine for m in g.slices(PRODUCER)):
            return [f"its channels are also produced outside it (group '{g.name}')"]
    return []


def _hierarchy(structures: list[ErasableStructure]) -> None:
    """Parents and children: a structure whose region holds another's region is its ancestor;
    the parent is the smallest such."""
    regions = [set(s.nodes) for s in structures]
    for i, s in enumerate(structures):
        above = [j for j, r in enumerate(regions) if j != i and regions[i] < r]
        if not above:
            continue
        smallest = min(len(regions[j]) for j in above)
        for j in above:
            if len(regions[j]) == smallest:
                s.parents.append(structures[j].name)
                structures[j].children.append(s.name)
    structures.sort(key=lambda s: -len(s.nodes))


# ---- connectivity ------------------------------------------------------------------------------


def connected(gm: GraphModule, structures: Iterable[ErasableStructure]) -> bool:
    """With ``structures`` erased, is the network still valid, every output computed from the
    inputs it was computed from before?

    An erased region is gone and its output is zero. An add drops zero operands (it is zero
    when none is left); a cat drops erased operands but must keep one; any other op, a cat or
    the output reading a zero value would be left without an input: not valid."""
    erased = list(structures)
    gone = set().union(*(set(s.nodes) for s in erased)) if erased else set()
    before: dict[str, bool] = {}      # depended on the graph inputs before erasing
    after: dict[str, bool | None] = {}   # ... after erasing; None: the value is zero or gone
    for node in gm.graph.nodes:
        ins = node.all_input_nodes
        before[node.name] = node.op == "placeholder" or any(before[a.name] for a in ins)
        if node.op == "placeholder":
            after[node.name] = True
            continue
        if node.name in gone:
            after[node.name] = None
            continue
        live = [a for a in ins if after[a.name] is not None]
        kind = join_kind(gm, node)
        if kind == "add":
            after[node.name] = any(after[a.name] for a in live) if live else None
            continue
        if kind == "cat":
            zero = [a for a in ins if after[a.name] is None and a.name not in gone]
            if zero or not live:
                return False
        elif len(live) < len(ins):
            return False
        if node.op == "output":
            return all(after[a.name] for a in ins if before[a.name])
        after[node.name] = any(after[a.name] for a in live)
    return True


def closure(structures: list[ErasableStructure], names: Iterable[str]) -> set[str]:
    """``names`` and every structure nested inside them."""
    by = {s.name: s for s in structures}
    out: set[str] = set()
    todo = list(names)
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo += by[n].children
    return out


def erasable_pass(gm: GraphModule, example_inputs: Sequence[Any]) -> PassResult:
    """Find the structures of ``gm`` (after the shapes, channels and groups passes); store them
    in ``gm.meta["otofx.structures"]`` and name them in each node's ``"otofx.structure"``."""
    structures = find_structures(gm, example_inputs)
    gm.meta[STRUCTURES] = structures
    member: dict[str, list[str]] = {}
    for s in structures:
        for n in s.nodes:
            member.setdefault(n, []).append(s.name)
    for node in gm.graph.nodes:
        node.meta[STRUCTURE] = member.get(node.name, [])
    return PassResult(gm, False)
