"""The shrink pass: a new, smaller GraphModule without the channels that are exactly zero.

A channel of a prunable group is removed when every producer slice (the weight rows that create
it) is exactly zero. What it still contributes downstream is an input-independent constant (its
bias through the norms and activations after it); shrink reads that constant on the example
inputs and folds it into the consuming layer's bias, or keeps the channel where the constant
cannot be folded (a padded conv, a sum). Then it slices every parameter and buffer, lets the op
rules fix module attributes and literal arguments, removes dead code, and checks that the new
graph computes what the old one did on the example inputs (``ShrinkError`` if not).

Before: conv1 (16 out, 6 of them zero) -> bn1 -> relu -> conv2 (16 in).
After:  conv1 (10 out) -> bn1 (10) -> relu -> conv2 (10 in), conv2.bias += folded constants.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule, Interpreter, Node
from torch.fx.passes.infra.pass_base import PassResult

from otofx.errors import AnalysisError, ShrinkError

from .capture import Capture, Reference, candidates_of, captures_for, dead_roots, record
from .common import SizeDep, evaluation, label_tensors, tensor_named
from .erase import apply_erase, erase_plan
from .groups import PruningGroup
from .meta import GROUPS, LABELS, REFERENCE, SHAPE, TABLE
from .registry import RULES, arg_of
from .table import FOLD_BIAS, member_mask
from .trace import copy_module, finish_copy, own_tensors


@dataclass
class ShrinkStats:
    """What shrink removed and what it had to keep."""

    removed: dict[str, int] = field(default_factory=dict)     # group name -> channels removed
    removed_channels: dict[str, torch.Tensor] = field(default_factory=dict)  # -> their indices
    kept: dict[str, int] = field(default_factory=dict)  # group -> zero channels that had to stay
    folded: list[str] = field(default_factory=list)          # nodes whose bias absorbed constants
    erased: list[str] = field(default_factory=list)          # structures deleted (outermost)


class ShrinkContext:
    """What a rule's ``rewrite`` sees (``registry.RewriteContext``): the node being rewritten,
    old and new shapes of any node, the module being rebuilt."""

    def __init__(self, gm: GraphModule, analysis_gm: GraphModule, removed_roots: torch.Tensor):
        self.gm = gm
        self.table = analysis_gm.meta[TABLE]
        self.node: Node | None = None
        self._meta = {n.name: n.meta for n in analysis_gm.graph.nodes}
        self._removed_root = torch.zeros(self.table.uf.size + 1, dtype=torch.bool)
        self._removed_root[removed_roots] = True
        self._removed_id = self._removed_root[self.table.uf.all_roots()]
        self._new_shapes: dict[str, Any] = {}     # per node: fixed once the removed set is
        self._changed: dict[str, bool] = {}
        self._hit_of: dict[int, int] | None = None

    def removed(self, ids: torch.Tensor) -> torch.Tensor:
        """Which ``ids`` belong to a removed channel (an indexing, no union-find walk)."""
        return (ids >= 0) & self._removed_id[ids.clamp(min=0)]

    def removed_each(self, tensors: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """:meth:`removed` of each tensor, or None where none of its ids is removed: one
        indexing over all of them (a graph holds hundreds of small label tensors)."""
        return self.removed_counted(tensors)[0]

    def removed_counted(self, tensors: list[torch.Tensor]
                        ) -> tuple[list[torch.Tensor | None], list[int]]:
        """:meth:`removed_each` and, per tensor, how many of its ids are removed."""
        if not tensors:
            return [], []
        flat = torch.cat([t.reshape(-1) for t in tensors])
        gone = self.removed(flat)
        sizes = [t.numel() for t in tensors]
        segment = torch.repeat_interleave(torch.arange(len(tensors)), torch.tensor(sizes))
        hits = torch.zeros(len(tensors), dtype=torch.long).index_add_(0, segment, gone.long()).tolist()
        pieces = gone.split(sizes)
        return [pieces[i].view(t.shape) if hit else None
                for i, (t, hit) in enumerate(zip(tensors, hits))], hits

    def labels(self, arg: Node) -> Any:
        """``arg``'s labels as the channels pass left them (before anything was removed)."""
        return self._meta[arg.name].get(LABELS)

    def old_shape(self, arg: Node) -> Any:
        return self._meta[arg.name].get(SHAPE)

    def kept_mask(self, arg: Node, dim: int, L: torch.Tensor | None = None,
                  shape: torch.Size | None = None) -> torch.Tensor | None:
        L = self.labels(arg) if L is None else L
        shape = self.old_shape(arg) if shape is None else shape
        if not isinstance(L, torch.Tensor):
            return None
        if L.size(dim) == 1:
            return torch.ones(shape[dim], dtype=torch.bool)
        gone = self.removed(L).movedim(dim, 0).reshape(L.size(dim), -1).all(dim=1)
        return ~gone

    def _hits(self, L: torch.Tensor) -> int:
        """How many of ``L``'s ids are removed; for the analysis' label tensors counted all at
        once on first use (one indexing instead of one per node)."""
        if self._hit_of is None:
            tensors = [t for meta in self._meta.values() for t in label_tensors(meta.get(LABELS))]
            self._hit_of = {id(t): h for t, h in zip(tensors, self.removed_counted(tensors)[1])}
        hit = self._hit_of.get(id(L))           # the tensors keyed are alive: ids are unique
        return int(self.removed(L).sum()) if hit is None else hit

    def _new(self, L: Any, shape: Any) -> Any:
        if isinstance(L, torch.Tensor) and isinstance(shape, torch.Size):
            hit = self._hits(L)
            if hit == 0:
                return shape
            spread = [d for d in range(L.dim()) if L.size(d) > 1]
            if len(spread) == 1 and L.dim() == len(shape):
                # ids along one dim only: each removed id is one position fewer there
                return torch.Size(L.size(d) - hit if d == spread[0] else shape[d]
                                  for d in range(len(shape)))
            gone = self.removed(L)
            return torch.Size(
                shape[d] if L.size(d) == 1
                else L.size(d) - int(gone.movedim(d, 0).reshape(L.size(d), -1).all(dim=1).sum())
                for d in range(len(shape)))
        if isinstance(L, (list, tuple)) and isinstance(shape, (list, tuple)):
            return tuple(self._new(a, b) for a, b in zip(L, shape))
        return shape

    def new_shape(self, arg: Node) -> Any:
        shape = self._new_shapes.get(arg.name, self)
        if shape is self:
            shape = self._new_shapes[arg.name] = self._new(self.labels(arg), self.old_shape(arg))
        return shape

    def changed(self, arg: Node) -> bool:
        """Whether ``arg``'s shape changes, or, for a size (``x.size(-1)``), its value."""
        done = self._changed.get(arg.name)
        if done is None:
            dep = self.labels(arg)
            if isinstance(dep, SizeDep):
                done = dep.ids.numel() > 0 and bool(self.removed(dep.ids).any())
            elif not isinstance(dep, (torch.Tensor, list, tuple)):
                done = False                  # no labels: its shape stays
            else:
                done = self.new_shape(arg) != self.old_shape(arg)
            self._changed[arg.name] = done
        return done

    def module(self, node: Node | None = None) -> nn.Module:
        return self.gm.get_submodule((node or self.node).target)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """The node's argument by position or keyword."""
        return arg_of(self.node, index, name, default)

    def set_arg(self, index: int, name: str, value: Any) -> None:
        """Replace the node's argument ``name`` (at ``index`` when given by position)."""
        node = self.node
        if name in node.kwargs or len(node.args) <= index:
            node.kwargs = {**node.kwargs, name: value}
        else:
            args = list(node.args)
            args[index] = value
            node.args = tuple(args)


