"""Subnet latency: how much of the FLOPs saving a shrunk model turns into speed, eager and compiled.

For resnet50, vit_b_16 and a YOLO detector (ultralytics' ``yolov8n.yaml``, built without weights;
traced by ``otofx.integrations.ultralytics.trace_yolo``, its Detect head an opaque leaf), random
weights, with 50% of every prunable group's channels zeroed (``otofx.testing.zero_groups``, the
stand-in for training), this times on the CPU, as medians of interleaved repeats (eval mode,
no_grad, ``--batch`` images, ``--threads`` threads, default one):

- eager full: the model with its zeroed weights, as it is;
- eager subnet: ``otofx.shrink`` of its graph;
- inductor full: ``torch.compile(model)``;
- inductor via otofx: ``torch.compile(model, backend="otofx")``, which shrinks the graph dynamo
  captures and hands the smaller one to inductor;

and prints each latency ratio (variant / its full counterpart) beside the FLOPs ratio
(``otofx.flops.count_flops``, subnet / full), the limit a latency ratio should approach. Target
(issue 17): the subnet's latency ratio / FLOPs ratio <= 1.3 under inductor, per model, printed as a
measured verdict. Compile times (first call) and the largest output difference from eager full
are reported too.

Latency budget (issue 16), resnet50 and vit_b_16: ``target_latency=0.5`` picks the channels
(random scores, ``uniform`` allocation, as ``otofx.budget`` does for DHSPG) from the model's
latency table (``otofx.latency``, measured fresh here, eager, on this CPU and thread count,
and its aim corrected by end-to-end checks of the subnet, eager: ``otofx.budget.calibrate_latency``);
those are zeroed and shrunk, and the subnet is timed eager and under inductor beside the full
model ("eager latency-0.5" / "inductor latency-0.5"). The verdict: its measured latency ratio
within 10% of 0.5 (0.45-0.55), eager and inductor.

Run from the repository root: ``python -m benchmarks.subnet_latency [--quick] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
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
from otofx.budget import budget_for, pick_for_budget, zero_chosen
from otofx.config import DHSPGConfig
from otofx.flops import count_flops
from otofx.grouped import GroupedViews
from otofx.testing import zero_groups

FRACTION = 0.5
TARGET = 1.3           # subnet latency ratio <= TARGET * FLOPs ratio under inductor (issue 17)
LATENCY = 0.5          # target_latency asked (issue 16) ...
LATENCY_TOLERANCE = 0.1    # ... and the measured ratio within 10% of it
LATENCY_MODELS = ("resnet50", "vit_b_16")
VARIANTS = ("eager full", "eager subnet", "inductor full", "inductor via otofx")
BUDGET_VARIANTS = ("eager latency-0.5", "inductor latency-0.5")


def _yolo(size: int) -> nn.Module:
    os.environ.setdefault("YOLO_OFFLINE", "1")          # no network checks, settings kept out
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="otofx-ultralytics-"))
    from ultralytics import YOLO
    return YOLO("yolov8n.yaml").model


def _trace(name: str, model: nn.Module, x: torch.Tensor):
    if name == "yolov8n":
        from otofx.integrations.ultralytics import trace_yolo
        return trace_yolo(model)
    return otofx.trace(model, (x,))


@dataclass(frozen=True)
class Spec:
    name: str
    build: Callable[[int], nn.Module]
    size: int


def specs(args: argparse.Namespace) -> list[Spec]:
    found = [Spec("resnet50", lambda s: torchvision.models.resnet50(), args.size),
             Spec("vit_b_16", lambda s: torchvision.models.vit_b_16(image_size=s), args.vit_size),
             Spec("yolov8n", _yolo, args.yolo_size)]
    wanted = args.models.split(",") if args.models else ["resnet50"] if args.quick else None
    return [s for s in found if wanted is None or s.name in wanted]


def _max_diff(a, b) -> float:
    flat_a, flat_b = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    return max((float((u - v).abs().max()) for u, v in zip(flat_a, flat_b)
                if isinstance(u, torch.Tensor)), default=0.0)


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
    variants: tuple[str, ...] = VARIANTS
    budget: dict = field(default_factory=dict)    # the target_latency subnet: asked, predicted...


class _RemovedCounter(logging.Handler):
    """Reads the backend's "removed N channels" log line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.removed = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("otofx backend: removed"):
            self.removed += int(record.args[0])


