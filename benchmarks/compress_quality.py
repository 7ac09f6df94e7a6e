"""Compression quality: accuracy at equal FLOPs, each otofx method against each peer, paired seeds.

One model (``examples/digits_resnet.py``, a narrow ResNet), two tasks (``digits``: scikit-learn's
load_digits; ``noisy-digits``: the same images shifted by up to a pixel and buried in Gaussian
noise), the same total epochs, SGD (lr 0.05, momentum 0.9, batch 64), initialisation and batch
order for every method at a seed. The methods are the rows of ``METHODS`` below:

- otofx DHSPG and otofx HESSO (``otofx.compress``): warm-up for the first sixth of the steps,
  pruning over the next third, training on for the rest; measured on ``job.subnet()``. Each asks
  for the FLOPs level itself (``target_flops``), so it lands on it;
- only-train-once HESSO (its package, ``benchmarks/peers.py``'s torch-compat shims), the same
  schedule, measured on the model its ``construct_subnet`` writes;
- torch-pruning 1.6 at its strongest documented setting: global, iterative pruning
  (``BasePruner(global_pruning=True, iterative_steps=k)``): dense warm-up for the first sixth of
  the epochs, then one pruning step after each of the next third's epochs (momentum restarts
  after each), then fine-tuning for the rest, once with L2-magnitude and once with Taylor
  importance (gradients of the loss on 4 training batches before each step);
- torch-pruning's uniform one-shot L2 prune (every layer by the same share, half the epochs
  dense, then fine-tuning), kept as the simplest baseline.

torch-pruning has no FLOPs target: each of its rows reaches a FLOPs level by bisecting its
``pruning_ratio`` (``tp_ratio_for``: 10 halvings, on a copy of the model at the end of the dense
warm-up, all its pruning steps applied at once with the same importance) until the pruned copy's
FLOPs is nearest the level; the run then prunes with that ratio while it trains, so it lands
where the importance during training takes it (its FLOPs kept is measured and printed).
only-train-once has no FLOPs target either and its FLOPs are only known once it has trained, so
it runs a grid of channel shares whose final models bracket the levels, and its accuracy at a
level is interpolated (below).

Every final model (the dense one too) gets its batch-norm statistics recomputed over the first
``CALIBRATION_BATCHES`` training batches (``otofx.recalibrate_batchnorm``) before it is
measured, the same for every method: statistics that lag behind the last steps' weights add
seed noise that hides differences between methods.

The FLOPs levels are 0.5, 0.3, 0.15 and 0.07 of the dense FLOPs (one counter,
``otofx.flops.count_flops``, on every final model; ``--quick``: 0.5 and 0.15). A method that
targets the levels (``Spec.flops``) is read at its run for the level, wherever it landed (the
table shows where); a grid method's accuracy is interpolated linearly in log(FLOPs) between its
two bracketing points (never extrapolated). Each otofx method is then paired with each peer by
seed: "beats"/"loses" only when the mean paired difference is more than twice its standard
error.

    python -m benchmarks.compress_quality [--quick] [--jobs N] [--out PATH.md]

writes PATH.md, PATH.json (every run) and PATH.png (accuracy vs FLOPs).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import math
import multiprocessing
import os
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
import torch.nn.functional as F
from torch import nn

import otofx
from benchmarks import paired, peers
from examples.digits_data import TASKS, accuracy, first_batches, steps_per_epoch, train
from examples.digits_resnet import DigitsResNet
from otofx.flops import count_flops

LR, MOMENTUM = 0.05, 0.9
LEVELS = (0.5, 0.3, 0.15, 0.07)          # FLOPs kept, as a share of the dense model's
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Spec:
    """One contestant: ``kind`` says who runs it ("otofx": ``otofx.<config>(**options)``;
    "only-train-once"; "torch-pruning": ``peers.tp_pruner`` options plus ``iterative``);
    ``targets`` is its grid of channel shares to remove (chosen so the final models bracket
    ``LEVELS``), or with ``flops`` the FLOPs levels it lands on itself (otofx: ``target_flops``;
    torch-pruning: its ratio bisected)."""

    name: str
    kind: str
    targets: tuple[float, ...]
    config: str = ""
    options: dict = field(default_factory=dict)
    peer: bool = True
    flops: bool = False


# ---- the methods: one line each; add a config option by editing its line ---------------------
# Calibration (digits, seed 0, 12 epochs, before the issue-14 optimizers), target -> FLOPs kept:
#   otofx DHSPG  .15 .787, .25 .643, .35 .534, .45 .388, .55 .195, .65 .132, .72 .094, .8 .066
#   otofx HESSO  .15 .787, .25 .648, .35 .522, .45 .381, .55 .293, .65 .227, .72 .077, .8 .022
#   oto HESSO    .15 .787, .25 .651, .35 .547, .45 .408, .55 .284, .65 .103, .72 .068, .8 .037
#   tp L2 glob.  .15 .694, .25 .553, .35 .412, .45 .289, .55 .199, .65 .118, .72 .075, .8 .045
#   tp Taylor    .15 .782, .25 .654, .35 .547, .45 .458, .55 .294, .65 .227, .72 .126, .8 .076
#   tp uniform   about (1 - t)^2 (.3 .474, .5 .251, .7 .086)
# A level a grid stops bracketing shows as n/a with the method's FLOPs range: widen that row.
# (The first default run used 0.82 as the last target; otofx HESSO on noisy-digits then kept
# 0.078 of the FLOPs at one seed, leaving 0.07 unbracketed there.)
GLOBAL_GRID = (0.2, 0.38, 0.52, 0.63, 0.72, 0.85)
METHODS: tuple[Spec, ...] = (
    Spec("otofx DHSPG", "otofx", LEVELS, "DHSPGConfig", {}, peer=False, flops=True),
    Spec("otofx HESSO", "otofx", LEVELS, "HESSOConfig", {"pruning_periods": 4}, peer=False,
         flops=True),
    Spec("only-train-once HESSO", "only-train-once", GLOBAL_GRID, "", {"pruning_periods": 4}),
    Spec("torch-pruning L2 global iterative", "torch-pruning", LEVELS, "",
         {"importance": "l2", "global_pruning": True, "iterative": True}, flops=True),
    Spec("torch-pruning Taylor global iterative", "torch-pruning", LEVELS, "",
         {"importance": "taylor", "global_pruning": True, "iterative": True}, flops=True),
    Spec("torch-pruning L2 uniform one-shot", "torch-pruning", LEVELS, "",
         {"importance": "l2", "global_pruning": False, "iterative": False}, flops=True),
)
QUICK_TARGETS = (0.25, 0.75)          # grid methods at --quick (0.65 left 0.15 unbracketed) ...
QUICK_LEVELS = (0.5, 0.15)            # ... and the FLOPs levels
BISECT_STEPS = 10
CALIBRATION_BATCHES = 8
DENSE = "dense (SGD)"
TAYLOR_BATCHES = 4


class SpecError(ValueError):
    """A row of ``METHODS`` that the installed packages cannot run as written."""


def by_name() -> dict[str, Spec]:
    return {s.name: s for s in METHODS}


def check_spec(spec: Spec) -> None:
    """Raise :class:`SpecError` naming the row and the option when ``spec`` cannot be built."""
    where = f"benchmarks/compress_quality.py METHODS row {spec.name!r}"
    if spec.kind == "otofx":
        cls = getattr(otofx, spec.config, None)
        if cls is None:
            raise SpecError(f"{where}: the installed otofx ({otofx.__version__}, "
                            f"{Path(otofx.__file__).parent}) has no {spec.config}; fix the row or "
                            "install the otofx it was written for.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec.options) - known)
        if unknown:
            raise SpecError(f"{where}: otofx.{spec.config} of the installed otofx "
                            f"({otofx.__version__}, {Path(otofx.__file__).parent}) has no option "
                            f"{', '.join(unknown)}; it has {', '.join(sorted(known))}. Remove the "
                            "option from the row or install the otofx that has it.")
        budget = dict(target_flops=spec.targets[0]) if spec.flops else dict(
            target_group_sparsity=spec.targets[0])
        try:
            cls(**{**dict(lr=LR, momentum=MOMENTUM, start_pruning_step=10, pruning_steps=100,
                          **budget), **spec.options})
        except Exception as exc:  # noqa: BLE001 - the config's own message, with the row named
            raise SpecError(f"{where}: {peers.one_line(exc)}") from exc
    elif spec.kind == "torch-pruning":
        for key in ("importance", "global_pruning", "iterative"):
            if key not in spec.options:
                raise SpecError(f"{where}: torch-pruning rows need option {key!r}")
        if spec.options["importance"] not in peers.TP_IMPORTANCES:
            raise SpecError(f"{where}: importance must be one of {peers.TP_IMPORTANCES}")
    elif spec.kind != "only-train-once":
        raise SpecError(f"{where}: kind {spec.kind!r} is not otofx, only-train-once or "
                        "torch-pruning")
    if not spec.targets or not all(0 < t < 1 for t in spec.targets):
        raise SpecError(f"{where}: targets must be shares in (0, 1), got {spec.targets}")


# ---- one training run ------------------------------------------------------------------------

@dataclass
class Setting:
    task: str
    data: tuple
    epochs: int
    seed: int

    @property
    def steps(self) -> int:
        return self.epochs * steps_per_epoch(self.data[0])

    @property
    def x(self) -> torch.Tensor:
        return self.data[0][0][:2]

    def model(self) -> nn.Module:
        torch.manual_seed(self.seed)           # the same initialisation for every method
        return DigitsResNet()

    def fit(self, module: nn.Module, optimizer: Any, epochs: int, first: int = 0) -> None:
        for epoch in range(first, first + epochs):   # the same batch order for every method
            train(module, optimizer, self.data[0], 1, seed=1000 * self.seed + epoch)

    def phase(self) -> tuple[int, int]:
        """(warm-up epochs, pruning epochs): about a sixth, then a third of the run, ending at
        half of it, where otofx's pruning phase (``schedule``) ends."""
        warm = max(1, round(self.epochs / 6))
        return warm, max(1, round(self.epochs / 2) - warm)