# ---- which channels go ---------------------------------------------------------------------------


def _call_with(gm: GraphModule, node: Node, x: torch.Tensor, arg: int) -> torch.Tensor:
    """Evaluate ``node`` alone with input ``arg`` replaced by ``x`` (other inputs: parameters)."""

    def value(a: Any) -> Any:
        if isinstance(a, Node):
            if a.op != "get_attr":
                raise ShrinkError(f"cannot evaluate {node.name} alone")
            return tensor_named(gm, a.target)
        return a

    args = [x if i == arg else value(a) for i, a in enumerate(node.args)]
    kwargs = {k: value(v) for k, v in node.kwargs.items()}
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _fold_delta(gm: GraphModule, node: Node, cap: Capture, removed: torch.Tensor
                ) -> torch.Tensor | None:
    """The per-output-channel constant that removed channels add at ``node``; None if it is not
    uniform over the other dims (it cannot be a bias then)."""
    dim = cap.site.dim % len(cap.shape)
    x = torch.zeros(cap.shape, dtype=cap.first.dtype, device=cap.first.device)
    per_position = [-1 if d == dim else 1 for d in range(len(cap.shape))]
    size = list(cap.shape)
    size[dim] = cap.positions.numel()
    vals = (cap.first * removed.to(cap.first.device)).view(per_position).expand(size)
    x.index_copy_(dim, cap.positions.to(x.device), vals.contiguous())
    with torch.no_grad():
        delta = _call_with(gm, node, x, cap.site.arg) - _call_with(gm, node, torch.zeros_like(x),
                                                                   cap.site.arg)
    out_dim = cap.site.out_dim % delta.dim()
    per = delta.movedim(out_dim, 0).reshape(delta.size(out_dim), -1)
    if not torch.allclose(per, per[:, :1].expand_as(per), rtol=1e-5, atol=1e-6):
        return None
    return per[:, 0]


