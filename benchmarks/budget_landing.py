"""Budget landing: how near ``target_flops`` / ``target_params`` put the subnet, on zoo models.

For each model (random weights, random channel scores standing in for the optimizers'), this asks
``otofx.budget.pick_for_budget`` for FLOPs and parameter budgets of 0.25, 0.5 and 0.75 of the
dense model, with ``group_divisible`` 1 and 8, and prints where the cost polynomial
(``otofx.cost``) says the subnet lands. For the 0.5 budgets it also zeroes the picked channels,
shrinks, and measures the subnet (``FlopCounterMode``, parameter count): the measured cost must
equal the polynomial's. Target: within 1 point of every budget with ``group_divisible=1``, or
on the floor (every prunable group at one channel) when the budget is below it.

A second table runs the optimizers themselves, as a user would: ``otofx.compress`` with DHSPG,
HESSO (2 periods) and H2SPG (erasing, where the model has erasable structures) at
``target_flops=0.5`` and ``target_params=0.5`` (their default ``allocation``), a few steps of
random data (the pruning phase over the first steps), then ``job.subnet()``, its FLOPs and
parameters counted: where the subnet a user gets lands, erased structures and all.

Last, the measurement behind what ``group_divisible="auto"`` should be on this CPU: the time
per output channel of a 3x3 convolution (64 input channels, 56x56, resnet18's first stage) and
of a linear layer (768 inputs, 197 tokens, 12 outputs per channel: a ViT-B MLP slice) at every
width from 32 to 64, one thread, medians of interleaved repeats, and the mean per-channel time at
multiples of 8 and of 16 against the other widths (``--divisible``: that alone).

Run from the repository root: ``python -m benchmarks.budget_landing [--quick] [--divisible]
[--out PATH]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torchvision
from otofx.passes.common import tensor_named
from otofx.passes.table import AFFINE, PRODUCER

import otofx
from otofx.budget import pick_for_budget
from otofx.flops import count_flops
from otofx.grouped import GroupedViews
from otofx.h2spg import STRUCTURES

MODELS = {"resnet50": 64, "mobilenet_v3_large": 64, "efficientnet_b0": 64, "densenet121": 64,
          "convnext_tiny": 64, "regnet_y_400mf": 64, "vit_b_16": 224, "swin_t": 224}
QUICK = ("resnet50", "mobilenet_v3_large")
FRACTIONS = (0.25, 0.5, 0.75)


@torch.no_grad()
def _zero(gm, views: GroupedViews, chosen: torch.Tensor) -> None:
    for gi, g in enumerate(views.groups):
        idx = torch.nonzero(chosen[int(views.offsets[gi]):int(views.offsets[gi + 1])]).view(-1)
        for m in g.slices(PRODUCER, AFFINE):
            tensor_named(gm, m.param).index_fill_(m.dim, m.index[idx].reshape(-1), 0.0)


def _cost(module: torch.nn.Module, x: torch.Tensor, flops: bool) -> int:
    """``module``'s FLOPs at ``x`` (``FlopCounterMode``) or its parameter count."""
    return count_flops(module, (x,)) if flops else sum(p.numel() for p in module.parameters())


def measure(name: str, size: int) -> list[list[str]]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, size, size)
    t = time.perf_counter()
    analysis = otofx.analyze(otofx.trace(model, (x,)), (x,))
    cost = analysis.cost
    took = time.perf_counter() - t
    views = GroupedViews(analysis.gm, analysis.prunable)
    score = torch.rand(views.num_channels, generator=torch.Generator().manual_seed(1))
    rows = []
    for what, poly in (("FLOPs", cost.flops), ("params", cost.params)):
        evaluate = poly.evaluator(views.groups)
        floor = int(evaluate(views.sizes.clamp(max=1)))
        for divisible in (1, 8):
            landed, checked = [], ""
            for fraction in FRACTIONS:
                chosen = pick_for_budget(score, views.group_of, views.sizes, evaluate,
                                         fraction * poly.dense, divisible)
                kept = views.sizes - torch.bincount(views.group_of[chosen], minlength=len(views.sizes))
                predicted = int(evaluate(kept))
                landed.append(f"{predicted / poly.dense:.4f}" + (
                    " (floor)" if divisible == 1 and predicted == floor > fraction * poly.dense else ""))
                if fraction == 0.5:
                    gm = otofx.trace(model, (x,))
                    fresh = otofx.analyze(gm, (x,))
                    _zero(gm, GroupedViews(gm, fresh.prunable), chosen)
                    small = otofx.shrink(gm, fresh)
                    real = _cost(small, x, what == "FLOPs")
                    checked = "yes" if real == predicted else f"NO ({real:,} vs {predicted:,})"
            rows.append([name, what, str(divisible), *landed, checked,
                         f"{len(views.groups)}", f"{took:.1f}", f"{len(cost.fixed)}"])
    return rows


