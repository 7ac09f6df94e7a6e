"""Plain-text reports: groups, what is pinned and why, prunable share of params and FLOPs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from otofx.flops import count_flops, flops_by_node
from otofx.inputs import inputs_on_module_device
from otofx.passes.meta import SHRINK
from otofx.passes.table import PRODUCER

if TYPE_CHECKING:
    from otofx.analysis import Analysis


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def analysis_report(analysis: Analysis, max_rows: int = 60) -> str:
    s = analysis.summary()
    removable, total = analysis.prunable_params()
    flops_share = prunable_flops_share(analysis)
    out = [
        f"otofx analysis of {type(analysis.gm).__name__}: {len(analysis.gm.graph.nodes)} nodes",
        f"groups: {s['groups']} ({s['prunable_groups']} prunable, "
        f"{s['groups'] - s['prunable_groups']} pinned)",
        f"channels: {s['prunable_channels']} prunable, {s['pinned_channels']} pinned",
        f"prunable share: {100 * removable / max(total, 1):.1f}% of {total:,} parameters, "
        f"{100 * flops_share:.1f}% of FLOPs",
        "params/ch, FLOPs/ch: what one more channel of the group costs (otofx.cost, the "
        "derivative at full width)",
        "",
    ]
    rows = []
    marginal = analysis.cost.marginals()
    for g in analysis.groups[:max_rows]:
        members = ", ".join(sorted({m.param.rsplit(".", 1)[0] for m in g.members}))
        state = "prunable" if g.prunable else "pinned: " + "; ".join(g.why_pinned[:2])
        params, flops = (f"{c:,}" for c in marginal[g.name]) if g.prunable else ("-", "-")
        rows.append([g.name, g.size, params, flops, state,
                     members[:70] + ("..." if len(members) > 70 else "")])
    out.append(_table(rows, ["group", "channels", "params/ch", "FLOPs/ch", "state", "layers"]))
    if analysis.cost.fixed:
        out.append(f"FLOPs held at their dense count in the cost model (no FLOP formula for the op): "
                   f"{', '.join(analysis.cost.fixed)}")
    if len(analysis.groups) > max_rows:
        out.append(f"... and {len(analysis.groups) - max_rows} more groups")
    if analysis.structures:
        out += ["", structures_table(analysis, max_rows)]
    return "\n".join(out)


def structures_table(analysis: Analysis, max_rows: int = 60) -> str:
    """The structures (``passes.erasable``) that could be erased: kind, parameters, parent,
    erasable or pinned and why. Join operands that never could are counted, not listed: those
    without parameters (a rotary embedding's ``mul``/``neg``, an ``arange``) and the terms of a sum
    that broadcasts (attention scores plus a mask)."""
    owning = [s for s in analysis.structures if s.params and s.kind != "sum term"]
    rows = [[s.name, s.kind, f"{s.numel:,}", ", ".join(s.parents) or "-",
             "erasable" if s.erasable else "pinned: " + "; ".join(s.why_pinned[:1])]
            for s in owning[:max_rows]]
    bare = len(analysis.structures) - len(owning)
    text = (f"structures: {len(owning)} ({len(analysis.erasable)} erasable)"
            + (f"; {bare} join operands that cannot be erased not listed (no parameters, or a "
               f"broadcasting sum's terms)" if bare else "") + "\n"
            + _table(rows, ["structure", "kind", "params", "inside", "state"]))
    if len(owning) > max_rows:
        text += f"\n... and {len(owning) - max_rows} more structures"
    return text


def prunable_flops_share(analysis: Analysis) -> float:
    """FLOPs of each node weighted by the share of its weight's rows that are prunable channels'
    producers: the part of the compute that training can switch off. (Products of two
    activations, such as attention scores, are not counted as prunable.)"""
    gm = analysis.gm
    per_node = flops_by_node(gm, analysis.example_inputs)
    total = sum(per_node.values())
    if not total:
        return 0.0
    share = {name: float(mask.float().mean())
             for name, mask in analysis.slice_masks(None, (PRODUCER,)).items() if bool(mask.any())}
    saved = 0.0
    for node in gm.graph.nodes:
        if node.name not in per_node:
            continue
        if node.op == "call_module":
            weights = [f"{node.target}.{n}" for n, _ in gm.get_submodule(node.target).named_parameters()]
        else:
            weights = [a.target for a in node.all_input_nodes if a.op == "get_attr"]
        fractions = [share[w] for w in weights if w in share]
        saved += per_node[node.name] * (max(fractions) if fractions else 0.0)
    return min(1.0, saved / total)


def structure_line(sp: dict, stats) -> str:
    """H2SPG's line: erased structures, target vs reached, and what shrink deleted."""
    erased = sp["erased_structures"]
    state = "reached exactly" if len(erased) == sp["target_structures"] else (
        sp["structure_warning"] or ("pruning phase not finished" if not sp["pruning_done"]
                                    else "differs"))
    deleted = ", ".join(stats.erased) if stats is not None and stats.erased else "none"
    return (f"structures: target {sp['target_structures']} of {sp['erasable_structures']} "
            f"erasable, erased {len(erased)}: {state}\nstructures deleted: {deleted}")


def mechanism_lines(sp: dict, prefix: str = "", what: str = "channels") -> list[str]:
    """DHSPG/H2SPG: how many were zeroed by the half-space projection and by the fallback."""
    if f"{prefix}zeroed_by_projection" not in sp:
        return []
    lines = [f"{what} zeroed by the half-space projection: {sp[prefix + 'zeroed_by_projection']}, "
             f"by the fallback: {sp[prefix + 'zeroed_by_fallback']}"]
    if sp[prefix + "fallback_warning"]:
        lines.append(f"warning: {sp[prefix + 'fallback_warning']}")
    return lines


def budget_line(opt, sp: dict, base: dict, params: int, flops: int, removed: dict) -> str:
    """A budget's line: asked, reached (measured on the subnet; latency as the table predicts
    it), and the channels that got it."""
    b = opt.budget
    how = ""
    aimed_at = b.fraction
    if b.field == "target_latency":
        widths = torch.tensor([g.size - removed.get(g.name, 0) for g in opt.views.groups])
        dense, reached, how = b.dense, float(b.cost(widths)), ", predicted by the latency table"
        if b.measured is not None:
            aimed_at = b.aim
            how += (f"; aimed at {b.aim:.3f}, where {len(b.checks)} end-to-end check(s) of the "
                    f"subnet's shapes measured {b.measured:.3f} of the dense latency")
    else:
        dense, reached = (base["flops"], flops) if b.field == "target_flops" else (base["params"], params)
    state = "pruning phase not finished" if not sp["pruning_done"] else (
        f"{100 * (reached / max(dense, 1e-30) - aimed_at):+.2f} points")
    erasing = (f"erasing {len(b.erased)} structure(s) (the most the budget leaves room for, up to "
               f"the structure target; listed below) and " if "erasable_structures" in sp else "")
    return (f"{b.what} budget ({b.field}): asked {b.fraction:.3f} of the dense model, reached "
            f"{reached / max(dense, 1e-30):.3f} ({state}{how}) by {erasing}pruning the "
            f"{sp['zero_channels'] - sp.get('zero_channels_in_erased', 0)} least important of "
            f"{sp['prunable_channels']} prunable channels (score order, the count set by the "
            f"budget; widths below)")


def compression_report(job, subnet) -> str:
    """What a compression job reached: sparsity target vs reached, params/FLOPs, widths."""
    opt = job.optimizer
    sp = opt.sparsity_report()
    base = job.baseline()
    params = sum(p.numel() for p in subnet.parameters())
    flops = count_flops(subnet, inputs_on_module_device(subnet, job.example_inputs))
    stats = subnet.meta.get(SHRINK)
    lines = [f"otofx compression report ({type(opt).__name__}, {opt.steps_taken} steps)"]
    if not sp["prunable_channels"] and "erasable_structures" in sp:
        lines.append("channels: not pruned (target_group_sparsity = 0)")
    elif not sp["prunable_channels"]:
        lines.append("no prunable group: the optimizer ran as plain "
                     f"{opt.config.variant}; see analysis.report() for why")
    elif getattr(opt, "budget", None) is not None:
        lines.append(budget_line(opt, sp, base, params, flops, stats.removed if stats else {}))
    else:
        in_erased = sp.get("zero_channels_in_erased", 0)
        state = "reached exactly" if sp["zero_channels"] - in_erased == sp["target_channels"] else (
            "pruning phase not finished" if not sp["pruning_done"] else "differs")
        lines.append(
            f"group sparsity: target {sp['target']:.3f} ({sp['target_channels']} of "
            f"{sp['prunable_channels']} channels), reached {sp['reached']:.3f} "
            f"({sp['zero_channels']} channels"
            + (f": {sp['zero_channels'] - in_erased} pruned + {in_erased} inside erased structures"
               if in_erased else "") + f"): {state}")
        lines += mechanism_lines(sp)
    if getattr(opt.config, "group_divisible_asked", None):
        lines.append(f"group_divisible: {opt.config.group_divisible_asked} -> "
                     f"{opt.config.group_divisible} (otofx.config.AUTO_DIVISIBLE for the device)")
    if getattr(opt.config, "allocation_asked", None):
        lines.append(f"allocation: {opt.config.allocation_asked} -> {opt.config.allocation} "
                     "(otofx.config.resolve_allocation)")
    if "erasable_structures" in sp:
        lines.append(structure_line(sp, stats))
        lines += mechanism_lines(sp, "structures_", "structures")
    lines += [
        f"parameters: {base['params']:,} -> {params:,} ({params / max(base['params'], 1):.3f}x)",
        f"FLOPs:      {base['flops']:,} -> {flops:,} ({flops / max(base['flops'], 1):.3f}x)",
    ]
    if stats is not None and stats.kept:
        lines.append(f"zero channels kept (a constant not foldable, or a tensor that would be "
                     f"empty): {sum(stats.kept.values())}")
    rows = []
    removed = stats.removed if stats is not None else {}
    for g in job.analysis.prunable:
        kept = g.size - removed.get(g.name, 0)
        rows.append([g.name, g.size, kept, f"{kept / g.size:.2f}"])
    if rows:
        lines += ["", _table(rows, ["group", "channels", "kept", "ratio"])]
    return "\n".join(lines)
