"""Analysis speed: how long otofx takes to analyse and shrink a model, next to one forward pass.

For each model (torchvision resnet18, resnet50, vit_b_16 at 224x224, and a deep synthetic
CIFAR-style ResNet of about 500 and 2000 fx graph nodes at 32x32) this measures, as medians of
interleaved repeats on the CPU:

- one forward pass (eval mode, no_grad, ``--batch`` images);
- ``otofx.analyze(gm, (x,))``;
- ``otofx.shrink(gm, analysis)`` after ``zero_groups(gm, analysis, 0.3)`` (it includes its own
  verification forward), and ``otofx.shrink(..., verify=False)``;
- (analysis + shrink) / forward, and (analysis + shrink) in ms per fx graph node (linear scaling
  means the same ms per node at 500 and 2000 nodes);
- the peers where installed: torch-pruning 1.6.1's ``DependencyGraph().build_dependency`` and its
  full 30% magnitude prune (pruner construction + ``step()``), and only-train-once 3.0.1's graph
  construction ``OTO(model, dummy_input)``.

Run from the repository root: ``python -m benchmarks.analysis_speed [--quick] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import platform
import statistics
import sys
import time
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
from benchmarks.models import DeepResNet, ModelSpec, model_specs
from otofx.testing import zero_groups

PRUNE_FRACTION = 0.3
OTOFX, TP, OTO = "otofx", "torch-pruning", "only-train-once"
MAX_FORWARDS = 3.0  # target: analysis + shrink within 3 forward passes
LINEAR_EXPONENT = 1.15  # time ~ nodes^k counts as linear up to this k (noise margin)


# ---- timing ---------------------------------------------------------------------------------

@dataclass
class Step:
    """One timed operation: ``setup()`` (untimed) returns the argument ``run`` is timed on."""

    name: str
    run: Callable[[Any], Any]
    setup: Callable[[], Any] = lambda: None


@dataclass
class Timings:
    """Seconds per step name, or the one-line reason a step failed (it is then not retried)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def median_ms(self, name: str) -> float | None:
        values = self.seconds.get(name)
        return 1e3 * statistics.median(values) if values else None


def one_line(exc: BaseException) -> str:
    """``exc`` as a short single line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:100]


def time_once(step: Step) -> float:
    """Seconds ``step.run`` takes, garbage collection off while it runs."""
    arg = step.setup()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        step.run(arg)
        return time.perf_counter() - start
    finally:
        gc.enable()


def measure(steps: list[Step], repeats: int, timings: Timings) -> None:
    """Time every step ``repeats`` times, interleaved round by round so noise hits all alike."""
    for _ in range(repeats):
        for step in steps:
            if step.name in timings.errors:
                continue
            try:
                timings.seconds.setdefault(step.name, []).append(time_once(step))
            except Exception as exc:  # noqa: BLE001 - a failing tool is a table row, not a crash
                timings.errors[step.name] = one_line(exc)


# ---- what is measured -----------------------------------------------------------------------

@dataclass
class Case:
    """A model under test: the eager model, its input, fx graph and otofx preparation."""

    name: str
    model: nn.Module
    x: torch.Tensor
    nodes: int
    gm: Any = None
    analysis: Any = None
    params_left: dict[str, float] = field(default_factory=dict)
    forward_ms: float | None = None


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prepare_otofx(case: Case) -> None:
    """Trace, analyse, zero 30% of each prunable group and shrink once (untimed warm-up)."""
    case.gm = otofx.trace(case.model)
    case.analysis = otofx.analyze(case.gm, (case.x,))
    zero_groups(case.gm, case.analysis, PRUNE_FRACTION, seed=0)
    small = otofx.shrink(case.gm, case.analysis)
    case.params_left[OTOFX] = n_params(small) / n_params(case.gm)


def forward_step(case: Case) -> Step:
    def run(_: Any) -> None:
        with torch.no_grad():
            case.model(case.x)
    return Step("forward", run)


def otofx_steps(case: Case) -> list[Step]:
    return [Step(f"{OTOFX}.analyze", lambda _: otofx.analyze(case.gm, (case.x,))),
            Step(f"{OTOFX}.shrink", lambda _: otofx.shrink(case.gm, case.analysis)),
            Step(f"{OTOFX}.shrink_noverify",
                 lambda _: otofx.shrink(case.gm, case.analysis, verify=False))]


def tp_steps(case: Case, tp: Any) -> list[Step]:
    fresh = lambda: copy.deepcopy(case.model)  # noqa: E731 - both steps mutate their model

    def prune(model: nn.Module) -> None:
        before = n_params(model)
        peers.tp_prune(tp, model, case.x, PRUNE_FRACTION)
        case.params_left[TP] = n_params(model) / before

    return [Step(f"{TP}.depgraph", lambda m: peers.tp_dependency_graph(tp, m, case.x), fresh),
            Step(f"{TP}.prune", prune, fresh)]


def oto_steps(case: Case, oto_cls: Any) -> list[Step]:
    return [Step(f"{OTO}.graph", lambda m: peers.oto_graph(oto_cls, m, case.x),
                 lambda: copy.deepcopy(case.model))]


@dataclass
class Tools:
    """The peers' entry points, or why each is not available."""

    tp: Any
    tp_reason: str
    oto: Any
    oto_reason: str

    @classmethod
    def load(cls) -> Tools:
        tp, tp_reason = peers.load_torch_pruning()
        oto, oto_reason = peers.load_oto()
        return cls(tp, tp_reason, oto, oto_reason)


