"""Compression quality: test accuracy vs FLOPs kept on load_digits, otofx beside the peers.

One model (``examples/digits_resnet.py``, a narrow ResNet), one data set per task (``digits``:
scikit-learn's load_digits; ``noisy-digits``: the same images shifted by up to a pixel and buried
in Gaussian noise, a harder generated task for when digits saturates), the same total epochs and
the same SGD (lr 0.05, momentum 0.9, batch 64) for every contestant:

- dense: plain SGD, the reference accuracy (FLOPs kept 1.0);
- otofx DHSPG, otofx HESSO (4 periods), and otofx H2SPG where otofx has it (operator erasing:
  its target is the share of erasable structures): ``otofx.compress``; warm-up for the first
  sixth of the steps, pruning over the next third, then the rest; measured on ``job.subnet()``;
- only-train-once HESSO (its package, through ``benchmarks/peers.py``'s torch-compat shims), the
  same schedule, measured on the model its ``construct_subnet`` writes;
- torch-pruning: dense training for half the epochs, ``MagnitudePruner`` (L2 magnitude, the
  classifier left alone) at ``pruning_ratio = target``, then fine-tuning for the other half.

Targets 0.3/0.5/0.7 (otofx and only-train-once: target group sparsity; torch-pruning: per-layer
channel ratio), ``--seeds`` seeds (model init and batch order; the data split is fixed). FLOPs are
counted with one counter (``otofx.flops.count_flops``) on every final model. A peer that is not
installed, or cannot run here, becomes a row saying why.

Run from the repository root: ``python -m benchmarks.compress_quality [--quick] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

import otofx
from benchmarks import peers
from examples.digits_data import TASKS, accuracy, steps_per_epoch, train
from examples.digits_resnet import DigitsResNet
from otofx.flops import count_flops

LR, MOMENTUM = 0.05, 0.9
DENSE = "dense (SGD)"
OTOFX_METHODS = ("otofx DHSPG", "otofx HESSO", "otofx H2SPG")
OTO_NAME, TP_NAME = "only-train-once HESSO", "torch-pruning magnitude"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Run:
    """One trained and compressed model."""

    accuracy: float
    flops: float           # kept, as a share of the dense model's
    params: float          # kept, as a share
    wall: float            # seconds, training + analysis + compression
    cpu: float             # process CPU seconds of the same
    sparsity: str = ""


@dataclass
class Setting:
    task: str
    data: tuple
    epochs: int
    seed: int

    @property
    def steps(self) -> int:
        return self.epochs * steps_per_epoch(self.data[0])

    def model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return DigitsResNet()

    def fit(self, module: nn.Module, optimizer: Any, epochs: int, first: int = 0) -> None:
        for epoch in range(first, first + epochs):
            train(module, optimizer, self.data[0], 1, seed=1000 * self.seed + epoch)


Method = Callable[[Setting, float], tuple[nn.Module, str]]   # -> (final model, sparsity note)


def sgd(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)


def dense(s: Setting, target: float) -> tuple[nn.Module, str]:
    model = s.model()
    s.fit(model, sgd(model), s.epochs)
    return model, ""


def schedule(s: Setting) -> dict:
    return dict(start_pruning_step=s.steps // 6, pruning_steps=max(1, s.steps // 3))


def otofx_method(name: str) -> Method:
    def run(s: Setting, target: float) -> tuple[nn.Module, str]:
        common = dict(lr=LR, momentum=MOMENTUM, **schedule(s))
        if name == "otofx DHSPG":
            config = otofx.DHSPGConfig(target_group_sparsity=target, **common)
        elif name == "otofx HESSO":
            config = otofx.HESSOConfig(target_group_sparsity=target, pruning_periods=4, **common)
        else:
            config = otofx.H2SPGConfig(target_group_sparsity=0.0, target_structure_sparsity=target,
                                       **common)
        job = otofx.compress(s.model(), config, (s.data[0][0][:2],))
        s.fit(job.module, job.optimizer, s.epochs)
        sp = job.optimizer.sparsity_report()
        if "erased_structures" in sp:
            count = lambda v: len(v) if isinstance(v, (list, tuple, set, dict)) else v  # noqa: E731
            note = (f"{count(sp['erased_structures'])}/{count(sp['target_structures'])} of "
                    f"{count(sp['erasable_structures'])} structures")
        else:
            note = f"{sp['zero_channels']}/{sp['target_channels']} of {sp['prunable_channels']}"
        return job.subnet(), note
    return run


def oto_method(oto_cls: Any) -> Method:
    def run(s: Setting, target: float) -> tuple[nn.Module, str]:
        model = s.model()
        graph = peers.oto_graph(oto_cls, model, s.data[0][0][:1])
        with contextlib.redirect_stdout(io.StringIO()):
            optimizer = peers.oto_on_cpu(graph.hesso(
                variant="sgd", lr=LR, first_momentum=MOMENTUM, target_group_sparsity=target,
                pruning_periods=4, **schedule(s)))
        s.fit(model, optimizer, s.epochs)
        note = (f"{optimizer.curr_num_zero_groups}/{optimizer.target_num_redundant_groups} of "
                f"{optimizer.total_num_groups} groups")
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph.construct_subnet(out_dir=out)
            small = torch.load(graph.compressed_model_path, weights_only=False)
        return small, note
    return run


def tp_method(tp: Any) -> Method:
    def run(s: Setting, target: float) -> tuple[nn.Module, str]:
        model = s.model()
        half = s.epochs // 2
        s.fit(model, sgd(model), half)
        model.eval()
        peers.tp_prune(tp, model, s.data[0][0][:1], target)
        s.fit(model, sgd(model), s.epochs - half, first=half)
        return model, f"ratio {target} per layer"
    return run


def methods(include: tuple[str, ...] | None = None) -> tuple[dict[str, Method], dict[str, str]]:
    """The contestants that can run here, and a one-line reason for each that cannot."""
    out: dict[str, Method] = {DENSE: dense}
    skipped: dict[str, str] = {}
    for name in OTOFX_METHODS:
        if name == "otofx H2SPG" and not hasattr(otofx, "H2SPGConfig"):
            skipped[name] = "not in this otofx version"
            continue
        out[name] = otofx_method(name)
    oto_cls, why = peers.load_oto()
    if oto_cls is None:
        skipped[OTO_NAME] = f"not available: {why}"
    else:
        out[OTO_NAME] = oto_method(oto_cls)
    tp, why = peers.load_torch_pruning()
    if tp is None:
        skipped[TP_NAME] = f"not available: {why}"
    else:
        out[TP_NAME] = tp_method(tp)
    if include is not None:
        out = {k: v for k, v in out.items() if k == DENSE or k in include}
        skipped = {k: v for k, v in skipped.items() if k in include}
    return out, skipped


# ---- running --------------------------------------------------------------------------------

@dataclass
class Results:
    """Runs by (task, method, target); a failure by the same key; dense runs under target 0."""

    runs: dict[tuple[str, str, float], list[Run]] = field(default_factory=dict)
    failures: dict[tuple[str, str, float], str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def measure(method: Method, s: Setting, target: float, base: dict[str, float]) -> Run:
    wall, cpu = time.perf_counter(), time.process_time()
    model, note = method(s, target)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    x = s.data[0][0][:1]
    params = sum(p.numel() for p in model.parameters())
    return Run(accuracy(model, s.data[1]), count_flops(model, (x,)) / base["flops"],
               params / base["params"], wall, cpu, note)


def run_all(args: argparse.Namespace, contestants: dict[str, Method], results: Results) -> None:
    ref = DigitsResNet()
    x = torch.zeros(1, 1, 8, 8)
    base = {"flops": count_flops(ref, (x,)), "params": sum(p.numel() for p in ref.parameters())}
    for task in args.tasks:
        data = TASKS[task]()
        for seed in range(args.seeds):
            s = Setting(task, data, args.epochs, seed)
            for name, method in contestants.items():
                for target in ([0.0] if name == DENSE else args.targets):
                    key = (task, name, target)
                    if key in results.failures:
                        continue
                    start = time.perf_counter()
                    try:
                        run = measure(method, s, target, base)
                    except Exception as exc:  # noqa: BLE001 - a failing contestant is a table cell
                        results.failures[key] = f"failed: {peers.one_line(exc)}"
                        continue
                    results.runs.setdefault(key, []).append(run)
                    print(f"  {task} seed {seed} {name} {target}: acc {run.accuracy:.3f}, FLOPs "
                          f"{run.flops:.3f}, {time.perf_counter() - start:.1f} s", file=sys.stderr,
                          flush=True)


# ---- the report -----------------------------------------------------------------------------

def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values: list[float], digits: int = 3) -> str:
    m, sd = mean_sd(values)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


HEADERS = ["task", "method", "target", "test accuracy", "FLOPs kept", "params kept",
           "zero / target", "n"]


def table_rows(results: Results, tasks: list[str], names: list[str], targets: list[float]
               ) -> list[list[str]]:
    """One row per (task, method, target) measured or failed, one per skipped method."""
    rows = []
    for task in tasks:
        for name in names:
            for target in ([0.0] if name == DENSE else targets):
                key = (task, name, target)
                target_cell = "—" if name == DENSE else f"{target:g}"
                if key in results.failures:
                    rows.append([task, name, target_cell, results.failures[key], "", "", "", "0"])
                elif key in results.runs:
                    runs = results.runs[key]
                    rows.append([task, name, target_cell, pm([r.accuracy for r in runs]),
                                 pm([r.flops for r in runs]), pm([r.params for r in runs]),
                                 runs[-1].sparsity or "—", str(len(runs))])
        for name, why in results.skipped.items():
            rows.append([task, name, "all", f"skipped: {why}", "", "", "", "0"])
    return rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def frontier(results: Results, task: str, name: str) -> list[tuple[float, float, float]]:
    """(FLOPs kept, mean accuracy, accuracy sd) of ``name``'s targets plus the dense point."""
    points = []
    dense_runs = results.runs.get((task, DENSE, 0.0))
    if dense_runs:
        points.append((1.0, *mean_sd([r.accuracy for r in dense_runs])))
    for (t, n, _), runs in results.runs.items():
        if t == task and n == name:
            points.append((statistics.fmean(r.flops for r in runs),
                           *mean_sd([r.accuracy for r in runs])))
    return sorted(points)