def _bias_holder(gm: GraphModule, node: Node) -> tuple[nn.Module, str] | None:
    if node.op == "call_module":
        return gm.get_submodule(node.target), "bias"
    bias = arg_of(node, 2, "bias")
    if isinstance(bias, Node) and bias.op == "get_attr":
        path, _, attr = bias.target.rpartition(".")
        return gm.get_submodule(path), attr
    return None


def _decide(gm: GraphModule, ctx: ShrinkContext, captures: dict[str, list[Capture]],
            nodes: dict[str, Node]) -> tuple[set[int], dict[str, torch.Tensor]]:
    """Roots that must stay (their constant cannot be folded) and the bias deltas to add."""
    keep: set[int] = set()
    deltas: dict[str, torch.Tensor] = {}
    for name, caps in captures.items():
        for cap in caps:
            if cap.first is None:
                continue
            ids = cap.site.ids[cap.positions]
            roots = ctx.table.uf.all_roots()[ids.clamp(min=0)]
            removed = ctx.removed(ids)
            varies = cap.varies & removed
            nonzero = (varies | (cap.first != 0).cpu()) & removed
            if bool(varies.any()):
                keep |= set(roots[varies].tolist())   # not one value everywhere: no bias
            if not bool(nonzero.any()):
                continue
            if cap.site.fold != FOLD_BIAS or _bias_holder(gm, nodes[name]) is None:
                keep |= set(roots[nonzero].tolist())
                continue
            delta = _fold_delta(gm, nodes[name], cap, removed & ~varies)
            if delta is None:
                keep |= set(roots[nonzero].tolist())
            else:
                deltas[name] = deltas.get(name, 0) + delta
    return keep, deltas


def _emptied(ctx: ShrinkContext, analysis_gm: GraphModule, erased: set[str]) -> set[int]:
    """Channels whose removal would leave some tensor with no position along a dim (a split
    piece, a slice holding only removed channels): they stay, so no tensor becomes empty.
    Tensors of ``erased`` nodes do not count: those nodes go."""
    keep: set[int] = set()
    labels = [L for node in analysis_gm.graph.nodes if node.name not in erased
              for L in label_tensors(node.meta.get(LABELS))]
    gones, hits = ctx.removed_counted(labels)
    for L, gone, hit in zip(labels, gones, hits):
        if gone is not None:
            # all removed, or (more than one dim holds ids) all removed along some dim
            empty = hit == L.numel() or (sum(n > 1 for n in L.shape) > 1 and any(
                bool(gone.movedim(d, 0).reshape(L.size(d), -1).all(dim=1).all())
                for d in range(L.dim()) if L.size(d) > 1))
            if empty:
                keep |= set(ctx.table.uf.roots(L[gone]).unique().tolist())
    return keep


# ---- applying it ---------------------------------------------------------------------------------


def _owners(gm: GraphModule) -> dict[int, list[tuple[nn.Module, str]]]:
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in gm.modules():
        for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None:
                owners.setdefault(id(t), []).append((module, attr))
    return owners