def build_case(name: str, model: nn.Module, image_size: int, batch: int) -> Case:
    model.eval()
    x = torch.randn(batch, 3, image_size, image_size)
    nodes = len(torch.fx.symbolic_trace(model).graph.nodes)
    return Case(name, model, x, nodes)


def run_case(case: Case, tools: Tools, repeats: int) -> Timings:
    """All steps for one model, interleaved; otofx preparation failures become errors."""
    timings = Timings()
    steps = [forward_step(case)]
    try:
        prepare_otofx(case)
        steps += otofx_steps(case)
    except Exception as exc:  # noqa: BLE001
        timings.errors[OTOFX] = one_line(exc)
    if tools.tp is not None:
        steps += tp_steps(case, tools.tp)
    if tools.oto is not None:
        steps += oto_steps(case, tools.oto)
    measure(steps, repeats, timings)
    case.forward_ms = timings.median_ms("forward")
    return timings


def warm_up(tools: Tools, batch: int) -> None:
    """Pay one-time costs (imports, lazy initialisation) on a tiny model before timing."""
    run_case(build_case("warm-up", DeepResNet(1), 32, batch), tools, repeats=1)


# ---- the report -----------------------------------------------------------------------------

HEADERS = ["model", "nodes", "package", "forward ms", "analysis ms", "shrink / prune ms",
           "shrink no-verify ms", "total ms", "total / forward", "total ms / node",
           "params left"]


@dataclass
class Row:
    """One (model, package) line of the table; ``total_ms`` is None when the package failed."""

    case: Case
    package: str
    cells: list[str]
    total_ms: float | None = None


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def failed(timings: Timings, *names: str) -> str | None:
    for name in names:
        if name in timings.errors:
            return timings.errors[name]
    return None


def row(case: Case, timings: Timings, package: str, analysis: str, prune: str | None,
        noverify: str | None, total: list[str]) -> Row:
    """Table row for ``package``; ``total`` lists the step names whose medians add up."""
    forward = case.forward_ms
    head = [case.name, str(case.nodes), package]
    error = failed(timings, package, analysis, *(n for n in (prune, noverify) if n))
    if error is not None:
        return Row(case, package, head + [f"failed: {error}"] + [""] * (len(HEADERS) - 4))
    parts = [timings.median_ms(n) for n in total]
    total_ms = None if None in parts else sum(parts)
    ratio = None if total_ms is None or not forward else total_ms / forward
    per_node = None if total_ms is None else total_ms / case.nodes
    left = case.params_left.get(package)
    cells = [fmt(forward), fmt(timings.median_ms(analysis)),
             fmt(timings.median_ms(prune)) if prune else "—",
             fmt(timings.median_ms(noverify)) if noverify else "—",
             fmt(total_ms), fmt(ratio, 2) + "x", fmt(per_node, 3),
             "—" if left is None else f"{100 * left:.0f}%"]
    return Row(case, package, head + cells, total_ms)


def unavailable(case: Case, package: str, reason: str) -> Row:
    return Row(case, package, [case.name, str(case.nodes), package,
                               f"not available: {reason}"] + [""] * (len(HEADERS) - 4))


