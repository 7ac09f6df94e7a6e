"""Optimizer overhead: otofx's DHSPG and HESSO steps next to the torch optimizer they build on.

For torchvision resnet18 (``--size``, default 64x64) and vit_b_16 with ``num_classes=10``
(86M parameters; ``--vit-size``, default 64x64: the optimizer step does not depend on the image
size, the forward/backward does), batch ``--batch`` (default 8), and for each base family, SGD
with momentum 0.9 and Adam, this trains side by side, interleaved step by step (the order rotates
every step), copies of one initial model with:

- the base: ``torch.optim.SGD(momentum=0.9)`` / ``torch.optim.Adam`` three ways: torch's default
  (one parameter at a time on the CPU, foreach on CUDA), ``foreach=True`` and ``fused=True``
  (torch's fused kernels, which otofx's plain base step runs too). Every ratio divides by the
  fastest of the three in the same phase (on the CPU usually fused), so no verdict flatters otofx;
- otofx DHSPG and HESSO of that variant (``otofx.compress``, target group sparsity 0.5);
- only-train-once 3.0.1's HESSO of that variant (``OTO(model, x).hesso(...)``) where installed;
  a step it cannot take on this machine makes its row say "not available: <reason>".

Every step of every optimizer is one training iteration: ``zero_grad`` + forward + backward on the
same batch (timed), then the gradients are overwritten (untimed) with one fixed set, so every
optimizer steps on the same parameters (from the same initial values) with the same gradients,
then ``optimizer.step()`` (timed). The schedule: one untimed first step (lazy state allocation),
then ``before`` warm-up steps, ``during`` steps of the pruning phase and ``after`` steps after it
(``--steps``, ``--vit-steps``). Reported per phase: median step time, median whole iteration
(zero_grad + forward + backward + step), each as a ratio to torch's fastest step / iteration of
the same family in the same phase. Targets (measured, not asserted): an otofx DHSPG / HESSO step
during pruning at most 1.3x torch's fastest step on the CPU (resnet18, vit_b_16), a whole
iteration at most 1.05x.

After each model, ``benchmarks.step_floor`` times, alone and with torch's own kernels, each pass
over memory a pruning step cannot skip (the non-finite check, the update direction, DHSPG's
per-row products, the per-row update, HESSO's scaling) on the same parameters and gradients, next
to torch's fused step: the floor a DHSPG / HESSO step has on this device whoever writes it, and
otofx's step during pruning over that floor.

Timings use one torch thread by default (``--threads``), as ``benchmarks.analysis_speed``.
``--device cuda`` trains every copy on the GPU (otofx analyses a CPU copy of the model, then its
module moves over; each timed step and forward/backward ends in a synchronize).

Run from the repository root: ``python -m benchmarks.optimizer_overhead [--quick] [--out PATH]``
(or ``python benchmarks/optimizer_overhead.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
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
import torch.nn.functional as F
from torch import nn

import otofx
from benchmarks import peers, step_floor
from benchmarks.analysis_speed import Step, begin, fmt, markdown_table, publish, time_once
from benchmarks.models import ModelSpec

TARGET = 0.5
MAX_STEP_RATIO = 1.3          # target: an otofx step within 1.3x torch's fastest step (CPU)
MAX_ITERATION_RATIO = 1.05    # target: a whole training iteration within 1.05x
PHASES = ("before", "during", "after")
NUM_CLASSES = 10
TORCH, OTOFX, OTO = "torch", "otofx", "only-train-once"
Tools = tuple  # (only_train_once.OTO or None, why not): what peers.load_oto() returns


# ---- what is compared -----------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """Step 0 is untimed; then ``before`` warm-up, ``during`` pruning and ``after`` steps."""

    before: int
    during: int
    after: int
    periods: int                     # HESSO's pruning periods

    @property
    def start(self) -> int:
        """``start_pruning_step``: the first step of the pruning phase."""
        return 1 + self.before

    @property
    def total(self) -> int:
        return self.start + self.during + self.after

    def phase(self, step: int) -> str | None:
        if step == 0:
            return None
        if step < self.start:
            return "before"
        return "during" if step < self.start + self.during else "after"


@dataclass(frozen=True)
class Family:
    """A base optimizer and the matching settings of otofx's and only-train-once's variants."""

    name: str
    label: str
    base: Callable[..., torch.optim.Optimizer]    # (params, **extra)
    otofx: dict
    oto: dict

    def with_flag(self, flag: str) -> str:
        """The label of the base built with ``flag`` (e.g. ``fused=True``)."""
        return self.label[:-1] + f", {flag})" if self.label.endswith(")") \
            else self.label + f"({flag})"

    @property
    def fused_label(self) -> str:
        return self.with_flag("fused=True")

    @property
    def foreach_label(self) -> str:
        return self.with_flag("foreach=True")


FAMILIES = (
    Family("sgd", "torch SGD(momentum=0.9)",
           lambda params, **extra: torch.optim.SGD(params, lr=1e-3, momentum=0.9, **extra),
           dict(variant="sgd", lr=1e-3, momentum=0.9),
           dict(variant="sgd", lr=1e-3, first_momentum=0.9)),
    Family("adam", "torch Adam",
           lambda params, **extra: torch.optim.Adam(params, lr=1e-4, **extra),
           dict(variant="adam", lr=1e-4), dict(variant="adam", lr=1e-4)),
)


@dataclass
class Case:
    """A model under test: the initial model (train mode), one batch, and the fixed gradients
    every optimizer steps on (from one backward of the initial model on that batch)."""

    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    grads: dict[str, torch.Tensor]
    schedule: Schedule

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_case(spec: ModelSpec, batch: int, schedule: Schedule, device: str = "cpu") -> Case:
    model = spec.build().train().to(device)
    x = torch.randn(batch, 3, spec.image_size, spec.image_size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return Case(spec.name, model, x, y, grads, schedule)


@dataclass
class Contestant:
    """One optimizer on its own copy of the model; ``error`` is set (one line) when it could not
    be built, or at the first step it could not take (``failed_phase``); it then drops out."""

    label: str
    package: str
    model: nn.Module | None = None
    optimizer: Any = None
    fb: dict[int, float] = field(default_factory=dict)      # step -> zero_grad+forward+backward
    step: dict[int, float] = field(default_factory=dict)    # step -> optimizer.step()
    error: str = ""
    failed_phase: str | None = None
    sparsity: str = "—"

    def fail(self, message: str, phase: str | None, step: int | None = None) -> None:
        word = "not available" if self.package == OTO else "failed"
        where = "" if step is None else f" at step {step}"
        self.error, self.failed_phase = f"{word}{where}: {message}", phase
        self.model = self.optimizer = None


def contestant(label: str, package: str, build: Callable[[], tuple[nn.Module, Any]]
               ) -> Contestant:
    """``build()`` -> (model, optimizer); a failure becomes the contestant's error."""
    c = Contestant(label, package)
    try:
        c.model, c.optimizer = build()
        c.model.train()
    except Exception as exc:  # noqa: BLE001 - a tool that cannot run is a table row
        c.fail(peers.one_line(exc), None)
    return c


