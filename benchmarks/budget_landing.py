"""Budget landing: how near ``target_flops`` / ``target_params`` put the subnet, on zoo models.

For each model (random weights, random channel scores standing in for the optimizers'), this asks
``otofx.budget.pick_for_budget`` for FLOPs and parameter budgets of 0.25, 0.5 and 0.75 of the
dense model, with ``group_divisible`` 1 and 8, and prints where the cost polynomial
(``otofx.cost``) says the subnet lands. For the 0.5 budgets it also zeroes the picked channels,
shrinks, and measures the subnet (``FlopCounterMode``, parameter count): the measured cost must
equal the polynomial's. Target: within 1 point of every budget with ``group_divisible=1``, or
on the floor (every prunable group at one channel) when the budget is below it.

Run from the repository root: ``python -m benchmarks.budget_landing [--quick] [--out PATH]``.
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
                    real = count_flops(small, (x,)) if what == "FLOPs" else sum(
                        p.numel() for p in small.parameters())
                    checked = "yes" if real == predicted else f"NO ({real:,} vs {predicted:,})"
            rows.append([name, what, str(divisible), *landed, checked,
                         f"{len(views.groups)}", f"{took:.1f}", f"{len(cost.fixed)}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    header = ["model", "budget", "divisible", *[f"at {f}" for f in FRACTIONS],
              "subnet = polynomial at 0.5", "groups", "analysis + cost model (s)", "fixed nodes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in (QUICK if args.quick else MODELS):
        for row in measure(name, MODELS[name]):
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
    text = ("Where the subnet lands, as a fraction of the dense model's cost, for budgets of "
            f"{', '.join(map(str, FRACTIONS))} (one thread, random weights and scores).\n\n"
            + "\n".join(lines) + "\n")
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