def _replace(owners, old: torch.Tensor, new: torch.Tensor) -> None:
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(new, requires_grad=old.requires_grad)
    for module, attr in owners.get(id(old), []):
        if attr in module._parameters:
            module._parameters[attr] = new
        else:
            module._buffers[attr] = new


def _slice_tensors(gm: GraphModule, ctx: ShrinkContext) -> None:
    keeps: dict[str, list[tuple[int, torch.Tensor]]] = {}
    slices = list(ctx.table.slice_ids.items())
    for ((param, dim), _), gone in zip(slices, ctx.removed_each([ids for _, ids in slices])):
        if gone is not None:
            keeps.setdefault(param, []).append((dim, torch.nonzero(~gone).view(-1)))
    elements = list(ctx.table.element_ids.items())
    for (param, _), gone in zip(elements, ctx.removed_each([ids for _, ids in elements])):
        if gone is None:
            continue
        rebuilt = torch.zeros_like(gone)
        for d in range(gone.dim()):
            along = gone.movedim(d, 0).reshape(gone.size(d), -1).all(dim=1)
            if bool(along.any()):
                keeps.setdefault(param, []).append((d, torch.nonzero(~along).view(-1)))
                rebuilt |= along.view([-1 if i == d else 1 for i in range(gone.dim())])
        if not torch.equal(rebuilt, gone):
            raise ShrinkError(f"the removed channels of '{param}' are not whole slices")
    owners = _owners(gm)
    named = dict(gm.named_parameters(remove_duplicate=False))
    named.update(gm.named_buffers(remove_duplicate=False))
    for param, dims in keeps.items():
        old = named[param] if param in named else tensor_named(gm, param)
        new = old.detach()
        for dim, keep in dims:       # index_select copies: the result shares nothing with ``old``
            new = new.index_select(dim, keep.to(new.device))
        _replace(owners, old, new)


def _add_biases(gm: GraphModule, nodes: dict[str, Node], deltas: dict[str, torch.Tensor],
                ctx: ShrinkContext) -> list[str]:
    owners = _owners(gm)
    done = []
    for name, delta in deltas.items():
        module, attr = _bias_holder(gm, nodes[name])
        old = getattr(module, attr)
        if old is None:
            weight = module.weight
            new = delta.to(weight.dtype)
            keep = ctx.table.slice_ids.get((_name_of(gm, weight), 0))
            module.bias = nn.Parameter(new.clone(), requires_grad=weight.requires_grad)
            if keep is not None:   # the bias is new: slice it like the weight's rows
                kept = ~ctx.removed(keep)
                module.bias = nn.Parameter(module.bias.detach()[kept].clone(),
                                           requires_grad=weight.requires_grad)
        else:
            _replace(owners, old, (old.detach() + delta.to(old.dtype)).clone())
        done.append(name)
    return done


def _name_of(gm: GraphModule, t: torch.Tensor) -> str | None:
    for name, p in gm.named_parameters(remove_duplicate=False):
        if p is t:
            return name
    return None


RTOL, ATOL = 1e-4, 1e-5   # the tests' tolerance (tests/zoo/zoo_checks.py, tests/helpers.py)


def tolerance(dtype: torch.dtype, scale: float = 1.0) -> tuple[float, float]:
    """(rtol, atol) for comparing a float tensor of ``dtype`` whose largest magnitude is
    ``scale``, computed in another order: the tests' ``rtol=1e-4, atol=1e-5 * max(1, scale)``
    in float32 and wider, at least four rounding steps in float16 and bfloat16."""
    eps = 4 * torch.finfo(dtype).eps
    return max(RTOL, eps), max(ATOL, eps) * max(1.0, scale)


