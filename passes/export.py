"""The torch.export front end: a model fx cannot trace becomes an aten-level GraphModule.

``torch.export`` (non-strict) traces the model on example inputs; ``ExportedProgram.module()``
gives a GraphModule with parameters as ``get_attr`` nodes and the original module hierarchy. That
module refuses ``.train()``/``.eval()`` because export bakes the training flag into mode-dependent
ops, so this pass rebuilds it as a plain ``GraphModule`` whose mode-dependent ops follow the
module's flag again:

* ``aten.dropout(x, p, train)`` becomes a call to an ``nn.Dropout(p)`` submodule;
* ``aten.batch_norm(x, w, b, mean, var, training, momentum, eps, ...)`` becomes a call to an
  ``nn.BatchNorm{1,2,3}d`` that owns the same tensors (the ``num_batches_tracked += 1`` export
  wrote out is dropped: the module does it), when those tensors belong to one submodule;
* ``aten.scaled_dot_product_attention(q, k, v, mask, p, ...)`` with a constant ``p > 0`` (HF and
  most attention code pass ``dropout if self.training else 0.0``, which export fixes to the
  value of the mode it ran in) reads ``p`` from a call to an :class:`AttentionDropout` submodule,
  which returns ``p`` in training mode and 0.0 in eval mode. The attention op itself stays as it
  is, so its rules apply unchanged. (A model exported in eval mode has ``p = 0`` in the graph:
  there is no dropout left to restore, so export a model you will train in training mode.)

Before (export of ``nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))`` in train mode)::

    linear = aten.linear.default(x, 0.weight, 0.bias); dropout = aten.dropout.default(linear, 0.1, True)

After: ``dropout = self.otofx_dropout_0(linear)`` where ``otofx_dropout_0`` is ``nn.Dropout(0.1)``;
``gm.eval()`` turns it off.

Attention, exported in train mode from ``F.scaled_dot_product_attention(q, k, v,
dropout_p=0.1 if self.training else 0.0)``::

    sdpa = aten.scaled_dot_product_attention.default(q, k, v, None, 0.1)

After: ``p = self.otofx_attention_dropout_0(); sdpa = aten.scaled_dot_product_attention.default(q,
k, v, None, p)``: dropout while training, none after ``gm.eval()``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.fx import GraphModule, Node

from .meta import EXPORTED

aten = torch.ops.aten


def export_module(model: nn.Module, args: tuple, kwargs: dict) -> GraphModule:
    """Export a deepcopy of ``model`` on ``args``/``kwargs``; a plain, mode-following GraphModule.

    Raises whatever ``torch.export`` raises; the caller turns it into a ``TraceError``."""
    model = copy.deepcopy(model)
    training = model.training
    program = torch.export.export(model, args, kwargs, strict=False)
    exported = program.module()
    gm = GraphModule(exported, exported.graph, type(model).__name__)
    _modes_as_modules(gm)
    gm.train(training)
    gm.meta[EXPORTED] = True
    return gm


def _free_name(gm: GraphModule, node: Node, kind: str) -> str:
    """Where to put a module for ``node``: its original path when free, else a fresh name."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        try:
            gm.get_submodule(path)
        except AttributeError:
            parent = path.rpartition(".")[0]
            try:
                gm.get_submodule(parent)
                return path
            except AttributeError:
                pass
    k = 0
    while hasattr(gm, f"otofx_{kind}_{k}"):
        k += 1
    return f"otofx_{kind}_{k}"


def _as_call_module(gm: GraphModule, node: Node, path: str, module: nn.Module, x: Node) -> None:
    gm.add_submodule(path, module)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(path, (x,))
    call.meta = dict(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)


def _dropout(gm: GraphModule, node: Node) -> None:
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
    cls = nn.Dropout if node.target is aten.dropout.default else nn.AlphaDropout
    _as_call_module(gm, node, _free_name(gm, node, "dropout"), cls(p), node.args[0])


_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _batch_norm(gm: GraphModule, node: Node, counters: dict[str, Node]) -> None:
    x, w, b, mean, var = node.args[:5]
    momentum, eps = node.args[6], node.args[7]
    attrs = [a for a in (w, b, mean, var) if a is not None]
    if not all(isinstance(a, Node) and a.op == "get_attr" for a in attrs) or mean is None:
        return   # computed statistics: keep the aten op (its mode stays as exported)
    owners = {a.target.rpartition(".")[0] for a in attrs}
    if len(owners) != 1:
        return
    owner = owners.pop()
    rank = len(x.meta["val"].shape) if "val" in x.meta else None
    if rank not in _BN:
        return
    holder = gm.get_submodule(owner) if owner else gm
    own = {n for n, _ in holder.named_parameters(recurse=False)} | {
        n for n, _ in holder.named_buffers(recurse=False)}
    if not owner or own - {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}:
        return
    bn = _BN[rank](mean.meta["val"].shape[0] if "val" in mean.meta else holder.running_mean.numel(),
                   eps=eps, momentum=momentum, affine=w is not None)
    bn.running_mean, bn.running_var = holder.running_mean, holder.running_var
    if hasattr(holder, "num_batches_tracked"):
        bn.num_batches_tracked = holder.num_batches_tracked
    if w is not None:
        bn.weight, bn.bias = holder.weight, holder.bias
    counter = counters.pop(f"{owner}.num_batches_tracked", None)
    if counter is not None and not counter.users:
        gm.graph.erase_node(counter)
    _as_call_module(gm, node, owner, bn, x)


class AttentionDropout(nn.Module):
    """The dropout probability of an attention call: ``p`` in training mode, 0.0 in eval mode.

    Called with no arguments; its output (a python float) is the ``dropout_p`` argument of the
    attention op it was made for."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self) -> float:
        return self.p if self.training else 0.0

    def extra_repr(self) -> str:
        return f"p={self.p}"


_SDPA = (aten.scaled_dot_product_attention.default,)


def _attention_dropout(gm: GraphModule, node: Node) -> None:
    """Make a constant ``dropout_p > 0`` of an attention node follow the module's mode."""
    in_kwargs = "dropout_p" in node.kwargs
    p = node.kwargs["dropout_p"] if in_kwargs else node.args[4] if len(node.args) > 4 else 0.0
    if not isinstance(p, float) or p <= 0:
        return
    k = 0
    while hasattr(gm, f"otofx_attention_dropout_{k}"):
        k += 1
    path = f"otofx_attention_dropout_{k}"
    gm.add_submodule(path, AttentionDropout(p))
    with gm.graph.inserting_before(node):
        prob = gm.graph.call_module(path, ())
    if in_kwargs:
        node.kwargs = {**node.kwargs, "dropout_p": prob}
    else:
        node.args = (*node.args[:4], prob, *node.args[5:])


def _modes_as_modules(gm: GraphModule) -> None:
    counters = {n.args[0].target: n for n in gm.graph.nodes
                if n.op == "call_function" and n.target is aten.add_.Tensor
                and isinstance(n.args[0], Node) and n.args[0].op == "get_attr"
                and n.args[0].target.endswith("num_batches_tracked")}
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in (aten.dropout.default, aten.alpha_dropout.default):
            _dropout(gm, node)
        elif node.target is aten.batch_norm.default:
            _batch_norm(gm, node, counters)
        elif node.target in _SDPA:
            _attention_dropout(gm, node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()