def sgd(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)


def run_dense(spec: Spec | None, s: Setting, target: float) -> tuple[nn.Module, str]:
    model = s.model()
    s.fit(model, sgd(model), s.epochs)
    return model, ""


def schedule(s: Setting) -> dict:
    return dict(start_pruning_step=s.steps // 6, pruning_steps=max(1, s.steps // 3))


def run_otofx(spec: Spec, s: Setting, target: float) -> tuple[nn.Module, str]:
    cls = getattr(otofx, spec.config)
    budget = dict(target_flops=target) if spec.flops else dict(target_group_sparsity=target)
    config = cls(**{**dict(lr=LR, momentum=MOMENTUM, **budget, **schedule(s)), **spec.options})
    job = otofx.compress(s.model(), config, (s.x,))
    s.fit(job.module, job.optimizer, s.epochs)
    sp = job.optimizer.sparsity_report()
    note = f"{sp.get('zero_channels', '?')}/{sp.get('target_channels', '?')} of " \
           f"{sp.get('prunable_channels', '?')}"
    return job.subnet(), note


def run_oto(spec: Spec, s: Setting, target: float) -> tuple[nn.Module, str]:
    oto_cls, why = peers.load_oto()
    if oto_cls is None:
        raise RuntimeError(why)
    model = s.model()
    graph = peers.oto_graph(oto_cls, model, s.data[0][0][:1])
    with contextlib.redirect_stdout(io.StringIO()):
        optimizer = peers.oto_on_cpu(graph.hesso(
            variant="sgd", lr=LR, first_momentum=MOMENTUM, target_group_sparsity=target,
            **{**schedule(s), **spec.options}))
    s.fit(model, optimizer, s.epochs)
    note = (f"{optimizer.curr_num_zero_groups}/{optimizer.target_num_redundant_groups} of "
            f"{optimizer.total_num_groups} groups")
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph.construct_subnet(out_dir=out)
        small = torch.load(graph.compressed_model_path, weights_only=False)
    return small, note


def taylor_gradients(model: nn.Module, s: Setting, epoch: int) -> None:
    """Gradients of the loss on ``TAYLOR_BATCHES`` training batches (eval mode, so the
    batch-norm statistics stay as training left them), for Taylor importance."""
    X, y = s.data[0]
    gen = torch.Generator().manual_seed(7919 * s.seed + epoch)
    idx = torch.randperm(len(X), generator=gen)[:64 * TAYLOR_BATCHES]
    model.eval()
    model.zero_grad()
    for chunk in idx.split(64):
        F.cross_entropy(model(X[chunk]), y[chunk]).backward()
    model.train()


def run_tp(spec: Spec, s: Setting, target: float) -> tuple[nn.Module, str]:
    tp, why = peers.load_torch_pruning()
    if tp is None:
        raise RuntimeError(why)
    options = dict(spec.options)
    importance, iterative = options.pop("importance"), options.pop("iterative")
    model = s.model()
    warm, steps = s.phase() if iterative else (s.epochs // 2, 1)
    optimizer = sgd(model)
    s.fit(model, optimizer, warm)
    model.eval()
    global_pruning = options.pop("global_pruning")
    level = None
    if spec.flops:                         # a FLOPs level: the ratio that reaches it
        level, target = target, tp_ratio_for(tp, model, s, target, importance, global_pruning,
                                             steps, warm, options)
    pruner = peers.tp_pruner(tp, model, s.data[0][0][:1], target, importance, global_pruning,
                             steps, **options)
    epoch = warm
    for _ in range(steps):
        if iterative:                      # train an epoch of the pruning phase, then prune
            s.fit(model, optimizer, 1, first=epoch)
            epoch += 1
        tp_step(pruner, model, s, importance, epoch)
        optimizer = sgd(model)             # the pruned parameters are new tensors
    s.fit(model, optimizer, s.epochs - epoch, first=epoch)
    how = f"ratio {target:.3f} bisected for FLOPs {level:g}; " if level is not None else ""
    return model, f"{how}{target:g} of the channels, {steps} step{'s' * (steps > 1)}"


def tp_step(pruner, model: nn.Module, s: Setting, importance: str, epoch: int) -> None:
    """One pruning step of torch-pruning (Taylor importance: gradients first), in eval mode."""
    if importance == "taylor":
        taylor_gradients(model, s, epoch)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    model.zero_grad(set_to_none=True)


def tp_ratio_for(tp, model: nn.Module, s: Setting, level: float, importance: str,
                 global_pruning: bool, steps: int, epoch: int, options: dict) -> float:
    """torch-pruning's ``pruning_ratio`` whose pruned model keeps FLOPs nearest ``level`` of
    ``model``'s: bisected (``BISECT_STEPS`` halvings) on copies of ``model`` as it is, each
    pruned by all ``steps`` of the schedule at once with the same importance."""
    x = s.data[0][0][:1]
    dense = count_flops(model, (x,))

    def kept(ratio: float) -> float:
        trial = copy.deepcopy(model)
        pruner = peers.tp_pruner(tp, trial, x, ratio, importance, global_pruning, steps, **options)
        for _ in range(steps):
            tp_step(pruner, trial, s, importance, epoch)
        return count_flops(trial, (x,)) / dense

    lo, hi = 0.0, 0.99                     # FLOPs kept falls as the ratio grows
    at = {lo: 1.0, hi: kept(hi)}
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        at[mid] = kept(mid)
        lo, hi = (mid, hi) if at[mid] > level else (lo, mid)
    return min((lo, hi), key=lambda r: abs(at[r] - level))


RUNNERS: dict[str, Callable[[Spec, Setting, float], tuple[nn.Module, str]]] = {
    "otofx": run_otofx, "only-train-once": run_oto, "torch-pruning": run_tp}


def available(names: list[str] | None = None) -> tuple[list[Spec], dict[str, str]]:
    """The rows of ``METHODS`` to run (all, or ``names``), and a reason for each that cannot
    run here (a peer not installed). Raises :class:`SpecError` on a row the installed packages
    cannot build and on an unknown name."""
    table = by_name()
    unknown = [n for n in names or [] if n not in table]
    if unknown:
        raise SpecError(f"unknown method(s) {unknown}: choose from {list(table)}")
    chosen = [table[n] for n in names] if names else list(METHODS)
    reasons = {}
    loaders = {"only-train-once": peers.load_oto, "torch-pruning": peers.load_torch_pruning}
    out = []
    for spec in chosen:
        check_spec(spec)
        if spec.kind in loaders:
            mod, why = loaders[spec.kind]()
            if mod is None:
                reasons[spec.name] = f"not available: {why}"
                continue
        out.append(spec)
    return out, reasons


def measure(name: str, s: Setting, target: float, base: dict) -> dict:
    """One run as a record: accuracy, FLOPs and params kept, wall and CPU seconds (everything
    the user waits for: analysis, training, compression), or the error."""
    spec = by_name().get(name)
    runner = run_dense if spec is None else RUNNERS[spec.kind]
    record = dict(task=s.task, seed=s.seed, method=name, target=target)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        model, note = runner(spec, s, target)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        otofx.recalibrate_batchnorm(model, first_batches(s.data[0][0], 64 * CALIBRATION_BATCHES))
        x = s.data[0][0][:1]
        record.update(accuracy=accuracy(model, s.data[1]), flops=count_flops(model, (x,))
                      / base["flops"], params=sum(p.numel() for p in model.parameters())
                      / base["params"], wall=wall, cpu=cpu, note=note)
    except Exception as exc:  # noqa: BLE001 - a failing run is a row with its reason
        record.update(error=peers.one_line(exc), wall=time.perf_counter() - wall)
    return record


def run_unit(task: str, seed: int, epochs: int, grid: list[tuple[str, float]], threads: int = 1
             ) -> list[dict]:
    """Every (method, target) of ``grid`` plus the dense run at one task and seed."""
    torch.set_num_threads(threads)
    data = TASKS[task]()
    s = Setting(task, data, epochs, seed)
    ref = s.model()
    x = data[0][0][:1]
    base = {"flops": count_flops(ref, (x,)), "params": sum(p.numel() for p in ref.parameters())}
    records = []
    for name, target in [(DENSE, 0.0)] + grid:
        r = measure(name, s, target, base)
        records.append(r)
        what = f"error {r['error']}" if "error" in r else \
            f"acc {r['accuracy']:.3f}, FLOPs {r['flops']:.3f}"
        print(f"  {task} seed {seed} {name} {target:g}: {what}, {r['wall']:.1f} s",
              file=sys.stderr, flush=True)
    return records


def _unit(args: tuple) -> list[dict]:
    return run_unit(*args)


def grid_of(spec: Spec, args: argparse.Namespace) -> tuple[float, ...]:
    """The targets ``spec`` runs: the FLOPs levels, or its grid of channel shares."""
    return args.levels if spec.flops else (args.targets or spec.targets)


def run_all(args: argparse.Namespace, specs: list[Spec]) -> list[dict]:
    grid = [(spec.name, t) for spec in specs for t in grid_of(spec, args)]
    units = [(task, seed, args.epochs, grid, args.threads) for task in args.tasks
             for seed in range(args.seeds)]
    if args.jobs <= 1:
        return [r for u in units for r in run_unit(*u)]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        return [r for rs in pool.map(_unit, units, chunksize=1) for r in rs]


# ---- the analysis ----------------------------------------------------------------------------

def levels_of(records: list[dict], task: str, method: str, seeds: list[int],
              levels: tuple[float, ...] = LEVELS
              ) -> dict[float, tuple[dict[int, float | None], str]]:
    """Per FLOPs level: the method's accuracy by seed (its run for the level when the method
    targets FLOPs, else interpolated), and why a seed has none."""
    out = {}
    targets_flops = method in by_name() and by_name()[method].flops
    for level in levels:
        by_seed, whys = {}, {}
        for seed in seeds:
            runs = [r for r in records if r["task"] == task and r["method"] == method
                    and r["seed"] == seed and "error" not in r]
            if targets_flops:
                hit = [r["accuracy"] for r in runs if math.isclose(r["target"], level)]
                value, why = (hit[0], "") if hit else (None, "no measured point")
            else:
                value, why = paired.at_flops([(r["flops"], r["accuracy"]) for r in runs], level)
            by_seed[seed] = value
            if why:
                whys.setdefault(why.replace("outside its points (FLOPs ", "").rstrip(")"),
                                []).append(seed)
        out[level] = (by_seed, "; ".join(
            f"seed{'s' * (len(s) > 1)} {', '.join(map(str, s))}: "
            + (w if w == "no measured point" else f"points span FLOPs {w}")
            for w, s in whys.items()))
    return out


def verdicts(records: list[dict], tasks: list[str], specs: list[Spec], seeds: list[int],
             levels: tuple[float, ...] = LEVELS) -> list[dict]:
    """One verdict per task, otofx method, peer and FLOPs level."""
    out = []
    mine = [s.name for s in specs if not s.peer]
    theirs = [s.name for s in specs if s.peer]
    for task in tasks:
        at = {m: levels_of(records, task, m, seeds, levels) for m in mine + theirs}
        for m in mine:
            for p in theirs:
                for level in levels:
                    (a, why_a), (b, why_b) = at[m][level], at[p][level]
                    v = paired.verdict(a, b, why_a, why_b)
                    out.append(dict(task=task, method=m, peer=p, level=level, verdict=v.word,
                                    mean=v.mean, se=v.se, n=len(v.diffs), cell=v.cell(),
                                    method_acc=_mean(a), peer_acc=_mean(b)))
    return out


def _mean(values: dict[int, float | None]) -> float | None:
    vals = [v for v in values.values() if v is not None]
    return statistics.fmean(vals) if vals else None


def summary_lines(table: list[dict], specs: list[Spec], tasks: list[str]) -> list[str]:
    """Counts of beats/ties/losses/n/a per otofx method (and per peer), every loss named, and
    the issue's target (tie or beat every peer at every FLOPs point on every task)."""
    lines = []
    for m in [s.name for s in specs if not s.peer]:
        rows = [r for r in table if r["method"] == m]
        if not rows:
            continue
        count = {w: sum(r["verdict"] == w for r in rows) for w in ("beats", "ties", "loses", "n/a")}
        per_peer = []
        for p in dict.fromkeys(r["peer"] for r in rows):
            pr = [r for r in rows if r["peer"] == p]
            per_peer.append(f"{p}: " + "/".join(str(sum(r["verdict"] == w for r in pr))
                                                for w in ("beats", "ties", "loses", "n/a")))
        met = count["loses"] == 0 and count["n/a"] == 0
        lines.append(f"- **{m}**: beats {count['beats']}, ties {count['ties']}, loses "
                     f"{count['loses']}, n/a {count['n/a']} of {len(rows)} comparisons "
                     f"(beats/ties/loses/n/a by peer: {'; '.join(per_peer)}). Target (tie or "
                     f"beat every peer at every FLOPs point on {', '.join(tasks)}): "
                     + ("met." if met else f"MISSED ({count['loses']} lost, {count['n/a']} not "
                                           "comparable at equal FLOPs)."))
        for r in rows:
            if r["verdict"] == "loses":
                lines.append(f"  - loses to {r['peer']} on {r['task']} at {r['level']:g} of "
                             f"the FLOPs: {100 * r['mean']:+.2f} ± {100 * r['se']:.2f} pt")
    return lines or ["- no otofx method ran against a peer"]


def point_rows(records: list[dict], tasks: list[str], names: list[str]) -> list[list[str]]:
    """Each (task, method, target) measured: means over seeds, wall time over the dense run's."""
    rows = []
    for task in tasks:
        dense_wall = {r["seed"]: r["wall"] for r in records if r["task"] == task
                      and r["method"] == DENSE and "error" not in r}
        for name in names:
            targets = sorted({r["target"] for r in records if r["task"] == task
                              and r["method"] == name})
            for t in targets:
                rs = [r for r in records if r["task"] == task and r["method"] == name
                      and r["target"] == t]
                ok = [r for r in rs if "error" not in r]
                errs = [r for r in rs if "error" in r]
                cell_t = "—" if name == DENSE else f"{t:g}"
                if not ok:
                    rows.append([task, name, cell_t, f"failed: {errs[0]['error']}", "", "", "",
                                 "", "0"])
                    continue
                ratio = [r["wall"] / dense_wall[r["seed"]] for r in ok if r["seed"] in dense_wall]
                rows.append([task, name, cell_t, _pm([r["accuracy"] for r in ok]),
                             _span([r["flops"] for r in ok]), _span([r["params"] for r in ok]),
                             ok[-1].get("note") or "—",
                             f"{statistics.median(ratio):.2f}x" if ratio else "—",
                             f"{len(ok)}" + (f" ({len(errs)} failed: {errs[0]['error']})"
                                             if errs else "")])
    return rows


def level_rows(records: list[dict], tasks: list[str], names: list[str], seeds: list[int],
               levels: tuple[float, ...] = LEVELS) -> list[list[str]]:
    """Each method's interpolated accuracy at each FLOPs level: mean ± SE over seeds."""
    rows = []
    for task in tasks:
        dense = [r["accuracy"] for r in records if r["task"] == task and r["method"] == DENSE
                 and "error" not in r]
        rows.append([task, f"{DENSE} (FLOPs 1.0)", _pm_se(dense) if dense else "—"]
                    + [""] * (len(levels) - 1))
        for name in names:
            at = levels_of(records, task, name, seeds, levels)
            cells = []
            for level in levels:
                by_seed, why = at[level]
                vals = [v for v in by_seed.values() if v is not None]
                cells.append((_pm_se(vals) + (f" (n={len(vals)})" if len(vals) < len(seeds)
                                              else "")) if vals else f"n/a: {why}")
            rows.append([task, name] + cells)
    return rows


def landing_lines(records: list[dict], tasks: list[str], specs: list[Spec],
                  levels: tuple[float, ...]) -> list[str]:
    """Per FLOPs-targeting method: FLOPs kept over the level asked, worst over runs."""
    lines = []
    for spec in [s for s in specs if s.flops]:
        off = [r["flops"] / r["target"] - 1 for r in records if r["method"] == spec.name
               and r["task"] in tasks and "error" not in r and r["target"] in levels]
        if off:
            worst = max(off, key=abs)
            how = "target_flops" if spec.kind == "otofx" else "pruning_ratio bisected"
            lines.append(f"- {spec.name} ({how}): FLOPs kept / level asked, median "
                         f"{1 + statistics.median(off):.3f}, worst {1 + worst:.3f} over "
                         f"{len(off)} runs")
    return lines or ["- none ran"]


def _pm(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def _pm_se(values: list[float]) -> str:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.3f} ± {se:.3f}"


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{statistics.fmean(values):.3f}" + (f" ({lo:.3f}-{hi:.3f})" if hi - lo > 5e-4
                                                 else "")


def wall_lines(records: list[dict], tasks: list[str], names: list[str]) -> list[str]:
    """Median over runs of (the run's wall time / the dense run's at the same task and seed)."""
    lines = []
    for name in names:
        ratios, cpu = [], []
        for task in tasks:
            dense = {r["seed"]: r for r in records if r["task"] == task and r["method"] == DENSE
                     and "error" not in r}
            for r in records:
                if r["task"] == task and r["method"] == name and "error" not in r \
                        and r["seed"] in dense:
                    ratios.append(r["wall"] / dense[r["seed"]]["wall"])
                    cpu.append(r["cpu"] / dense[r["seed"]]["cpu"])
        if ratios:
            lines.append(f"- {name}: {statistics.median(ratios):.2f}x the dense run's wall time "
                         f"(median of {len(ratios)} runs, {min(ratios):.2f}-{max(ratios):.2f}); "
                         f"CPU time {statistics.median(cpu):.2f}x")
    return lines


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def plot(records: list[dict], tasks: list[str], names: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 5), squeeze=False)
    markers = "osD^vxP*"
    for ax, task in zip(axes[0], tasks):
        dense = [r["accuracy"] for r in records if r["task"] == task and r["method"] == DENSE
                 and "error" not in r]
        if dense:
            ax.axhline(statistics.fmean(dense), color="k", ls="--", lw=1, label=DENSE)
        for i, name in enumerate(names):
            pts = []
            for t in sorted({r["target"] for r in records if r["method"] == name}):
                ok = [r for r in records if r["task"] == task and r["method"] == name
                      and r["target"] == t and "error" not in r]
                if ok:
                    pts.append((statistics.fmean(r["flops"] for r in ok),
                                statistics.fmean(r["accuracy"] for r in ok),
                                statistics.stdev(r["accuracy"] for r in ok) if len(ok) > 1 else 0))
            if pts:
                pts.sort()
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                            marker=markers[i % len(markers)], capsize=3, label=name,
                            ls="-" if not by_name()[name].peer else ":")
        for level in LEVELS:
            ax.axvline(level, color="grey", lw=0.6, alpha=0.5)
        ax.set_xscale("log")
        ax.set_xticks([0.02, 0.03] + sorted(LEVELS) + [1.0])
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel="FLOPs kept (share of the dense model, log scale)", ylabel="test accuracy",
               title=f"{task}: accuracy vs FLOPs (mean ± sd over seeds per target)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(records: list[dict], table: list[dict], args: argparse.Namespace, specs: list[Spec],
           skipped: dict[str, str], start: dict, end: dict, seconds: float, plot_path: Path
           ) -> str:
    names = [s.name for s in specs]
    seeds = list(range(args.seeds))
    verdict_rows = [[r["task"], r["method"], r["peer"], f"{r['level']:g}",
                     "—" if r["method_acc"] is None else f"{r['method_acc']:.3f}",
                     "—" if r["peer_acc"] is None else f"{r['peer_acc']:.3f}", r["cell"]]
                    for r in table]
    grids = "; ".join(f"{s.name} {'FLOPs ' if s.flops else ''}"
                      f"{', '.join(f'{t:g}' for t in grid_of(s, args))}" for s in specs)
    rel = os.path.relpath(plot_path, args.out.parent) if args.out else str(plot_path)
    skipped_lines = [f"- {n}: {why}" for n, why in skipped.items()]
    parts = [
        paired.stamp_line(start, end),
        f"Settings: tasks {', '.join(args.tasks)}; {args.epochs} epochs; seeds 0-{args.seeds - 1} "
        f"(paired: the same initialisation and batch order for every method at a seed); "
        f"{'quick size; ' if args.quick else ''}jobs {args.jobs}, torch threads {args.threads} "
        f"per job; total {seconds:.0f} s. Targets (FLOPs levels, landed on by the method; "
        f"otherwise shares of the channels): {grids}.",
        "### Summary (generated from the verdicts below)",
        "\n".join(summary_lines(table, specs, args.tasks)),
        "### Verdicts: each otofx method against each peer at equal FLOPs",
        f"Every final model's batch-norm statistics are recomputed over the first "
        f"{CALIBRATION_BATCHES} training batches before it is measured, the same for every method. "
        "A method that targets FLOPs (otofx's target_flops, torch-pruning's bisected ratio) is "
        "read at its run for the level (where it landed: the last table and the landing lines). "
        "A grid method's accuracy at a FLOPs level is interpolated per seed, linearly in "
        "log(FLOPs) between its two measured points that bracket the level (no extrapolation: "
        "a level outside its points is n/a with the reason). The paired difference is otofx minus peer, "
        "in accuracy points, mean ± standard error over seeds; 'beats' / 'loses' only when the "
        "mean is more than twice its standard error, otherwise 'ties'.",
        markdown_table(["task", "otofx method", "peer", "FLOPs", "otofx acc", "peer acc",
                        "verdict: paired difference"], verdict_rows)
        if verdict_rows else "(no otofx method and peer both ran)",
        "### Accuracy at each FLOPs level (mean ± SE over seeds, interpolated as above)",
        markdown_table(["task", "method"] + [f"FLOPs {lv:g}" for lv in args.levels],
                       level_rows(records, args.tasks, names, seeds, args.levels)),
        "### Where the FLOPs-targeting methods landed",
        "\n".join(landing_lines(records, args.tasks, specs, args.levels)),
        "### Every measured point",
        "Accuracy: top-1 on the fixed test split (397 images) of the final (compressed) model, "
        "mean ± sd over seeds; FLOPs / params kept: mean (range over seeds) of the final model "
        "against the dense one; wall: median over seeds of the run's wall time (analysis, "
        "training, compression: everything the user waits for) over the dense run's at the same "
        "seed.",
        markdown_table(["task", "method", "target", "test accuracy", "FLOPs kept", "params kept",
                        "note", "wall / dense", "n"],
                       point_rows(records, args.tasks, [DENSE] + names)),
        "### Wall time the user waits, over a dense run of the same length",
        "\n".join(wall_lines(records, args.tasks, names)) + (
            "\n\n(Runs in parallel jobs share the machine: ratios are noisier.)"
            if args.jobs > 1 else ""),
    ]
    if skipped_lines:
        parts += ["### Not run", "\n".join(skipped_lines)]
    parts.append(f"![accuracy vs FLOPs]({rel})")
    return "\n\n".join(parts)


