"""Functional multi-head attention back into a module, so its heads are prunable.

Dynamo inlines ``nn.MultiheadAttention`` into a call of ``F.multi_head_attention_forward`` whose
weights arrive as plain graph inputs (``get_attr`` once ``params_as_attrs`` has run). No rule
knows that function, so the analysis pins every channel it touches: on torchvision's ViT through
``torch.compile(backend="otofx")`` the heads and the residual stream stayed whole and only the
MLPs shrank (latency 0.70 of the dense model at 0.26 of its FLOPs, against 0.30 for the same
zeros through ``otofx.trace``).

This pass puts an ``nn.MultiheadAttention`` holding the very same parameters in place of each
call that the module can express (packed q/k/v weights, no ``bias_k``/``bias_v``, no
``add_zero_attn``, no static keys or values, biases on both projections or on neither), in the
``(sequence, batch, embed)`` layout the function takes (``batch_first=False``, whose forward is
this same function call). The module's rule then prunes whole heads and its rewrite emits the
exact smaller layer. Other calls stay, and stay pinned. The parameters move from their old
attribute paths to the module's (they are no longer reachable under the old ones).

Before: ``attn = F.multi_head_attention_forward(q, q, q, 768, 12, in_w, in_b, None, None, False,
0.0, out_w, out_b, training=False, need_weights=False)``;
after: ``attn = self.encoder.layer_0.self_attention(q, q, q, need_weights=False)`` (the path
its parameters were read from, when nothing else is held there; else ``otofx_mha_<i>``).
"""

from __future__ import annotations

import inspect

import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node
from torch.fx.passes.infra.pass_base import PassResult

_SIGNATURE = inspect.signature(F.multi_head_attention_forward)
_FORWARDED = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


def _attribute(gm: GraphModule, arg) -> nn.Parameter | None:
    """The parameter a ``get_attr`` node reads (None for anything else)."""
    if not isinstance(arg, Node) or arg.op != "get_attr":
        return None
    value = gm.get_parameter(arg.target) if _is_parameter(gm, arg.target) else None
    return value if isinstance(value, nn.Parameter) else None


def _is_parameter(gm: GraphModule, target: str) -> bool:
    owner, _, leaf = target.rpartition(".")
    try:
        module = gm.get_submodule(owner) if owner else gm
    except AttributeError:
        return False
    return leaf in module._parameters


def _module_for(gm: GraphModule, a: dict) -> nn.MultiheadAttention | None:
    """The ``nn.MultiheadAttention`` computing this call with its parameters, or None."""
    if a["use_separate_proj_weight"] or a["bias_k"] is not None or a["bias_v"] is not None \
            or a["add_zero_attn"] or a["static_k"] is not None or a["static_v"] is not None \
            or not isinstance(a["embed_dim_to_check"], int) or not isinstance(a["num_heads"], int) \
            or not isinstance(a["dropout_p"], float | int) or not isinstance(a["training"], bool):
        return None
    in_w, out_w = _attribute(gm, a["in_proj_weight"]), _attribute(gm, a["out_proj_weight"])
    in_b, out_b = _attribute(gm, a["in_proj_bias"]), _attribute(gm, a["out_proj_bias"])
    bias = a["in_proj_bias"] is not None
    E, H = a["embed_dim_to_check"], a["num_heads"]
    if in_w is None or out_w is None or bias != (a["out_proj_bias"] is not None) \
            or (bias and (in_b is None or out_b is None)) or E % H \
            or in_w.shape != (3 * E, E) or out_w.shape != (E, E):
        return None
    m = nn.MultiheadAttention(E, H, dropout=float(a["dropout_p"]), bias=bias, batch_first=False,
                              device="meta", dtype=in_w.dtype)
    m.in_proj_weight, m.out_proj.weight = in_w, out_w
    if bias:
        m.in_proj_bias, m.out_proj.bias = in_b, out_b
    return m.train(a["training"])


def _home(gm: GraphModule, targets: dict[str, str]) -> str | None:
    """The path the attention module had before dynamo inlined it, when its parameters are all
    that is left there (``X.in_proj_weight``, ``X.in_proj_bias``, ``X.out_proj.weight``,
    ``X.out_proj.bias``): the module goes back to ``X``, and the report names it as
    ``otofx.trace`` would."""
    owner = targets["in_proj_weight"].rpartition(".")[0]
    expected = {"in_proj_weight": f"{owner}.in_proj_weight", "in_proj_bias": f"{owner}.in_proj_bias",
                "out_proj_weight": f"{owner}.out_proj.weight", "out_proj_bias": f"{owner}.out_proj.bias"}
    if not owner or any(expected[k] != t for k, t in targets.items()):
        return None
    held = {f"{owner}.{n}" for n, _ in gm.get_submodule(owner).named_parameters()} | {
        f"{owner}.{n}" for n, _ in gm.get_submodule(owner).named_buffers()}
    return owner if held == set(targets.values()) else None


def _fresh(gm: GraphModule, name: str) -> str:
    while hasattr(gm, name):
        name += "_"
    return name


def mha_as_modules(gm: GraphModule) -> PassResult:
    """Replace, in place, each ``F.multi_head_attention_forward`` call the module can express
    (see the module docstring) by a call of an ``nn.MultiheadAttention`` submodule holding its
    parameters."""
    graph, count = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not F.multi_head_attention_forward:
            continue
        try:
            bound = _SIGNATURE.bind(*node.args, **node.kwargs)
        except TypeError:
            continue
        bound.apply_defaults()
        a = bound.arguments
        module = _module_for(gm, a)
        if module is None:
            continue
        targets = {k: a[k].target for k in ("in_proj_weight", "in_proj_bias", "out_proj_weight",
                                            "out_proj_bias") if isinstance(a[k], Node)}
        name = _home(gm, targets) or _fresh(gm, f"otofx_mha_{count}")
        kwargs = {k: a[k] for k in _FORWARDED if k in a}
        with graph.inserting_before(node):
            call = graph.call_module(name, (a["query"], a["key"], a["value"]), kwargs)
        call.meta.update(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        for read in [n for n in graph.nodes if n.op == "get_attr" and n.target in targets.values()]:
            if not read.users:
                graph.erase_node(read)
        still_read = {n.target for n in graph.nodes if n.op == "get_attr"}
        for target in set(targets.values()) - still_read:
            owner, _, leaf = target.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, leaf)
        gm.add_submodule(name, module)
        count += 1
    if not count:
        return PassResult(gm, False)
    graph.lint()
    gm.recompile()
    return PassResult(gm, True)