def contestants(case: Case, family: Family, oto_cls: Any, oto_reason: str) -> list[Contestant]:
    sched = case.schedule
    common = dict(target_group_sparsity=TARGET, start_pruning_step=sched.start,
                  pruning_steps=sched.during, **family.otofx)

    def base(**extra: Any) -> Callable[[], tuple[nn.Module, Any]]:
        def build() -> tuple[nn.Module, Any]:
            model = copy.deepcopy(case.model)
            return model, family.base(model.parameters(), **extra)
        return build

    def with_otofx(config: Any) -> Callable[[], tuple[nn.Module, Any]]:
        def build() -> tuple[nn.Module, Any]:
            if case.x.device.type == "cpu":
                job = otofx.compress(case.model, config, (case.x[:1],))  # traces a deepcopy
                return job.module, job.optimizer
            # elsewhere the analysis runs on a CPU copy and the trained module moves over
            job = otofx.compress(copy.deepcopy(case.model).cpu(), config, (case.x[:1].cpu(),))
            return job.module.to(case.x.device), job.optimizer
        return build

    def oto() -> tuple[nn.Module, Any]:
        model = copy.deepcopy(case.model)
        graph = peers.oto_graph(oto_cls, model, case.x[:1])
        with contextlib.redirect_stdout(io.StringIO()):   # it prints its setup
            optimizer = graph.hesso(
                target_group_sparsity=TARGET, start_pruning_step=sched.start,
                pruning_steps=sched.during, pruning_periods=sched.periods, **family.oto)
        if case.x.device.type == "cpu":
            optimizer = peers.oto_on_cpu(optimizer)     # its step hard-codes .cuda()
        return model, optimizer

    out = [contestant(family.label, TORCH, base()),
           contestant(family.foreach_label, TORCH, base(foreach=True)),
           contestant(family.fused_label, TORCH, base(fused=True)),
           contestant("otofx DHSPG", OTOFX, with_otofx(otofx.DHSPGConfig(**common))),
           contestant("otofx HESSO", OTOFX,
                      with_otofx(otofx.HESSOConfig(pruning_periods=sched.periods, **common)))]
    if oto_cls is None:
        out.append(Contestant("only-train-once HESSO", OTO, error=f"not available: {oto_reason}"))
    else:
        out.append(contestant("only-train-once HESSO", OTO, oto))
    return out