def prepare(spec: Spec, batch: int) -> Case:
    """Zero half of every prunable group, shrink, compile both ways (first calls timed); for
    ``LATENCY_MODELS`` also the subnet of ``target_latency=LATENCY`` (:func:`latency_subnet`)."""
    model = spec.build(spec.size).eval()
    with torch.no_grad():   # torchvision zero-initialises vit's head: every output would be 0
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    x = torch.randn(batch, 3, spec.size, spec.size)
    case = Case(spec.name, x)
    subnets = {}
    if spec.name in LATENCY_MODELS:
        subnets["latency-0.5"] = latency_subnet(spec.name, copy.deepcopy(model), x, case)
        case.variants = VARIANTS + BUDGET_VARIANTS
    gm = _trace(spec.name, model, x)
    analysis = otofx.analyze(gm, (x,))
    zero_groups(gm, analysis, FRACTION, seed=0)
    if spec.name != "yolov8n":     # trace_yolo does not copy: its graph holds the model's own
        model.load_state_dict(gm.state_dict())
    subnet = otofx.shrink(gm, analysis).eval()
    case.flops_ratio = count_flops(subnet, (x,)) / count_flops(model, (x,))
    case.params_ratio = sum(p.numel() for p in subnet.parameters()) / sum(
        p.numel() for p in model.parameters())
    compiled = {"inductor full": torch.compile(model),
                "inductor via otofx": torch.compile(model, backend="otofx")}
    compiled.update({f"inductor {k}": torch.compile(m) for k, m in subnets.items()})
    counter = _RemovedCounter()
    logging.getLogger("otofx.backend").addHandler(counter)
    logging.getLogger("otofx.backend").setLevel(logging.INFO)
    with torch.no_grad():
        reference = model(x)
        case.runners = {"eager full": lambda: model(x), "eager subnet": lambda: subnet(x)}
        case.runners.update({f"eager {k}": _caller(m, x) for k, m in subnets.items()})
        for name, fn in compiled.items():
            start = time.perf_counter()
            try:
                fn(x)
            except Exception as exc:             # reported in the table, the rest still runs
                case.max_diff[name] = float("nan")
                case.compile_s[name] = float("nan")
                case.runners[name] = (lambda e: lambda: (_ for _ in ()).throw(e))(exc)
                continue
            case.compile_s[name] = time.perf_counter() - start
            case.runners[name] = _caller(fn, x)
        for name, run in case.runners.items():
            if name not in case.max_diff and "latency" not in name:
                case.max_diff[name] = _max_diff(run(), reference)
    logging.getLogger("otofx.backend").removeHandler(counter)
    case.removed = counter.removed
    return case


def _caller(fn: Callable, x: torch.Tensor) -> Callable[[], object]:
    return lambda: fn(x)


def latency_subnet(name: str, model: nn.Module, x: torch.Tensor, case: Case) -> nn.Module:
    """The subnet ``target_latency=LATENCY`` picks: the latency table measured (fresh cache),
    channels chosen by random scores within the ``uniform`` allocation until the table predicts
    the budget, zeroed and shrunk. Fills ``case.budget``."""
    gm = _trace(name, model, x)
    analysis = otofx.analyze(gm, (x,))
    views = GroupedViews(gm, analysis.prunable)
    config = DHSPGConfig(target_latency=LATENCY)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["OTOFX_CACHE_DIR"] = cache
        try:
            budget = budget_for(config, analysis, views)
        finally:
            del os.environ["OTOFX_CACHE_DIR"]
    table_s = time.perf_counter() - start
    score = torch.rand(views.num_channels, generator=torch.Generator().manual_seed(0))
    chosen = pick_for_budget(score, views.group_of, views.sizes, budget.cost, budget.goal(),
                             config.group_divisible, allocation=config.allocation)
    widths = views.sizes - torch.bincount(views.group_of[chosen], minlength=len(views.sizes))
    zero_chosen(gm, views, chosen)
    subnet = otofx.shrink(gm, analysis).eval()
    case.budget = {"asked": LATENCY, "predicted": float(budget.cost(widths)) / budget.dense,
                   "aim": budget.aim, "checks": budget.checks,
                   "table_s": table_s, "dense_s": budget.dense,
                   "flops": count_flops(subnet, (x,)) / analysis.cost.flops.dense,
                   "channels": int(chosen.sum()), "of": views.num_channels}
    return subnet


def run_case(case: Case, budget: Budget) -> Timings:
    def step(name: str) -> Step:
        def run(_: object) -> None:
            with torch.no_grad():
                case.runners[name]()
        return Step(name, run)

    timings = Timings()
    measure([step(v) for v in case.variants], budget, timings)
    return timings


HEADERS = ["model", "variant", "ms", "latency ratio", "FLOPs ratio", "latency / FLOPs ratio",
           "compile s", "max |diff|", "n"]


