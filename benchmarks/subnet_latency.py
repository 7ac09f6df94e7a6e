"""Subnet latency: how much of the FLOPs saving a shrunk model turns into speed, eager and compiled.

For resnet50 and vit_b_16 (random weights) with 50% of every prunable group's channels zeroed
(``otofx.testing.zero_groups``, the stand-in for training), this times on the CPU, as medians of
interleaved repeats (eval mode, no_grad, ``--batch`` images):

- eager full: the model with its zeroed weights, as it is;
- eager subnet: ``otofx.shrink`` of its graph;
- inductor full: ``torch.compile(model)``;
- inductor via otofx: ``torch.compile(model, backend="otofx")``, which shrinks the graph dynamo
  captures and hands the smaller one to inductor;

and prints each latency ratio (variant / its full counterpart) beside the FLOPs ratio
(``otofx.flops.count_flops``, subnet / full), the limit a latency ratio should approach. Target:
on the CPU, resnet50's latency ratio within 1.3x of its FLOPs ratio. Compile times (first call)
and the largest output difference from eager full are reported too.

Run from the repository root: ``python -m benchmarks.subnet_latency [--quick] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")   # a shared 2-core machine

import torch
import torchvision
from torch import nn

import otofx
from benchmarks.analysis_speed import Budget, Step, Timings, begin, fmt, machine_line, markdown_table, measure, publish
from otofx.flops import count_flops
from otofx.testing import zero_groups

FRACTION = 0.5
TARGET = 1.3           # latency ratio <= TARGET * FLOPs ratio (resnet50, CPU)
VARIANTS = ("eager full", "eager subnet", "inductor full", "inductor via otofx")


@dataclass(frozen=True)
class Spec:
    name: str
    build: Callable[[int], nn.Module]
    size: int


def specs(args: argparse.Namespace) -> list[Spec]:
    found = [Spec("resnet50", lambda s: torchvision.models.resnet50(), args.size),
             Spec("vit_b_16", lambda s: torchvision.models.vit_b_16(image_size=s), args.vit_size)]
    wanted = args.models.split(",") if args.models else ["resnet50"] if args.quick else None
    return [s for s in found if wanted is None or s.name in wanted]


@dataclass
class Case:
    """One model with its zeroed weights, its subnet, and the compiled variants."""

    name: str
    x: torch.Tensor
    runners: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)
    compile_s: dict[str, float] = field(default_factory=dict)
    max_diff: dict[str, float] = field(default_factory=dict)
    flops_ratio: float = 0.0
    params_ratio: float = 0.0
    removed: int = 0


class _RemovedCounter(logging.Handler):
    """Reads the backend's "removed N channels" log line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.removed = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("otofx backend: removed"):
            self.removed += int(record.args[0])


def prepare(spec: Spec, batch: int) -> Case:
    """Zero half of every prunable group, shrink, compile both ways (first calls timed)."""
    model = spec.build(spec.size).eval()
    with torch.no_grad():   # torchvision zero-initialises vit's head: every output would be 0
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    x = torch.randn(batch, 3, spec.size, spec.size)
    gm = otofx.trace(model, (x,))
    analysis = otofx.analyze(gm, (x,))
    zero_groups(gm, analysis, FRACTION, seed=0)
    model.load_state_dict(gm.state_dict())
    subnet = otofx.shrink(gm, analysis).eval()
    case = Case(spec.name, x)
    case.flops_ratio = count_flops(subnet, (x,)) / count_flops(model, (x,))
    case.params_ratio = sum(p.numel() for p in subnet.parameters()) / sum(
        p.numel() for p in model.parameters())
    compiled = {"inductor full": torch.compile(model),
                "inductor via otofx": torch.compile(model, backend="otofx")}
    counter = _RemovedCounter()
    logging.getLogger("otofx.backend").addHandler(counter)
    logging.getLogger("otofx.backend").setLevel(logging.INFO)
    with torch.no_grad():
        reference = model(x)
        case.runners = {"eager full": lambda: model(x), "eager subnet": lambda: subnet(x)}
        for name, fn in compiled.items():
            start = time.perf_counter()
            fn(x)
            case.compile_s[name] = time.perf_counter() - start
            case.runners[name] = (lambda f: lambda: f(x))(fn)
        for name, run in case.runners.items():
            case.max_diff[name] = (run() - reference).abs().max().item()
    logging.getLogger("otofx.backend").removeHandler(counter)
    case.removed = counter.removed
    return case