# ---- one training iteration -----------------------------------------------------------------

@torch.no_grad()
def set_grads(model: nn.Module, grads: dict[str, torch.Tensor]) -> None:
    """Overwrite every trainable parameter's gradient with the fixed one of the same name."""
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name not in grads:
            raise KeyError(f"no reference gradient for parameter '{name}'")
        if p.grad is None:
            p.grad = grads[name].clone()
        else:
            p.grad.copy_(grads[name])


def iterate(c: Contestant, case: Case, step: int) -> None:
    """One iteration of ``c``: zero_grad + forward + backward (timed), the fixed gradients
    (untimed), optimizer.step() (timed)."""
    def forward_backward(_: Any) -> None:
        c.optimizer.zero_grad()
        F.cross_entropy(c.model(case.x), case.y).backward()

    def synced(run: Callable[[Any], Any]) -> Callable[[Any], Any]:
        if case.x.device.type != "cuda":
            return run
        return lambda arg: (run(arg), torch.cuda.synchronize())

    fb = time_once(Step("forward+backward", synced(forward_backward)))
    set_grads(c.model, case.grads)
    st = time_once(Step("step", synced(lambda _: c.optimizer.step())))
    if case.schedule.phase(step) is not None:
        c.fb[step], c.step[step] = fb, st


def sparsity_cell(c: Contestant) -> str:
    """Zero / target prunable channels (groups for only-train-once) after the last step."""
    opt = c.optimizer
    if c.package == OTOFX:
        s = opt.sparsity_report()
        return f"{s['zero_channels']}/{s['target_channels']} of {s['prunable_channels']}"
    if c.package == OTO:
        return (f"{opt.curr_num_zero_groups}/{opt.target_num_redundant_groups} of "
                f"{opt.total_num_groups}")
    return "—"


def run_family(case: Case, family: Family, tools: Tools) -> list[Contestant]:
    """The whole schedule for one family, interleaved step by step, the order rotating."""
    field_ = contestants(case, family, *tools)
    for step in range(case.schedule.total):
        live = [c for c in field_ if not c.error]
        k = step % max(1, len(live))
        for c in live[k:] + live[:k]:
            try:
                iterate(c, case, step)
            except Exception as exc:  # noqa: BLE001 - a failing step is a table cell
                c.fail(peers.one_line(exc), case.schedule.phase(step) or "before", step)
                gc.collect()
    for c in field_:
        if not c.error:
            c.sparsity = sparsity_cell(c)
            c.model = c.optimizer = None      # free the copies before the next family
    gc.collect()
    return field_


# ---- the report -----------------------------------------------------------------------------

HEADERS = ["model", "params", "variant", "optimizer",
           "step ms before", "step ms during", "step ms after", "slowest step ms during",
           "step / fastest torch before", "step / fastest torch during",
           "step / fastest torch after", "iteration ms during",
           "iteration / fastest torch before", "iteration / fastest torch during",
           "iteration / fastest torch after",
           "n", "zero / target of prunable"]


@dataclass
class PhaseStats:
    step_ms: float
    iteration_ms: float
    slowest_ms: float
    n: int


