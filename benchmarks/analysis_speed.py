"""Analysis speed: how long otofx takes to analyse and shrink a model, next to one forward pass.

For each model (torchvision resnet18, resnet50, vit_b_16 at 224x224, a deep synthetic
CIFAR-style ResNet of about 500 and 2000 fx graph nodes at 32x32, and two HF transformers built from
configs, no download: BERT-base (hidden 768, 12 layers, 12 heads) on ``--seq`` tokens and ViT-B/16
at 224x224, which come in through torch.export) this measures, as medians of interleaved repeats on
the CPU:

- one forward pass (eval mode, no_grad, ``--batch`` images);
- ``otofx.analyze(gm, (x,))`` of a graph whose prunable groups are 30% zeroed (``zero_groups``,
  untimed, once);
- two flows of ``otofx.shrink`` (each includes its own verification forward):
  * row ``otofx``: ``shrink(gm, analysis)`` with that analysis, on the same weights (a compile
    backend stage, ``otofx inspect``, a model pruned elsewhere): shrink reuses the analysis run;
  * row ``otofx, trained since``: ``shrink(gm, before)`` with an analysis made before the zeroing,
    as after training with ``otofx.compress``: shrink runs the graph itself, so it costs one more
    forward. Its no-verify column is ``shrink(gm, before, verify=False)``;
- otofx's total, what a user waits for: ``otofx.trace`` + analyze + shrink, in each flow; total /
  forward, and total in ms per fx graph node (linear scaling means the same ms per node at 500 and
  2000 nodes, and the fitted exponent of time ~ nodes^k near 1);
- the peers where installed: torch-pruning 1.6.1's ``DependencyGraph().build_dependency`` and its
  full 30% magnitude prune (pruner construction, which builds its graph, + ``step()``: its
  total), and only-train-once 3.0.1's graph construction ``OTO(model, dummy_input)``.
  The targets compare otofx's total with torch-pruning's on every model, in both flows.

Timings use one torch thread by default (``--threads``): on a shared machine, two threads make
forward times swing tenfold. The deep ResNets' input size is ``--deep-size``.

Run from the repository root: ``python -m benchmarks.analysis_speed [--quick] [--out PATH]``
(or ``python benchmarks/analysis_speed.py``).
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
TRAINED = "otofx, trained since"     # shrink with an analysis from before the weights changed
MAX_FORWARDS = 3.0  # trace + analysis + shrink within 3 forward passes (reported)
LINEAR_EXPONENT = 1.15  # time ~ nodes^k counts as linear up to this k (noise margin)


# ---- timing ---------------------------------------------------------------------------------

@dataclass
class Step:
    """One timed operation: ``setup()`` returns the argument ``run`` is timed on, ``after``
    receives what ``run`` returned; neither is timed."""

    name: str
    run: Callable[[Any], Any]
    setup: Callable[[], Any] = lambda: None
    after: Callable[[Any], None] = lambda result: None


@dataclass
class Timings:
    """Seconds per step name, or the one-line reason a step failed (it is then not retried)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def median_ms(self, name: str) -> float | None:
        values = self.seconds.get(name)
        return 1e3 * statistics.median(values) if values else None


def time_once(step: Step) -> float:
    """Seconds ``step.run`` takes, garbage collection off while it runs."""
    arg = step.setup()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = step.run(arg)
        seconds = time.perf_counter() - start
    finally:
        gc.enable()
    step.after(result)
    return seconds


@dataclass(frozen=True)
class Budget:
    """At most ``repeats`` samples per step, fewer once a step has used ``seconds`` in all."""

    repeats: int
    seconds: float

    def wants_more(self, samples: list[float]) -> bool:
        return len(samples) < self.repeats and sum(samples) < self.seconds


def measure(steps: list[Step], budget: Budget, timings: Timings) -> None:
    """Time the steps round by round (interleaved, so noise hits all alike) within ``budget``."""
    while todo := [s for s in steps if s.name not in timings.errors
                   and budget.wants_more(timings.seconds.get(s.name, []))]:
        for step in todo:
            try:
                timings.seconds.setdefault(step.name, []).append(time_once(step))
            except Exception as exc:  # noqa: BLE001 - a failing tool is a table row, not a crash
                timings.errors[step.name] = peers.one_line(exc)


# ---- what is measured -----------------------------------------------------------------------