OPTIMIZERS = ("DHSPG", "HESSO", "H2SPG")
STEPS = 6            # training steps of the optimizer rows: pruning over the first 4


def through_optimizer(name: str, size: int, kind: str, field: str) -> list[str]:
    """One optimizer row: ``otofx.compress`` with ``{field}=0.5``, :data:`STEPS` steps of random
    data, then ``job.subnet()`` counted."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    x = torch.randn(2, 3, size, size)
    common = {"lr": 1e-3, field: 0.5, "start_pruning_step": 0, "pruning_steps": 4}
    config = {"DHSPG": lambda: otofx.DHSPGConfig(**common),
              "HESSO": lambda: otofx.HESSOConfig(pruning_periods=2, **common),
              "H2SPG": lambda: otofx.H2SPGConfig(**common)}[kind]()
    job = otofx.compress(model, config, (x[:1],))
    if kind == "H2SPG" and not job.analysis.erasable:
        return []
    for _ in range(STEPS):
        job.optimizer.zero_grad()
        job.module(torch.randn_like(x)).square().mean().backward()
        job.optimizer.step()
    small = job.subnet()
    one = x[:1]
    flops = field == "target_flops"
    erased = job.optimizer.otofx_state[STRUCTURES]["erased"] if kind == "H2SPG" else 0
    ratio = _cost(small, one, flops) / _cost(job.module, one, flops)
    verdict = "within 1%" if abs(ratio - 0.5) <= 0.005 else f"off by {ratio - 0.5:+.4f}"
    return [name, kind, {"target_flops": "FLOPs", "target_params": "params"}[field],
            f"{ratio:.4f}", verdict, str(erased)]


def divisible_sweep(widths: range = range(32, 65), repeats: int = 15) -> str:
    """Per-channel time at each width (see the module docstring), and the verdict per multiple."""
    import statistics
    x, y = torch.randn(1, 64, 56, 56), torch.randn(197, 768)
    layers = {c: (torch.nn.Conv2d(64, c, 3, padding=1).eval(), torch.nn.Linear(768, 12 * c).eval())
              for c in widths}
    times = {(c, k): [] for c in widths for k in (0, 1)}
    with torch.no_grad():
        for _ in range(repeats + 1):           # the first round warms up, uncounted
            for c, pair in layers.items():
                for k, (layer, inp) in enumerate(zip(pair, (x, y))):
                    t = time.perf_counter()
                    layer(inp)
                    times[c, k].append(time.perf_counter() - t)
    per = {key: statistics.median(ts[1:]) / key[0] for key, ts in times.items()}
    lines = ["| layer | multiple | mean time per channel vs the other widths | widths |",
             "|---|---|---|---|"]
    for k, layer in enumerate(("conv 3x3", "linear")):
        for m in (8, 16):
            on = [per[c, k] for c in widths if c % m == 0]
            off = [per[c, k] for c in widths if c % m]
            lines.append(f"| {layer} | {m} | {statistics.mean(on) / statistics.mean(off):.3f} | "
                         f"{len(on)} vs {len(off)} |")
    return ("Time per output channel at widths 32-64 (one thread; below 1: the multiple runs "
            "faster per channel):\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    parser.add_argument("--divisible", action="store_true",
                        help="only the width sweep behind group_divisible='auto' on this CPU")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.divisible:
        print(divisible_sweep())
        return
    header = ["model", "budget", "divisible", *[f"at {f}" for f in FRACTIONS],
              "subnet = polynomial at 0.5", "groups", "analysis + cost model (s)", "fixed nodes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in (QUICK if args.quick else MODELS):
        for row in measure(name, MODELS[name]):
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
    head = ["model", "optimizer", "budget 0.5 of", "subnet / dense", "verdict", "structures erased"]
    opt = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in (QUICK if args.quick else MODELS):
        for kind in OPTIMIZERS:
            for field in ("target_flops", "target_params"):
                row = through_optimizer(name, MODELS[name], kind, field)
                if row:
                    opt.append("| " + " | ".join(row) + " |")
                    print(opt[-1], flush=True)
    text = ("Where the subnet lands, as a fraction of the dense model's cost, for budgets of "
            f"{', '.join(map(str, FRACTIONS))} (one thread, random weights and scores).\n\n"
            + "\n".join(lines) + "\n\nThrough the optimizers (otofx.compress, "
            f"{STEPS} steps of random data, pruning over the first 4; job.subnet() counted):\n\n"
            + "\n".join(opt) + "\n\n" + divisible_sweep())
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