def phase_stats(c: Contestant, schedule: Schedule) -> dict[str, PhaseStats]:
    out = {}
    for phase in PHASES:
        steps = [s for s in c.step if schedule.phase(s) == phase]
        if steps:
            out[phase] = PhaseStats(1e3 * statistics.median(c.step[s] for s in steps),
                                    1e3 * statistics.median(c.fb[s] + c.step[s] for s in steps),
                                    1e3 * max(c.step[s] for s in steps), len(steps))
    return out


@dataclass
class Row:
    """One table line; a model that could not be built has only ``cells``."""

    cells: list[str]
    case: Case | None = None
    family: Family | None = None
    contestant: Contestant | None = None
    stats: dict[str, PhaseStats] = field(default_factory=dict)
    step_ratio: dict[str, float] = field(default_factory=dict)
    iteration_ratio: dict[str, float] = field(default_factory=dict)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def fastest(stats: list[dict[str, PhaseStats]]) -> dict[str, PhaseStats]:
    """Per phase, the torch optimizer with the fastest median step (the base of every ratio),
    its iteration the fastest torch iteration of that phase."""
    out = {}
    for phase in PHASES:
        have = [s[phase] for s in stats if phase in s]
        if have:
            best = min(have, key=lambda s: s.step_ms)
            out[phase] = PhaseStats(best.step_ms, min(s.iteration_ms for s in have),
                                    best.slowest_ms, best.n)
    return out


def rows_for(case: Case, family: Family, field_: list[Contestant]) -> list[Row]:
    stats = [phase_stats(c, case.schedule) for c in field_]
    base = fastest([s for c, s in zip(field_, stats) if c.package == TORCH])
    return [row(case, family, c, s, base) for c, s in zip(field_, stats)]


def row(case: Case, family: Family, c: Contestant, stats: dict[str, PhaseStats],
        base: dict[str, PhaseStats]) -> Row:
    """The table line of one optimizer; ratios divide by the base's ``base`` stats."""
    step_r = {p: ratio(stats[p].step_ms, base[p].step_ms) for p in stats if p in base}
    iter_r = {p: ratio(stats[p].iteration_ms, base[p].iteration_ms) for p in stats if p in base}

    def per_phase(value: Callable[[str], str], say_why: bool = False) -> list[str]:
        """One cell per phase: the value, or (``say_why``) the error in the phase where the
        optimizer failed or could not be built, or —."""
        failed = c.failed_phase or "before"
        return [value(p) if p in stats else c.error if say_why and c.error and p == failed
                else "—" for p in PHASES]

    during = stats.get("during")
    cells = [case.name, f"{case.params / 1e6:.1f}M", family.name, c.label,
             *per_phase(lambda p: fmt(stats[p].step_ms), say_why=True),
             fmt(during.slowest_ms) if during else "—",
             *per_phase(lambda p: fmt(step_r.get(p), 2) + "x"),
             fmt(during.iteration_ms) if during else "—",
             *per_phase(lambda p: fmt(iter_r.get(p), 3) + "x"),
             str(min((s.n for s in stats.values()), default=0)), c.sparsity]
    return Row(cells, case, family, c, stats, step_r, iter_r)


def verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x {'meets' if value <= limit else 'misses'}"


def step_ratios(rows: list[Row], r: Row, ours: str, theirs: str) -> list[str]:
    """One line: the step of optimizer ``ours`` over that of ``theirs`` per phase, for
    ``r``'s model and family, where both ran (else no line)."""
    def find(label: str) -> Row | None:
        return next((o for o in rows if o.case is r.case and o.family is r.family and o.stats
                     and o.contestant is not None and o.contestant.label == label), None)
    a, b = find(ours), find(theirs)
    if a is None or b is None:
        return []
    parts = [f"{p} {a.stats[p].step_ms / b.stats[p].step_ms:.2f}x"
             for p in PHASES if p in a.stats and p in b.stats]
    return [f"- {r.case.name} / {r.family.name}: {ours} step / {theirs} step: {', '.join(parts)}"]