def interpolate(points: list[tuple[float, float, float]], f: float) -> tuple[float, float] | None:
    """Accuracy (and sd) of a frontier at FLOPs ``f`` by linear interpolation; None outside."""
    for (f0, a0, s0), (f1, a1, s1) in zip(points, points[1:]):
        if f0 <= f <= f1:
            w = 0.0 if f1 == f0 else (f - f0) / (f1 - f0)
            return a0 + w * (a1 - a0), s0 + w * (s1 - s0)
    return None


def versus(results: Results, task: str, name: str, target: float, peer: str
           ) -> tuple[float, str]:
    """(accuracy difference, cell): ``name`` at ``target`` against ``peer``'s frontier at the
    same FLOPs; the difference is -inf where they cannot be compared at equal FLOPs."""
    runs = results.runs[(task, name, target)]
    acc, sd = mean_sd([r.accuracy for r in runs])
    f = statistics.fmean(r.flops for r in runs)
    points = frontier(results, task, peer)
    at = interpolate(points, f)
    if at is None:
        lowest = points[0]
        if acc >= lowest[1]:
            return 0.0, (f"beats: fewer FLOPs than its smallest ({lowest[0]:.3f}) and accuracy "
                         f"{acc - lowest[1]:+.3f}")
        return float("-inf"), f"not comparable: its smallest model keeps {lowest[0]:.3f} of the FLOPs"
    delta = acc - at[0]
    word = "beats" if delta > 0 else "matches" if -delta <= max(sd, at[1]) else "LOSES"
    return (delta if word != "LOSES" else delta - 1.0), f"{word} ({delta:+.3f} vs {at[0]:.3f})"