@dataclass
class Case:
    """A model under test: the eager model, its input, fx graph and otofx preparation."""

    name: str
    model: nn.Module
    x: torch.Tensor
    nodes: int
    gm: Any = None
    analysis: Any = None          # of the zeroed weights
    before: Any = None            # made before the zeroing
    params_left: dict[str, float] = field(default_factory=dict)
    forward_ms: float | None = None


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_step(case: Case) -> Step:
    def run(_: Any) -> None:
        with torch.no_grad():
            case.model(case.x)
    return Step("forward", run)


def otofx_steps(case: Case) -> list[Step]:
    """trace, analyze, shrink in both flows, shrink(verify=False); the first trace is kept and
    30% of each prunable group zeroed, untimed, before the first analysis is timed."""
    def keep_graph(gm: Any) -> None:
        if case.gm is None:
            case.gm = gm
            case.before = otofx.analyze(gm, (case.x,))
            zero_groups(gm, case.before, PRUNE_FRACTION, seed=0)

    def keep_analysis(analysis: Any) -> None:
        if case.analysis is None:
            case.analysis = analysis

    def count(small: nn.Module) -> None:
        case.params_left[OTOFX] = n_params(small) / n_params(case.gm)

    return [Step(f"{OTOFX}.trace", lambda _: otofx.trace(case.model, (case.x,)), after=keep_graph),
            Step(f"{OTOFX}.analyze", lambda _: otofx.analyze(case.gm, (case.x,)),
                 after=keep_analysis),
            Step(f"{OTOFX}.shrink", lambda _: otofx.shrink(case.gm, case.analysis), after=count),
            Step(f"{OTOFX}.shrink_trained", lambda _: otofx.shrink(case.gm, case.before),
                 after=lambda small: case.params_left.update({TRAINED: n_params(small) / n_params(case.gm)})),
            Step(f"{OTOFX}.shrink_noverify",
                 lambda _: otofx.shrink(case.gm, case.before, verify=False))]


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


@dataclass(frozen=True)
class InputSpec(ModelSpec):
    """A model whose input is not an image: ``inputs(batch)`` makes it."""

    inputs: Callable[[int], torch.Tensor] | None = None


def hf_specs(seq: int) -> list[InputSpec]:
    """BERT-base and ViT-B/16 from HF transformers configs (random weights, no download)."""
    def bert() -> nn.Module:
        import transformers
        return transformers.BertModel(transformers.BertConfig(attn_implementation="eager"))

    def vit() -> nn.Module:
        import transformers
        return transformers.ViTModel(transformers.ViTConfig(attn_implementation="eager"))

    ids = lambda batch: torch.randint(0, 30522, (batch, seq))  # noqa: E731
    return [InputSpec("hf-bert-base", bert, 0, ids), InputSpec("hf-vit-b16", vit, 224)]


def build_case(name: str, model: nn.Module, image_size: int, batch: int,
               x: torch.Tensor | None = None) -> Case:
    model.eval()
    if x is None:
        x = torch.randn(batch, 3, image_size, image_size)
    try:
        nodes = len(torch.fx.symbolic_trace(model).graph.nodes)
    except Exception:  # noqa: BLE001 - fx cannot trace it: count the graph otofx.trace exports
        nodes = len(otofx.trace(model, (x,)).graph.nodes)
    with torch.no_grad():
        model(x)  # untimed: first-call allocations and kernel selection
    return Case(name, model, x, nodes)


def run_case(case: Case, tools: Tools, budget: Budget) -> Timings:
    """All steps for one model, interleaved."""
    timings = Timings()
    steps = [forward_step(case)] + otofx_steps(case)
    if tools.tp is not None:
        steps += tp_steps(case, tools.tp)
    if tools.oto is not None:
        steps += oto_steps(case, tools.oto)
    measure(steps, budget, timings)
    case.forward_ms = timings.median_ms("forward")
    return timings


def warm_up(tools: Tools, batch: int) -> None:
    """Pay one-time costs (imports, lazy initialisation) on a tiny model before timing."""
    run_case(build_case("warm-up", DeepResNet(1), 32, batch), tools, Budget(1, math.inf))


# ---- the report -----------------------------------------------------------------------------

HEADERS = ["model", "nodes", "package", "forward ms", "trace ms", "analysis ms",
           "shrink / prune ms", "shrink no-verify ms", "total ms", "total / forward",
           "total ms / node", "n", "params left"]