def targets(rows: list[Row]) -> list[str]:
    """The targets, each reported as measured."""
    lines = [f"Targets (measured, not asserted): otofx step <= {MAX_STEP_RATIO}x torch's fastest "
             f"step (of default, foreach=True, fused=True) in the same phase, whole iteration "
             f"(zero_grad + forward + backward + step) <= {MAX_ITERATION_RATIO}x torch's fastest; "
             "per phase before / during / after:"]
    for r in rows:
        if r.contestant is None or r.contestant.package != OTOFX or not r.stats:
            continue
        steps = ", ".join(f"{p} {verdict(r.step_ratio.get(p), MAX_STEP_RATIO)}" for p in PHASES)
        iters = ", ".join(f"{p} {verdict(r.iteration_ratio.get(p), MAX_ITERATION_RATIO)}"
                          for p in PHASES)
        lines.append(f"- {r.case.name} / {r.family.name} / {r.contestant.label}: step {steps}; "
                     f"iteration {iters}")
    lines.append("otofx's step next to each torch step (fused, foreach, default), per phase:")
    for r in rows:
        if r.contestant is not None and r.contestant.package == OTOFX:
            for theirs in (r.family.fused_label, r.family.foreach_label, r.family.label):
                lines += step_ratios(rows, r, r.contestant.label, theirs)
    for r in rows:   # otofx HESSO next to the reference HESSO, where both ran
        if r.contestant is not None and r.contestant.package == OTO:
            lines += step_ratios(rows, r, "otofx HESSO", r.contestant.label)
    return lines


NOTES = """Notes: every cell is a median over the n steps of that phase (one untimed first step before \
them), all optimizers interleaved step by step on copies of one initial model, stepping on the \
same fixed gradients; the ratios divide by the fastest torch optimizer of the same variant in \
the same phase (of torch's default, single-tensor on the CPU and foreach on CUDA; foreach=True; \
fused=True, the kernels otofx's plain base step uses): "step / fastest torch" by the fastest \
median step, "iteration / fastest torch" by the fastest median iteration. "step" is \
optimizer.step(); "iteration" is zero_grad + forward + backward + step on the same batch (the \
base trains the eager model, otofx its GraphModule, only-train-once the eager model). "slowest \
step during" includes the partition / period-start scoring steps (HESSO scores at the start of \
each period: with --quick's 4 pruning steps in 2 periods, half its steps in the pruning phase \
score every channel, so its median there includes them). Steps per phase are in the machine \
line; HESSO prunes in {periods} periods; target group sparsity {target}. The last column counts \
exactly-zero prunable channels (only-train-once: groups) after the last step."""


def machine_line(args: argparse.Namespace) -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    models = f"resnet18 at {args.size}x{args.size}"
    if not args.quick:
        models += f", vit_b_16 at {args.vit_size}x{args.vit_size}"
    device = "" if args.device == "cpu" else f"device {args.device} ({torch.cuda.get_device_name()}); "
    return (f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), {device}"
            f"load average {load}; torch {torch.__version__}, torch threads "
            f"{torch.get_num_threads()}; Python {platform.python_version()}; batch {args.batch}, "
            f"{models}; steps before/during/after: resnet18 {fmt_steps(args.steps)}"
            + ("" if args.quick else f", vit_b_16 {fmt_steps(args.vit_steps)}"))


def fmt_steps(s: Schedule) -> str:
    return f"{s.before}/{s.during}/{s.after}"


# ---- command line ---------------------------------------------------------------------------

def vit_b_16(image_size: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision
        return torchvision.models.vit_b_16(weights=None, num_classes=NUM_CLASSES,
                                           image_size=image_size)
    return build


def resnet18() -> nn.Module:
    import torchvision
    return torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES)


def model_specs(args: argparse.Namespace) -> list[tuple[ModelSpec, Schedule]]:
    specs = [(ModelSpec("resnet18", resnet18, args.size), args.steps)]
    if not args.quick:
        specs.append((ModelSpec("vit_b_16", vit_b_16(args.vit_size), args.vit_size),
                      args.vit_steps))
    return specs


