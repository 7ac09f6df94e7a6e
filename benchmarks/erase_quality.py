"""Erasing quality: H2SPG's subnet against the full super-network and a smallest-norm erasing baseline.

For every super-network of ``tests/zoo/supernets.py`` (DARTS-style cells, super-ResNet, U-Net
stack) on load_digits (fixed split), every target share of erasable structures and every seed
(same initialisation and batch order for all three at a seed):

- **full**: the super-network trained densely (SGD lr 0.05, momentum 0.9) for all epochs;
- **H2SPG**: ``otofx.compress`` with ``H2SPGConfig(target_structure_sparsity=target)``, warm-up
  for the first sixth of the steps, erasing over the next third, training on for the rest;
  measured on ``job.subnet()``;
- **erasing baseline**: the full run's weights at half the epochs (where H2SPG's erasing phase
  ends), analysed by otofx; the erasable structures ordered by the L2 norm of their parameters,
  smallest first, and taken with ``otofx.h2spg.select_structures`` (which skips a structure that
  would disconnect an output, as H2SPG does) up to the same count as H2SPG's target; their
  parameters zeroed, ``otofx.shrink``, then fine-tuning (fresh SGD) for the other half.

All three have their batch-norm statistics recomputed over the first ``CALIBRATION_BATCHES``
training batches (``otofx.recalibrate_batchnorm``) before they are measured: the DARTS-style
super-network's eval accuracy swings by tens of points between epochs otherwise, dense too.

Paired by seed: H2SPG minus full (target: within 2 points at half the structures erased) and
H2SPG minus the baseline ("beats"/"loses" only beyond twice the standard error).

    python -m benchmarks.erase_quality [--nets darts,resnet,unet] [--targets 0.5] [--seeds 5]
                                       [--epochs 10] [--quick] [--out erase_quality.md]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from zoo.supernets import SUPERNETS  # noqa: E402

import otofx  # noqa: E402
from benchmarks import paired  # noqa: E402
from examples.digits_data import accuracy, digits, first_batches, steps_per_epoch, train  # noqa: E402
from otofx.flops import count_flops  # noqa: E402
from otofx.h2spg import select_structures  # noqa: E402

LR, MOMENTUM = 0.05, 0.9
WITHIN = 0.02          # H2SPG's subnet within 2 points of the full super-network
CALIBRATION_BATCHES = 8   # batch-norm statistics recomputed over these (every network alike)


def sgd(module: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)


def fit(module: torch.nn.Module, optimizer: torch.optim.Optimizer, data: tuple, seed: int,
        first: int, epochs: int) -> None:
    for epoch in range(first, first + epochs):           # the same batch order for everyone
        train(module, optimizer, data, 1, seed=1000 * seed + epoch)


def candidates(gm: torch.fx.GraphModule, analysis: otofx.Analysis) -> list:
    """The erasable structures H2SPG works on (trainable parameters of dim >= 1)."""
    params = dict(gm.named_parameters())
    return [s for s in analysis.erasable if all(
        p in params and params[p].requires_grad and params[p].dim() >= 1 for p in s.params)]


def norm_erase(gm: torch.fx.GraphModule, x: torch.Tensor, target: float
               ) -> tuple[torch.fx.GraphModule, int, int]:
    """Zero the erasable structures of ``gm`` with the smallest parameter L2 norm (skipping one
    that would disconnect an output) until ``round(target * n)`` are erased, and shrink.
    Returns (subnet, erased, n)."""
    analysis = otofx.analyze(gm, (x,))
    structures = candidates(gm, analysis)
    params = dict(gm.named_parameters())
    norms = {s.name: torch.sqrt(sum(params[p].detach().pow(2).sum() for p in s.params)).item()
             for s in structures}
    order = sorted(structures, key=lambda s: norms[s.name])
    count = int(round(target * len(structures)))
    chosen, erased = select_structures(analysis.gm, analysis.structures, order, count)
    with torch.no_grad():
        for s in chosen:
            for p in s.params:
                params[p].zero_()
    return otofx.shrink(gm, analysis), erased, len(structures)


def run_seed(net: str, target: float, seed: int, epochs: int, width: int, data: tuple) -> dict:
    """The full, H2SPG and baseline runs of one super-network, target and seed."""
    train_set, test_set = data
    x = train_set[0][:2]
    half = epochs // 2
    out: dict = dict(net=net, target=target, seed=seed)

    t = time.perf_counter()
    torch.manual_seed(seed)
    full = otofx.trace(SUPERNETS[net](c=width), (x,))
    opt = sgd(full)
    fit(full, opt, train_set, seed, 0, half)
    warm = time.perf_counter() - t
    snapshot = copy.deepcopy(full)
    t = time.perf_counter()
    fit(full, opt, train_set, seed, half, epochs - half)
    calibration = first_batches(train_set[0], 64 * CALIBRATION_BATCHES)
    otofx.recalibrate_batchnorm(full, calibration)
    out["full"] = dict(accuracy=accuracy(full, test_set), flops=count_flops(full, (x[:1],)),
                       params=sum(p.numel() for p in full.parameters()),
                       wall=warm + time.perf_counter() - t)

    t = time.perf_counter()
    small, erased, n = norm_erase(snapshot, x, target)
    fit(small, sgd(small), train_set, seed, half, epochs - half)
    otofx.recalibrate_batchnorm(small, calibration)
    out["baseline"] = dict(accuracy=accuracy(small, test_set), flops=count_flops(small, (x[:1],)),
                           params=sum(p.numel() for p in small.parameters()), erased=erased,
                           erasable=n, wall=warm + time.perf_counter() - t)

    t = time.perf_counter()
    steps = epochs * steps_per_epoch(train_set)
    torch.manual_seed(seed)
    cfg = otofx.H2SPGConfig(lr=LR, momentum=MOMENTUM, target_structure_sparsity=target,
                            start_pruning_step=steps // 6, pruning_steps=max(1, steps // 3))
    job = otofx.compress(SUPERNETS[net](c=width), cfg, (x,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(job.module, job.optimizer, train_set, seed, 0, epochs)
    otofx.recalibrate_batchnorm(job.module, calibration)
    small = job.subnet()
    sp = job.optimizer.sparsity_report()
    out["h2spg"] = dict(accuracy=accuracy(small, test_set), flops=count_flops(small, (x[:1],)),
                        params=sum(p.numel() for p in small.parameters()),
                        erased=len(sp["erased_structures"]), erasable=sp["erasable_structures"],
                        wall=time.perf_counter() - t,
                        warnings=sorted({str(w.message)[:120] for w in caught}))
    return out


def within_word(p: paired.Paired) -> str:
    """"within" when the mean paired difference minus twice its SE is above -WITHIN, "NOT
    within" when the mean plus twice its SE is below it, otherwise "undecided whether within"."""
    if len(p.diffs) < 2:
        return "n/a: fewer than 2 seeds for"
    if p.mean - 2 * p.se >= -WITHIN:
        return "within"
    if p.mean + 2 * p.se < -WITHIN:
        return "NOT within"
    return "undecided (mean ± 2 SE straddles -2 points) whether within"