def rows_for(case: Case, timings: Timings, tools: Tools) -> list[Row]:
    rows = [row(case, timings, OTOFX, f"{OTOFX}.analyze", f"{OTOFX}.shrink",
                f"{OTOFX}.shrink_noverify", [f"{OTOFX}.analyze", f"{OTOFX}.shrink"])]
    rows.append(row(case, timings, TP, f"{TP}.depgraph", f"{TP}.prune", None, [f"{TP}.prune"])
                if tools.tp is not None else unavailable(case, TP, tools.tp_reason))
    rows.append(row(case, timings, OTO, f"{OTO}.graph", None, None, [f"{OTO}.graph"])
                if tools.oto is not None else unavailable(case, OTO, tools.oto_reason))
    return rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def find(rows: list[Row], model: str, package: str) -> Row | None:
    return next((r for r in rows if r.case.name == model and r.package == package), None)


def scaling(rows: list[Row], package: str) -> str | None:
    """How ``package``'s total grows from the ~500- to the ~2000-node ResNet, in one line."""
    small, large = find(rows, "deep-resnet-500", package), find(rows, "deep-resnet-2000", package)
    if not (small and large and small.total_ms and large.total_ms):
        return None
    per_node = [r.total_ms / r.case.nodes for r in (small, large)]
    exponent = (math.log(large.total_ms / small.total_ms)
                / math.log(large.case.nodes / small.case.nodes))
    verdict = "linear" if exponent <= LINEAR_EXPONENT else "super-linear"
    return (f"- scaling, {package}: {per_node[0]:.3f} ms/node at {small.case.nodes} nodes, "
            f"{per_node[1]:.3f} at {large.case.nodes} ({per_node[1] / per_node[0]:.2f}x); "
            f"time ~ nodes^{exponent:.2f} ({verdict})")


def targets(rows: list[Row]) -> list[str]:
    """The issue's targets, each reported as measured."""
    lines = ["Targets (measured, not asserted):"]
    lines += [line for p in (OTOFX, TP) if (line := scaling(rows, p))]
    for r in rows:
        forward = r.case.forward_ms
        if r.package == OTOFX and r.total_ms is not None and forward:
            ratio = r.total_ms / forward
            verdict = "meets" if ratio <= MAX_FORWARDS else "misses"
            lines.append(f"- {r.case.name}: otofx analysis+shrink = {ratio:.2f}x forward "
                         f"({verdict} <= {MAX_FORWARDS}x)")
    ours, theirs = find(rows, "deep-resnet-2000", OTOFX), find(rows, "deep-resnet-2000", TP)
    if ours and theirs and ours.total_ms and theirs.total_ms:
        verdict = "faster" if ours.total_ms < theirs.total_ms else "slower"
        lines.append(f"- deep-resnet-2000: otofx {ours.total_ms:.0f} ms vs torch-pruning full "
                     f"prune {theirs.total_ms:.0f} ms (otofx {verdict}; torch-pruning / otofx = "
                     f"{theirs.total_ms / ours.total_ms:.2f})")
    return lines


NOTES = """Notes: medians of {repeats} interleaved repeats. otofx total = analyze + shrink (shrink \
includes its verification forward; zero_groups 30% beforehand, untimed; otofx.trace not \
included). torch-pruning total = full prune (MagnitudePruner construction, which builds its \
DependencyGraph, + step()); its analysis column is DependencyGraph().build_dependency alone. \
only-train-once total = OTO(model, dummy_input) graph construction only. params left = \
parameters after / before."""


def machine_line(args: argparse.Namespace) -> str:
    return (f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}; batch {args.batch}, repeats {args.repeats}")


# ---- command line ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats; skip vit_b_16 and the 2000-node ResNet")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per step (default 5, --quick 2)")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    header = machine_line(args)
    print(header, flush=True)
    tools = Tools.load()
    warm_up(tools, args.batch)
    rows: list[Row] = []
    for spec in model_specs(args.quick):
        rows += bench_model(spec, tools, args)
    report = "\n\n".join([header, markdown_table(HEADERS, [r.cells for r in rows]),
                          NOTES.format(repeats=args.repeats), "\n".join(targets(rows))])
    print("\n" + report.split("\n\n", 1)[1])
    if args.out:
        args.out.write_text(report + "\n")
    return 0


def bench_model(spec: ModelSpec, tools: Tools, args: argparse.Namespace) -> list[Row]:
    start = time.perf_counter()
    case = build_case(spec.name, spec.build(), spec.image_size, args.batch)
    timings = run_case(case, tools, args.repeats)
    print(f"  {spec.name}: {case.nodes} nodes, {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    return rows_for(case, timings, tools)


if __name__ == "__main__":
    sys.exit(main())