def comparison(results: Results, tasks: list[str], targets: list[float]) -> tuple[str, list[str]]:
    """A table of every otofx method against each peer at equal FLOPs, and one verdict line per
    task and target for otofx's best method there (the one whose worst comparison is best)."""
    peer_names = [n for n in (OTO_NAME, TP_NAME) if any(k[1] == n for k in results.runs)]
    rows, lines = [], []
    for task in tasks:
        for target in targets:
            scored = []
            for name in OTOFX_METHODS:
                if (task, name, target) not in results.runs:
                    continue
                runs = results.runs[(task, name, target)]
                cells = [versus(results, task, name, target, peer) for peer in peer_names]
                rows.append([task, f"{target:g}", name, f"{statistics.fmean(r.flops for r in runs):.3f}",
                             pm([r.accuracy for r in runs])] + [c[1] for c in cells])
                scored.append((min((c[0] for c in cells), default=0.0), name, cells))
            if not scored:
                lines.append(f"- {task}, target {target:g}: no otofx result")
                continue
            if not peer_names:
                lines.append(f"- {task}, target {target:g}: no peer result to compare with")
                continue
            score, name, cells = max(scored, key=lambda t: t[0])
            ok = score > float("-inf") and all("LOSES" not in c[1] for c in cells)
            lines.append(f"- {task}, target {target:g}: best otofx is {name}: "
                         + ("matches or beats every peer at equal FLOPs" if ok else "does NOT match "
                            "every peer at equal FLOPs") + "; " + "; ".join(
                                f"{peer}: {c[1]}" for peer, c in zip(peer_names, cells)))
    headers = ["task", "target", "otofx method", "FLOPs kept", "test accuracy"] + [
        f"vs {peer} at equal FLOPs" for peer in peer_names]
    return markdown_table(headers, rows), lines