def parse_schedule(text: str, periods: int) -> Schedule:
    try:
        before, during, after = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"want BEFORE,DURING,AFTER steps, got {text!r}") from None
    if min(before, during, after) < 1 or during < periods:
        raise argparse.ArgumentTypeError(f"each phase needs >= 1 step and DURING >= --periods "
                                         f"({periods}), got {text!r}")
    return Schedule(before, during, after, periods)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="resnet18 only, fewer steps (default --steps 3,4,3)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--size", type=int, default=64, help="resnet18 input size (default 64)")
    parser.add_argument("--vit-size", type=int, default=64,
                        help="vit_b_16 input size, a multiple of 16 (default 64; 224 is ~12x "
                             "slower per forward, the step costs the same)")
    parser.add_argument("--steps", default=None,
                        help="resnet18 steps BEFORE,DURING,AFTER pruning (default 6,8,6; "
                             "--quick 3,4,3)")
    parser.add_argument("--vit-steps", default="3,8,3",
                        help="vit_b_16 steps BEFORE,DURING,AFTER pruning (default 3,8,3: with 2 "
                             "HESSO periods, 2 of the 8 score every channel)")
    parser.add_argument("--periods", type=int, default=2, help="HESSO pruning periods (default 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared machine, more "
                             "threads make times swing)")
    parser.add_argument("--device", default="cpu",
                        help="where the models train (default cpu; e.g. cuda: otofx analyses a CPU "
                             "copy, then trains on the device; steps are timed to a synchronize)")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args(argv)
    if args.vit_size % 16:
        parser.error(f"--vit-size must be a multiple of 16 (the patch size), got {args.vit_size}")
    try:
        args.steps = parse_schedule(args.steps or ("3,4,3" if args.quick else "6,8,6"),
                                    args.periods)
        args.vit_steps = parse_schedule(args.vit_steps, args.periods)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    return args


def bench_model(spec: ModelSpec, schedule: Schedule, tools: Tools,
                args: argparse.Namespace) -> tuple[list[Row], list[tuple[Family, step_floor.Floor]]]:
    """The rows of one model (a model that cannot be built gives one failed row) and, per
    family, the floor of a pruning step on its parameters (``benchmarks.step_floor``)."""
    try:
        case = build_case(spec, args.batch, schedule, args.device)
    except Exception as exc:  # noqa: BLE001 - report, never crash
        cells = [spec.name, "", "", "all", f"failed to build: {peers.one_line(exc)}"]
        return [Row(cells + [""] * (len(HEADERS) - len(cells)))], []
    rows, floors = [], []
    for family in FAMILIES:
        start = time.perf_counter()
        field_ = run_family(case, family, tools)
        rows += rows_for(case, family, field_)
        floors.append((family, step_floor.measure(case.model, case.grads, family.name)))
        gc.collect()
        print(f"  {spec.name} / {family.name}: {schedule.total} steps, "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return rows, floors


def floor_report(cases: list[tuple[str, list[Row], list[tuple[Family, step_floor.Floor]]]]
                 ) -> list[str]:
    """The floor table and, per model and family, otofx's step during pruning next to it."""
    table, lines = [], []
    for name, rows, floors in cases:
        for family, f in floors:
            table.append(step_floor.row(name, family.name, f))
            for r in rows:
                c = r.contestant
                if c is None or c.package != OTOFX or r.family is not family \
                        or "during" not in r.step_ratio:
                    continue
                floor = (f.dhspg if "DHSPG" in c.label else f.hesso) / f.ms["fused"]
                lines.append(f"- {name} / {family.name} / {c.label}: step during pruning "
                             f"{r.step_ratio['during']:.2f}x torch's fastest step (table above), "
                             f"its floor {floor:.2f}x torch's fused step (this table); "
                             f"otofx / floor {r.step_ratio['during'] / floor:.2f}")
    if not table:
        return []
    return ["The floor of a pruning step (`benchmarks/step_floor.py`: each pass a DHSPG / HESSO "
            "step cannot skip, timed alone with torch's kernels on the same parameters and "
            "gradients, median of 7 interleaved rounds):", "",
            markdown_table(step_floor.HEADERS, table), "", *lines]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    header = begin(args, machine_line)
    tools = peers.load_oto()
    rows: list[Row] = []
    cases = []
    for spec, schedule in model_specs(args):
        model_rows, floors = bench_model(spec, schedule, tools, args)
        rows += model_rows
        cases.append((spec.name, model_rows, floors))
    return publish(header, markdown_table(HEADERS, [r.cells for r in rows]),
                   NOTES.format(periods=args.periods, target=TARGET),
                   targets(rows) + [""] + floor_report(cases), args.out)


if __name__ == "__main__":
    sys.exit(main())