@dataclass(frozen=True)
class Columns:
    """Which step of a package fills which column; ``total`` lists the steps that add up."""

    package: str
    analysis: str
    total: tuple[str, ...]
    trace: str | None = None
    prune: str | None = None
    noverify: str | None = None

    def steps(self) -> list[str]:
        named = [self.trace, self.analysis, self.prune, self.noverify, *self.total]
        return list(dict.fromkeys(n for n in named if n))


COLUMNS = {
    OTOFX: Columns(OTOFX, f"{OTOFX}.analyze",
                   (f"{OTOFX}.trace", f"{OTOFX}.analyze", f"{OTOFX}.shrink"),
                   trace=f"{OTOFX}.trace", prune=f"{OTOFX}.shrink"),
    TRAINED: Columns(TRAINED, f"{OTOFX}.analyze",
                     (f"{OTOFX}.trace", f"{OTOFX}.analyze", f"{OTOFX}.shrink_trained"),
                     trace=f"{OTOFX}.trace", prune=f"{OTOFX}.shrink_trained",
                     noverify=f"{OTOFX}.shrink_noverify"),
    TP: Columns(TP, f"{TP}.depgraph", (f"{TP}.prune",), prune=f"{TP}.prune"),
    OTO: Columns(OTO, f"{OTO}.graph", (f"{OTO}.graph",)),
}


@dataclass
class Row:
    """One (model, package) line of the table; ``total_ms`` is None when the package failed."""

    case: Case
    package: str
    cells: list[str]
    total_ms: float | None = None


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def message_row(case: Case, package: str, message: str) -> Row:
    """A row whose measurements are replaced by ``message`` (failed, not available)."""
    cells = [case.name, str(case.nodes), package, message]
    return Row(case, package, cells + [""] * (len(HEADERS) - len(cells)))


def row(case: Case, timings: Timings, cols: Columns) -> Row:
    """The table row of one package on one model."""
    error = next((timings.errors[n] for n in cols.steps() if n in timings.errors), None)
    if error is not None:
        return message_row(case, cols.package, f"failed: {error}")
    med = timings.median_ms
    parts = [med(n) for n in cols.total]
    total = None if None in parts else sum(parts)
    ratio = None if total is None or not case.forward_ms else total / case.forward_ms
    samples = min(len(timings.seconds.get(n, [])) for n in cols.steps())
    per_node = None if total is None else total / case.nodes
    left = case.params_left.get(cols.package)
    steps = (cols.trace, cols.analysis, cols.prune, cols.noverify)
    cells = [case.name, str(case.nodes), cols.package, fmt(case.forward_ms),
             *(fmt(med(n)) if n else "—" for n in steps),
             fmt(total), fmt(ratio, 2) + "x", fmt(per_node, 3), str(samples),
             "—" if left is None else f"{100 * left:.0f}%"]
    return Row(case, cols.package, cells, total)


def rows_for(case: Case, timings: Timings, tools: Tools) -> list[Row]:
    reasons = {OTOFX: "", TRAINED: "", TP: tools.tp_reason if tools.tp is None else "",
               OTO: tools.oto_reason if tools.oto is None else ""}
    return [message_row(case, p, f"not available: {why}") if why else
            row(case, timings, COLUMNS[p]) for p, why in reasons.items()]


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


def against_peer(rows: list[Row], model: str, package: str, peer: str) -> str | None:
    """One line: ``package``'s total against ``peer``'s on ``model``, where both have one."""
    ours, theirs = find(rows, model, package), find(rows, model, peer)
    if not (ours and theirs and ours.total_ms and theirs.total_ms):
        return None
    verdict = "meets" if ours.total_ms <= theirs.total_ms else "misses"
    return (f"- {model}: {package} {ours.total_ms:.0f} ms vs {peer} {theirs.total_ms:.0f} ms: "
            f"otofx / {peer} = {ours.total_ms / theirs.total_ms:.2f} ({verdict} <= 1)")


def targets(rows: list[Row]) -> list[str]:
    """The issue's targets, each reported as measured, on every model."""
    lines = ["Targets (measured, not asserted): otofx's trace + analyze + shrink at most "
             "torch-pruning's full prune (graph build + prune) on every model, in both flows; "
             "linear in nodes:"]
    lines += [line for p in (OTOFX, TRAINED, TP, OTO) if (line := scaling(rows, p))]
    models = list(dict.fromkeys(r.case.name for r in rows))
    for model in models:
        lines += [line for p in (OTOFX, TRAINED) if (line := against_peer(rows, model, p, TP))]
    lines.append(f"Against one forward pass (otofx's total <= {MAX_FORWARDS}x forward):")
    for r in rows:
        forward = r.case.forward_ms
        if r.package in (OTOFX, TRAINED) and r.total_ms is not None and forward:
            ratio = r.total_ms / forward
            verdict = "meets" if ratio <= MAX_FORWARDS else "misses"
            lines.append(f"- {r.case.name}: {r.package}: trace+analysis+shrink = {ratio:.2f}x "
                         f"forward ({verdict} <= {MAX_FORWARDS}x)")
    return lines