def run_case(case: Case, budget: Budget) -> Timings:
    def step(name: str) -> Step:
        def run(_: object) -> None:
            with torch.no_grad():
                case.runners[name]()
        return Step(name, run)

    timings = Timings()
    measure([step(v) for v in VARIANTS], budget, timings)
    return timings


HEADERS = ["model", "variant", "ms", "latency ratio", "FLOPs ratio", "latency / FLOPs ratio",
           "compile s", "max |diff|", "n"]


def rows(case: Case, timings: Timings) -> list[list[str]]:
    med = timings.median_ms
    out = []
    for variant in VARIANTS:
        if variant in timings.errors:
            out.append([case.name, variant, f"failed: {timings.errors[variant]}"] + [""] * 6)
            continue
        full = "eager full" if variant.startswith("eager") else "inductor full"
        ratio = None if variant == full or not med(full) else med(variant) / med(full)
        flops = None if variant == full else case.flops_ratio
        out.append([case.name, variant, fmt(med(variant)), fmt(ratio, 2), fmt(flops, 2),
                    fmt(None if ratio is None else ratio / case.flops_ratio, 2),
                    fmt(case.compile_s.get(variant)), f"{case.max_diff[variant]:.1e}",
                    str(len(timings.seconds.get(variant, [])))])
    return out


def targets(results: list[tuple[Case, Timings]]) -> list[str]:
    lines = ["Targets (measured, not asserted):"]
    for case, timings in results:
        med = timings.median_ms
        lines.append(f"- {case.name}: FLOPs ratio {case.flops_ratio:.2f}, params ratio "
                     f"{case.params_ratio:.2f}; backend=\"otofx\" removed {case.removed} channels")
        for variant, full in (("eager subnet", "eager full"), ("inductor via otofx", "inductor full")):
            if not (med(variant) and med(full)):
                continue
            ratio = med(variant) / med(full)
            line = f"  - {variant}: latency ratio {ratio:.2f} = {ratio / case.flops_ratio:.2f}x the FLOPs ratio"
            if case.name == "resnet50":
                verdict = "meets" if ratio <= TARGET * case.flops_ratio else "misses"
                line += f" ({verdict} <= {TARGET}x)"
            lines.append(line)
    return lines


def header_line(args: argparse.Namespace) -> str:
    return (f"{machine_line(args)}; resnet50 at {args.size}x{args.size}, vit_b_16 at "
            f"{args.vit_size}x{args.vit_size}; {int(FRACTION * 100)}% of each prunable group zeroed")


NOTES = """Notes: latency ratio = variant / its full counterpart (eager subnet / eager full, \
inductor via otofx / inductor full); FLOPs ratio = subnet / full FLOPs \
(torch.utils.flop_counter); the latency ratio approaches it when the saved work was the cost. \
compile s = the first call (dynamo + otofx analysis and shrink + inductor; shorter when inductor's \
on-disk cache holds the graph from an earlier run). max |diff| = largest \
output difference from eager full on the same input. Medians of n interleaved repeats."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet50 only, fewer repeats")
    parser.add_argument("--models", help="comma-separated subset of resnet50,vit_b_16")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--size", type=int, default=224, help="resnet50 input size (default 224)")
    parser.add_argument("--vit-size", type=int, default=224, help="vit_b_16 input size (default 224)")
    parser.add_argument("--repeats", type=int, default=None, help="most repeats (default 10, --quick 5)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per variant and model (default 10, --quick 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 10)
    args.budget = args.budget or (4.0 if args.quick else 10.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    header = begin(args, header_line)
    results = []
    for spec in specs(args):
        start = time.perf_counter()
        case = prepare(spec, args.batch)
        results.append((case, run_case(case, Budget(args.repeats, args.budget))))
        print(f"  {spec.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    table = markdown_table(HEADERS, [r for case, t in results for r in rows(case, t)])
    return publish(header, table, NOTES, targets(results), args.out)


if __name__ == "__main__":
    sys.exit(main())