# ---- the command line ------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 seeds, 2 targets, 4 epochs (a minute or two)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"of {', '.join(TASKS)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 5, --quick 2)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 10, --quick 4)")
    parser.add_argument("--targets", default=None,
                        help="one grid of channel shares for every grid method instead of each "
                             "row's own")
    parser.add_argument("--levels", default=None,
                        help="the FLOPs levels (default 0.5,0.3,0.15,0.07; --quick 0.5,0.15)")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated rows of METHODS (default all): "
                             f"{', '.join(s.name for s in METHODS)}; dense always runs")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes over (task, seed), one torch thread each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--plot", type=Path, default=None,
                        help="the figure (default: next to --out as .png)")
    parser.add_argument("--out", type=Path, help="write the markdown here, and the .json beside")
    args = parser.parse_args(argv)
    args.tasks = args.tasks.split(",")
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}: choose from {list(TASKS)}")
    if args.targets:
        args.targets = tuple(float(t) for t in args.targets.split(","))
    elif args.quick:
        args.targets = QUICK_TARGETS
    args.levels = tuple(float(t) for t in args.levels.split(",")) if args.levels else (
        QUICK_LEVELS if args.quick else LEVELS)
    args.seeds = args.seeds or (2 if args.quick else 5)
    args.epochs = args.epochs or (4 if args.quick else 10)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.plot is None:
        args.plot = args.out.with_suffix(".png") if args.out else RESULTS / "compress_quality.png"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        specs, skipped = available(args.methods.split(",") if args.methods else None)
    except SpecError as exc:
        print(f"compress_quality: {exc}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start, t0 = paired.stamp(), time.perf_counter()
    print(paired.stamp_line(start), flush=True)
    try:
        records = run_all(args, specs)
    finally:
        torch.set_num_threads(threads)
    seconds, end = time.perf_counter() - t0, paired.stamp()
    table = verdicts(records, args.tasks, specs, list(range(args.seeds)), args.levels)
    plot(records, args.tasks, [s.name for s in specs], args.plot)
    body = report(records, table, args, specs, skipped, start, end, seconds, args.plot)
    print("\n" + body)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(body + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(dict(
            stamp=start, stamp_end=end, seconds=seconds,
            settings=dict(tasks=args.tasks, seeds=args.seeds, epochs=args.epochs,
                          jobs=args.jobs, quick=args.quick, levels=args.levels,
                          methods=[{**dataclasses.asdict(s), "targets": grid_of(s, args)}
                                   for s in specs]),
            skipped=skipped, runs=records, verdicts=table), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