def rows(case: Case, timings: Timings) -> list[list[str]]:
    med = timings.median_ms
    out = []
    for variant in case.variants:
        if variant in timings.errors:
            out.append([case.name, variant, f"failed: {timings.errors[variant]}"] + [""] * 6)
            continue
        full = "eager full" if variant.startswith("eager") else "inductor full"
        ratio = None if variant == full or not med(full) else med(variant) / med(full)
        flops = None if variant == full else case.budget["flops"] if "latency" in variant \
            else case.flops_ratio
        out.append([case.name, variant, fmt(med(variant)), fmt(ratio, 2), fmt(flops, 2),
                    fmt(None if ratio is None else ratio / flops, 2),
                    fmt(case.compile_s.get(variant)), f"{case.max_diff.get(variant, 0.0):.1e}"
                    if "latency" not in variant else "-",
                    str(len(timings.seconds.get(variant, [])))])
    return out


def _ratio(timings: Timings, variant: str, full: str) -> float | None:
    med = timings.median_ms
    return med(variant) / med(full) if med(variant) and med(full) else None


def targets(results: list[tuple[Case, Timings]]) -> list[str]:
    lines = ["Targets (measured, not asserted):"]
    for case, timings in results:
        lines.append(f"- {case.name}: FLOPs ratio {case.flops_ratio:.2f}, params ratio "
                     f"{case.params_ratio:.2f}; backend=\"otofx\" removed {case.removed} channels")
        for variant, full in (("eager subnet", "eager full"), ("inductor via otofx", "inductor full")):
            ratio = _ratio(timings, variant, full)
            if ratio is not None:
                lines.append(f"  - {variant}: latency ratio {ratio:.2f} = "
                             f"{ratio / case.flops_ratio:.2f}x the FLOPs ratio")
        ratio = _ratio(timings, "inductor via otofx", "inductor full")
        verdict = "not measured (inductor failed)" if ratio is None else (
            ("meets" if ratio <= TARGET * case.flops_ratio else "misses")
            + f" ({ratio / case.flops_ratio:.2f})")
        lines.append(f"  - Subnet latency / FLOPs ratio <= {TARGET} under inductor: {verdict}")
        if case.budget:
            b = case.budget
            lines.append(f"  - target_latency={b['asked']}: latency table measured in "
                         f"{b['table_s']:.0f} s with its end-to-end checks (dense "
                         f"{1e3 * b['dense_s']:.1f} ms summed over nodes; checks, aim -> "
                         f"measured: {', '.join(f'{a:.3f} -> {m:.3f}' for a, _, m in b['checks'])}"
                         f"), {b['channels']} of {b['of']} channels pruned, predicted "
                         f"{b['predicted']:.3f} at the aim {b['aim']:.3f}, FLOPs ratio "
                         f"{b['flops']:.2f}")
            for variant, full in zip(BUDGET_VARIANTS, ("eager full", "inductor full")):
                ratio = _ratio(timings, variant, full)
                if ratio is None:
                    lines.append(f"  - {variant}: not measured")
                    continue
                off = ratio / b["asked"] - 1
                verdict = "within" if abs(off) <= LATENCY_TOLERANCE else "not within"
                lines.append(f"  - {variant}: measured latency ratio {ratio:.3f} ({100 * off:+.0f}% "
                             f"of the target): {verdict} {100 * LATENCY_TOLERANCE:.0f}% of "
                             f"{b['asked']}")
    return lines


def header_line(args: argparse.Namespace) -> str:
    return (f"{machine_line(args)}; resnet50 at {args.size}x{args.size}, vit_b_16 at "
            f"{args.vit_size}x{args.vit_size}, yolov8n at {args.yolo_size}x{args.yolo_size}; "
            f"{int(FRACTION * 100)}% of each prunable group zeroed; target_latency={LATENCY} on "
            f"{', '.join(LATENCY_MODELS)}")


NOTES = """Notes: latency ratio = variant / its full counterpart (eager subnet / eager full, \
inductor via otofx / inductor full); FLOPs ratio = subnet / full FLOPs \
(torch.utils.flop_counter); the latency ratio approaches it when the saved work was the cost. \
compile s = the first call (dynamo + otofx analysis and shrink + inductor; shorter when inductor's \
on-disk cache holds the graph from an earlier run). max |diff| = largest \
output difference from eager full on the same input. Medians of n interleaved repeats."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="resnet50 only at 112x112, fewer repeats (compiling dominates)")
    parser.add_argument("--models", help="comma-separated subset of resnet50,vit_b_16,yolov8n")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--size", type=int, default=None,
                        help="resnet50 input size (default 224, --quick 112)")
    parser.add_argument("--vit-size", type=int, default=224, help="vit_b_16 input size (default 224)")
    parser.add_argument("--yolo-size", type=int, default=None,
                        help="yolov8n input size (default 640, --quick 320)")
    parser.add_argument("--repeats", type=int, default=None, help="most repeats (default 10, --quick 5)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per variant and model (default 10, --quick 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (5 if args.quick else 10)
    args.size = args.size or (112 if args.quick else 224)
    args.yolo_size = args.yolo_size or (320 if args.quick else 640)
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