def wall_time_lines(results: Results, tasks: list[str]) -> list[str]:
    """Median over runs of otofx's whole run (analysis + training + shrink) / dense training."""
    lines = []
    for name in OTOFX_METHODS:
        wall, cpu = [], []
        for task in tasks:
            dense_runs = results.runs.get((task, DENSE, 0.0), [])
            if not dense_runs:
                continue
            d_wall = statistics.median(r.wall for r in dense_runs)
            d_cpu = statistics.median(r.cpu for r in dense_runs)
            for (t, n, _), runs in results.runs.items():
                if t == task and n == name:
                    wall += [r.wall / d_wall for r in runs]
                    cpu += [r.cpu / d_cpu for r in runs]
        if wall:
            verdict = "meets" if statistics.median(wall) <= 1.1 else "MISSES"
            lines.append(f"- {name}: whole compress run / dense training of the same length: wall "
                         f"{statistics.median(wall):.2f}x (median of {len(wall)}, range "
                         f"{min(wall):.2f}-{max(wall):.2f}), CPU time {statistics.median(cpu):.2f}x: "
                         f"{verdict} the 1.1x target")
    return lines


def plot(results: Results, tasks: list[str], names: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.6), squeeze=False)
    markers = dict(zip(names, "*osD^vx"))
    for ax, task in zip(axes[0], tasks):
        for name in names:
            if name == DENSE:
                pts = frontier(results, task, "__none__")
                if pts:
                    ax.errorbar([1.0], [pts[0][1]], yerr=[pts[0][2]], fmt="k*", ms=12, label=DENSE)
                continue
            pts = frontier(results, task, name)
            if len(pts) < 2 and results.runs.get((task, DENSE, 0.0)):
                continue
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker=markers.get(name, "o"), capsize=3, label=name)
        ax.set(xlabel="FLOPs kept (share of the dense model)", ylabel="test accuracy",
               title=f"{task}: accuracy vs FLOPs (mean ± sd over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_line(args: argparse.Namespace) -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"load average {load}; torch {torch.__version__}, torch threads "
            f"{torch.get_num_threads()}; Python {platform.python_version()}; tasks "
            f"{', '.join(args.tasks)}; {args.epochs} epochs, seeds {args.seeds}, targets "
            f"{', '.join(f'{t:g}' for t in args.targets)}")


def report(results: Results, args: argparse.Namespace, names: list[str], plot_path: Path) -> str:
    table = markdown_table(HEADERS, table_rows(results, args.tasks, names, args.targets))
    rel = os.path.relpath(plot_path, args.out.parent) if args.out else str(plot_path)
    versus_table, verdict_lines = comparison(results, args.tasks, args.targets)
    return "\n\n".join([
        table,
        "Accuracy: top-1 on the fixed test split (397 images) of the final (compressed) model; "
        "FLOPs / params kept: of the final model vs the dense one (one counter for all); mean ± "
        "sample standard deviation over seeds.",
        "Against the peers at equal FLOPs: each peer's accuracy at the otofx model's FLOPs is "
        "interpolated linearly on the peer's frontier (its three targets, the dense model being "
        "its 1.0 point); 'matches' means within one standard deviation; the cell shows otofx's "
        "accuracy minus the peer's.\n\n" + versus_table + "\n\n" + "\n".join(verdict_lines),
        "Wall time (target: at most 1.1x):\n" + "\n".join(wall_time_lines(results, args.tasks)),
        f"![accuracy vs FLOPs]({rel})",
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 6 epochs")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"of {', '.join(TASKS)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 3, --quick 2)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 12, --quick 6)")
    parser.add_argument("--targets", default="0.3,0.5,0.7")
    parser.add_argument("--methods", default=None,
                        help="comma-separated contestants (default: all); dense always runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="where the figure goes (default: next to --out, as .png; without "
                             "--out benchmarks/results/compress_quality.png)")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    args.tasks = args.tasks.split(",")
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}: choose from {list(TASKS)}")
    args.targets = [float(t) for t in args.targets.split(",")]
    args.seeds = args.seeds or (2 if args.quick else 3)
    args.epochs = args.epochs or (6 if args.quick else 12)
    if args.plot is None:
        args.plot = args.out.with_suffix(".png") if args.out else RESULTS / "compress_quality.png"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    header = machine_line(args)
    print(header, flush=True)
    include = tuple(args.methods.split(",")) if args.methods else None
    contestants, skipped = methods(include)
    results = Results(skipped=skipped)
    start = time.perf_counter()
    run_all(args, contestants, results)
    names = list(contestants) + [n for n in skipped if n not in contestants]
    plot(results, args.tasks, list(contestants), args.plot)
    body = report(results, args, names, args.plot)
    body += f"\n\nTotal benchmark time {time.perf_counter() - start:.0f} s."
    print("\n" + body)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"{header}\n\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