NOTES = """Notes: medians of n interleaved repeats (at most {repeats}; a step stops repeating \
once it has used {budget:g} s on a model). otofx total = otofx.trace + analyze + shrink, what a \
user waits for (shrink includes its verification forward; 30% of each prunable group zeroed \
beforehand, untimed): on the weights analysed (row otofx), or after they changed since the analysis \
(row "otofx, trained since", as after otofx.compress: one more forward, shrink's own reference \
run). torch-pruning total = its full prune: MagnitudePruner construction (which builds \
the DependencyGraph) + step(), on a copy of the model made untimed (it prunes in place; \
otofx.trace's time includes copying the model, which otofx never changes); its analysis column \
is DependencyGraph().build_dependency alone. \
only-train-once total = OTO(model, dummy_input) graph construction only. params left = \
parameters after / before pruning."""


def machine_line(args: argparse.Namespace) -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"load average {load}; torch {torch.__version__}, torch threads "
            f"{torch.get_num_threads()}; Python {platform.python_version()}; batch {args.batch}, "
            f"repeats <= {args.repeats}, budget {args.budget:g} s per step and model")


# ---- command line ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats; skip vit_b_16, the HF transformers and the 2000-node ResNet")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="most timed repeats per step (default 5, --quick 2)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per step and model after which it stops repeating "
                             "(default 15, --quick 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared machine, more "
                             "threads make forward times swing 10x)")
    parser.add_argument("--deep-size", type=int, default=32,
                        help="input height/width of the deep synthetic ResNets (default 32)")
    parser.add_argument("--seq", type=int, default=128, help="BERT-base tokens per input (default 128)")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--models", default="",
                        help="comma-separated model names to run (default: all of the size); e.g. "
                             "resnet50,deep-resnet-2000")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.budget is None:
        args.budget = 5.0 if args.quick else 15.0
    return args


def begin(args: argparse.Namespace, header: Callable[[argparse.Namespace], str]) -> str:
    """Seed, thread count and the machine line every benchmark prints first."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    line = header(args)
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    header = begin(args, machine_line)
    tools = Tools.load()
    warm_up(tools, args.batch)
    rows: list[Row] = []
    wanted = {m for m in args.models.split(",") if m}
    specs = model_specs(args.quick and not wanted, args.deep_size) + ([] if args.quick else hf_specs(args.seq))
    unknown = wanted - {s.name for s in specs}
    if unknown:
        raise SystemExit(f"unknown --models {sorted(unknown)}; known: {[s.name for s in specs]}")
    for spec in specs:
        if not wanted or spec.name in wanted:
            rows += bench_model(spec, tools, args)
    return publish(header, markdown_table(HEADERS, [r.cells for r in rows]),
                   NOTES.format(repeats=args.repeats, budget=args.budget), targets(rows), args.out)


def publish(header: str, table: str, notes: str, target_lines: list[str],
            out: Path | None) -> int:
    """Print the table, notes and target lines; also write them (with the header) to ``out``."""
    body = "\n\n".join([table, notes, "\n".join(target_lines)])
    print("\n" + body)
    if out:
        out.write_text(f"{header}\n\n{body}\n")
    return 0


def bench_model(spec: ModelSpec, tools: Tools, args: argparse.Namespace) -> list[Row]:
    """The rows of one model; a model that cannot be built or traced gives one failed row."""
    start = time.perf_counter()
    try:
        inputs = getattr(spec, "inputs", None)
        case = build_case(spec.name, spec.build(), spec.image_size, args.batch,
                          inputs(args.batch) if inputs else None)
    except Exception as exc:  # noqa: BLE001 - report, never crash
        blank = Case(spec.name, nn.Identity(), torch.empty(0), 0)
        return [message_row(blank, "all", f"failed to build: {peers.one_line(exc)}")]
    timings = run_case(case, tools, Budget(args.repeats, args.budget))
    print(f"  {spec.name}: {case.nodes} nodes, {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    return rows_for(case, timings, tools)


if __name__ == "__main__":
    sys.exit(main())