def rows_for(runs: list[dict], net: str, target: float) -> tuple[list[str], list[str], dict]:
    """The table rows of one net and target, and its two verdicts."""
    rs = [r for r in runs if r["net"] == net and r["target"] == target]
    full = {r["seed"]: r["full"]["accuracy"] for r in rs}
    h2 = {r["seed"]: r["h2spg"]["accuracy"] for r in rs}
    base = {r["seed"]: r["baseline"]["accuracy"] for r in rs}
    vs_full, vs_base = paired.verdict(h2, full), paired.verdict(h2, base)
    within = within_word(vs_full)

    def mean(key: str, field: str) -> float:
        return statistics.fmean(r[key][field] for r in rs)

    def share(key: str, field: str) -> str:
        return f"{statistics.fmean(r[key][field] / r['full'][field] for r in rs):.3f}"

    def wall(key: str) -> str:
        return f"{statistics.median(r[key]['wall'] / r['full']['wall'] for r in rs):.2f}x"

    rows = []
    for key, label in (("full", "full super-network"), ("h2spg", "otofx H2SPG"),
                       ("baseline", "smallest-norm erasing + fine-tune")):
        erased = "—" if key == "full" else \
            f"{mean(key, 'erased'):.1f} / {rs[0][key]['erasable']}"
        accs = [r[key]["accuracy"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append(f"| {net} | {target:g} | {label} | {erased} | {statistics.fmean(accs):.3f} ± "
                    f"{sd:.3f} | {share(key, 'flops')} | {share(key, 'params')} | {wall(key)} |")
    lines = [f"- **{net}, target {target:g}**: H2SPG vs full super-network: {vs_full.cell()}: "
             + f"{within} {100 * WITHIN:g} points; H2SPG vs smallest-norm erasing baseline: "
             f"{vs_base.cell()}"]
    warned = sorted({w for r in rs for w in r["h2spg"]["warnings"]})
    if warned:
        lines.append(f"  - H2SPG warned: {'; '.join(warned[:2])}")
    return rows, lines, dict(net=net, target=target, vs_full=vs_full.word,
                             vs_full_mean=vs_full.mean, vs_full_se=vs_full.se, within=within,
                             vs_baseline=vs_base.word, vs_baseline_mean=vs_base.mean,
                             vs_baseline_se=vs_base.se, n=len(rs))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", default=None,
                        help="of darts, resnet, unet (default all; --quick resnet,unet)")
    parser.add_argument("--targets", default="0.5")
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (--quick 2)")
    parser.add_argument("--epochs", type=int, default=None, help="default 10 (--quick 4)")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true",
                        help="the small nets (resnet, unet), 2 seeds, 4 epochs")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the markdown here and the .json beside it")
    args = parser.parse_args(argv)
    args.nets = (args.nets or ("resnet,unet" if args.quick else "darts,resnet,unet")).split(",")
    unknown = [n for n in args.nets if n not in SUPERNETS]
    if unknown:
        parser.error(f"unknown net(s) {unknown}: choose from {sorted(SUPERNETS)}")
    args.targets = [float(t) for t in args.targets.split(",")]
    args.seeds = args.seeds or (2 if args.quick else 5)
    args.epochs = args.epochs or (4 if args.quick else 10)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start, t0 = paired.stamp(), time.perf_counter()
    data = digits(0)
    runs = []
    try:
        for net in args.nets:
            for target in args.targets:
                for seed in range(args.seeds):
                    r = run_seed(net, target, seed, args.epochs, args.width, data)
                    runs.append(r)
                    print(f"  {net} {target:g} seed {seed}: full {r['full']['accuracy']:.3f}, "
                          f"H2SPG {r['h2spg']['accuracy']:.3f}, baseline "
                          f"{r['baseline']['accuracy']:.3f}", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
    end = paired.stamp()
    body, verdicts = render(runs, args, start, end, time.perf_counter() - t0)
    print(body)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(body + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(dict(
            stamp=start, stamp_end=end, seconds=time.perf_counter() - t0,
            settings=dict(nets=args.nets, targets=args.targets, seeds=args.seeds,
                          epochs=args.epochs, width=args.width),
            runs=runs, verdicts=verdicts), indent=1, default=str))
    return 0


def render(runs: list[dict], args: argparse.Namespace, start: dict, end: dict, seconds: float
           ) -> tuple[str, list[dict]]:
    """The markdown section and the verdicts of ``runs``."""
    rows, lines, verdicts = [], [], []
    for net in args.nets:
        for target in args.targets:
            r, ln, v = rows_for(runs, net, target)
            rows += r
            lines += ln
            verdicts.append(v)
    body = "\n".join([
        paired.stamp_line(start, end), "",
        f"load_digits (fixed split), {args.epochs} epochs, seeds 0-{args.seeds - 1} (paired: "
        f"same initialisation and batch order), width {args.width}; total "
        f"{seconds:.0f} s. Shares are of the full super-network; wall: median "
        "over seeds of the run's wall time over the full run's (analysis and shrink included). "
        "The baseline erases as many structures as H2SPG, which need not be as many FLOPs.",
        "", "| net | target | method | erased / erasable | test accuracy | FLOPs | params | wall |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        "Verdicts (paired by seed, difference in accuracy points, mean ± SE; 'beats'/'loses' "
        "only beyond twice the SE; 'within 2 points' only when the mean minus twice the SE "
        "is above -2 points):", "", *lines])
    return body, verdicts


if __name__ == "__main__":
    sys.exit(main())