def _check(expected: Any, got: Any, where: str = "output") -> None:
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor) or expected.shape != got.shape:
            raise ShrinkError(
                f"The smaller graph's {where} has shape {getattr(got, 'shape', type(got))}, "
                f"expected {tuple(expected.shape)}. This is an otofx bug: please report it.")
        if expected.is_floating_point():
            scale = expected.abs().max().item() if expected.numel() else 0.0
            rtol, atol = tolerance(expected.dtype, scale)
            if not torch.allclose(got, expected, rtol=rtol, atol=atol):
                err = (got - expected).abs().max().item()
                raise ShrinkError(
                    f"The smaller graph's {where} differs from the original by {err:.3g} "
                    "(max abs). If the model draws random numbers in eval mode, pass verify=False; "
                    "otherwise this is an otofx bug: please report it with the model.")
        elif not torch.equal(expected, got):
            raise ShrinkError(f"The smaller graph's {where} differs from the original.")
    elif isinstance(expected, (list, tuple)):
        for i, (e, g) in enumerate(zip(expected, got)):
            _check(e, g, f"{where}[{i}]")
    elif isinstance(expected, dict):
        for k in expected:
            _check(expected[k], got[k], f"{where}[{k!r}]")
    elif dataclasses.is_dataclass(expected):
        for f in dataclasses.fields(expected):
            _check(getattr(expected, f.name), getattr(got, f.name, None), f"{where}.{f.name}")


class _Values(Interpreter):
    def __init__(self, gm: GraphModule):
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def first_divergence(gm: GraphModule, sub: GraphModule, ctx: ShrinkContext,
                     example_inputs: Sequence[Any]) -> str:
    """The first node whose kept values differ between ``gm`` and its shrunk ``sub``."""
    with evaluation(gm), evaluation(sub):
        old, new = _Values(gm), _Values(sub)
        old.run(*example_inputs)
        try:
            new.run(*example_inputs)
        except Exception as exc:
            return f"it fails at node after '{list(new.values)[-1]}': {type(exc).__name__}: {exc}"
    for node in sub.graph.nodes:
        a, b = old.values.get(node.name), new.values.get(node.name)
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            continue
        for d in range(a.dim()):
            keep = ctx.kept_mask(node, d)
            if keep is not None and keep.numel() == a.size(d):
                a = a.index_select(d, torch.nonzero(keep).view(-1))
        if a.shape != b.shape:
            return f"node '{node.name}' ({node.format_node()}) has shape {tuple(b.shape)}, " \
                   f"expected {tuple(a.shape)}"
        scale = a.abs().max().item() if a.is_floating_point() and a.numel() else 0.0
        if a.is_floating_point() and not torch.allclose(b, a, *tolerance(a.dtype, scale)):
            return f"node '{node.name}' ({node.format_node()}) differs by " \
                   f"{(a - b).abs().max().item():.3g}"
    return "no single node differs"


@contextmanager
def _module_index(gm: GraphModule) -> Iterator[None]:
    """``gm.get_submodule`` as two dictionary lookups for the block (the rewrite loop asks it
    for every node; torch walks the path each time). The parent comes from an index made now,
    the module itself from the parent, so a rule that swaps a leaf module (a norm replaced by
    its dense-divisor form) is seen at once; anything else falls back to torch's walk."""
    parents = dict(gm.named_modules(remove_duplicate=False))
    walk = gm.get_submodule

    def get(target: str) -> nn.Module:
        path, _, attr = target.rpartition(".")
        parent = parents.get(path)
        found = None if parent is None else parent._modules.get(attr)
        return found if found is not None else walk(target)

    gm.__dict__["get_submodule"] = get
    try:
        yield
    finally:
        gm.__dict__.pop("get_submodule", None)


def _mutates(node: Node) -> bool:
    """Kept by dead-code elimination though its result is unused: it may change its input in
    place (``x.relu_()``, ``operator.iadd``, ``inplace=True``) or is impure."""
    if node.is_impure() or node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_module":
        return getattr(node.graph.owning_module.get_submodule(node.target), "inplace", False) is True
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    in_place_operator = node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv,
                                        operator.ifloordiv, operator.imod, operator.ipow, operator.iand,
                                        operator.ior, operator.ixor, operator.ilshift, operator.irshift,
                                        operator.imatmul, operator.setitem)
    return in_place_operator or (name.endswith("_") and not name.endswith("__"))


def shrink_graph(gm: GraphModule, analysis_gm: GraphModule, example_inputs: Sequence[Any],
                 verify: bool = True) -> tuple[GraphModule, ShrinkStats]:
    """The smaller copy of ``gm`` (same graph as ``analysis_gm``, current weights) and stats.

    When ``gm``'s weights and the inputs are the ones the analysis ran on, its run stands in for
    the reference run (``passes.capture``); should the result then fail verification, shrink
    starts over with a run of its own."""
    names = [n.name for n in gm.graph.nodes]
    if names != [n.name for n in analysis_gm.graph.nodes]:
        raise AnalysisError(
            "the analysis was made for a different graph (node names differ); "
            "run otofx.analyze on this GraphModule first.")
    ref = analysis_gm.meta.get(REFERENCE)
    if ref is not None and not ref.holds_for(gm, example_inputs):
        ref = None
    try:
        sub, stats = _shrink(gm, analysis_gm, example_inputs, verify, ref)
    except ShrinkError:
        if ref is None:
            raise
        sub, stats = _shrink(gm, analysis_gm, example_inputs, verify, None)
    own_tensors(sub, gm)
    return finish_copy(sub), stats


def _shrink(gm: GraphModule, analysis_gm: GraphModule, example_inputs: Sequence[Any], verify: bool,
            ref: Reference | None) -> tuple[GraphModule, ShrinkStats]:
    groups: list[PruningGroup] = analysis_gm.meta[GROUPS]
    table = analysis_gm.meta[TABLE]
    sub = copy_module(gm)
    nodes = {n.name: n for n in sub.graph.nodes}
    stats = ShrinkStats()
    plan = erase_plan(sub, analysis_gm)
    stats.erased = [s.name for s in plan.structures]
    if plan:
        ref = None                  # the analysis run recorded no erased structure
    if ref is not None:
        dead = ref.dead
        candidates = dead_roots(groups, dead)
    else:
        dead, candidates = candidates_of(sub, groups, plan.owns)
    if plan.forced_roots.numel():
        candidates = torch.cat([candidates, plan.forced_roots]).unique()
    if candidates.numel() == 0 and not plan:
        return sub, stats

    if ref is not None:
        captures, reference = ref.captures, ref.output
    else:
        captures = captures_for(table, candidates, plan.nodes)
        reference = record(sub, captures, example_inputs)

    keep: set[int] = set()
    while True:
        removed_roots = candidates[~member_mask(candidates, torch.tensor(sorted(keep),
                                                                         dtype=torch.long))]
        ctx = ShrinkContext(sub, analysis_gm, removed_roots)
        more, deltas = _decide(sub, ctx, captures, nodes)
        more |= _emptied(ctx, analysis_gm, plan.nodes)
        more -= set(plan.forced_roots.tolist())
        if more <= keep:
            break
        keep |= more
    for g in groups:
        if g.name in dead:
            gone = member_mask(g.roots, removed_roots)
            stats.removed[g.name] = int(gone.sum())
            stats.removed_channels[g.name] = torch.nonzero(gone).view(-1)
            held = int(dead[g.name].sum()) - int(gone.sum())
            if held:
                stats.kept[g.name] = held
    if removed_roots.numel() == 0 and not plan:
        return sub, stats

    with torch.no_grad():
        stats.folded = _add_biases(sub, nodes, deltas, ctx)
        _slice_tensors(sub, ctx)
    apply_erase(sub, plan)
    with _module_index(sub):
        for node in sub.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            rule = RULES.lookup(sub, node)
            if rule is None or rule.rewrite is None:
                continue
            # modules are rebuilt from their (sliced) weights even when no shape around them
            # changes: heads removed inside nn.MultiheadAttention leave its input and output alone
            if node.op == "call_module" or ctx.changed(node) or any(ctx.changed(a) for a in node.all_input_nodes):
                ctx.node = node
                rule.rewrite(ctx, node)
        sub.graph.eliminate_dead_code(is_impure_node=_mutates)
    if plan:
        sub.delete_all_unused_submodules()
    sub.recompile()
    if verify:
        try:
            with evaluation(sub):
                got = sub(*example_inputs)
            _check(reference, got)
        except Exception as exc:
            where = first_divergence(gm, sub, ctx, example_inputs)
            raise ShrinkError(f"{exc} First divergence: {where}.") from exc
    return sub, stats


def shrink_pass(gm: GraphModule, analysis_gm: GraphModule, example_inputs: Sequence[Any]
                ) -> PassResult:
    """Pass form of :func:`shrink_graph`: returns the smaller module, ``modified`` if it is."""
    sub, stats = shrink_graph(gm, analysis_gm, example_inputs)
    return PassResult(sub, bool(stats.removed))

