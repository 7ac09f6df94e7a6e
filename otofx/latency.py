"""Latency tables: how a model's measured latency varies with its groups' widths, per device.

A latency budget (``target_latency``) needs to know what a subnet will take before it exists.
Measured once per model and device (as ZipLM does for its structures), then cached: the model is
shrunk to a few uniform widths (every prunable group at 100%, 75%, 50%, 25% of its channels and
at one channel), and at each every node's eager time is measured (median of repeats, the levels'
runs interleaved so that a change in the machine's load falls on all of them alike). Each node
then has a small table of (work, seconds), its work being its FLOPs polynomial in the widths
(``CostModel.node_work``; its output's size for nodes without FLOPs). A subnet's latency is
predicted as the sum over nodes of their time interpolated at the subnet's work: exact in the
shapes, measured in the speed, so a conv shrunk on both sides is priced by its real work rather
than by one group's table.

The sum of node times misjudges some widths: a kernel's speed depends on more than its work
(oneDNN's convolutions run markedly slower at channel counts off a multiple of 8 or 16, and the
uniform levels measured are mostly such multiples). So a budget is checked end to end before it
is used (:func:`end_to_end_ratio`, :func:`otofx.budget.calibrate_latency`): the subnet of the
widths the budget picks is built and timed whole against the dense graph, and the table's aim
is corrected until the measured ratio lands on the target.

Tables are JSON files under ``$OTOFX_CACHE_DIR`` (default ``~/.cache/otofx``)``/latency``,
keyed by the graph's code, parameter and input shapes, the device, the torch version and the
thread count; a budget's corrected aim is cached beside its table.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter, Node

from otofx.cost import PolynomialEvaluator
from otofx.passes.common import evaluation, tensor_named
from otofx.passes.table import AFFINE, PRODUCER

LEVELS = (1.0, 0.75, 0.5, 0.25, 0.0)      # 0.0: every group at one channel


@dataclass
class LatencyTable:
    """Per node, (work, seconds) at the measured width levels: work ascending, one point per
    work, seconds non-decreasing."""

    key: str
    device: str
    nodes: dict[str, list[tuple[int, float]]]

    @property
    def dense(self) -> float:
        return sum(points[-1][1] for points in self.nodes.values() if points)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}:{platform.processor() or platform.machine()}:{os.cpu_count()}"


def table_key(gm: GraphModule, example_inputs: tuple) -> str:
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    shapes = [(n, tuple(p.shape)) for n, p in gm.named_parameters()]
    inputs = [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)]
    text = json.dumps([gm.code, shapes, inputs, _device_name(device), torch.__version__,
                       torch.get_num_threads()])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_dir() -> Path:
    return Path(os.environ.get("OTOFX_CACHE_DIR", Path.home() / ".cache" / "otofx")) / "latency"


class _NodeTimer(Interpreter):
    """Runs a graph, timing every call node (seconds, summed over runs)."""

    def __init__(self, gm: GraphModule, sync: bool) -> None:
        super().__init__(gm)
        self.sync = sync
        self.times: dict[str, list[float]] = {}

    def run_node(self, n: Node) -> Any:
        if not n.op.startswith("call"):
            return super().run_node(n)
        if self.sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = super().run_node(n)
        if self.sync:
            torch.cuda.synchronize()
        self.times.setdefault(n.name, []).append(time.perf_counter() - t)
        return out


def node_times(gm: GraphModule, example_inputs: tuple, repeats: int = 5) -> dict[str, float]:
    """Median eager time of every call node of ``gm`` over ``repeats`` runs (after one warm-up)."""
    return interleaved_node_times([gm], example_inputs, repeats)[0]


def interleaved_node_times(gms: list[GraphModule], example_inputs: tuple, repeats: int = 5
                           ) -> list[dict[str, float]]:
    """:func:`node_times` of each of ``gms``, their runs interleaved (one run of each in turn,
    ``repeats`` rounds), so a change in the machine's load falls on all of them alike."""
    device = next((p.device for gm in gms for p in gm.parameters()), torch.device("cpu"))
    timers = [_NodeTimer(gm, device.type == "cuda") for gm in gms]
    with torch.no_grad(), ExitStack() as stack:   # no_grad outermost: restored last
        for gm in gms:
            stack.enter_context(evaluation(gm))
        for timer in timers:
            timer.run(*example_inputs)
            timer.times.clear()
        for _ in range(repeats):
            for timer in timers:
                timer.run(*example_inputs)
    return [{name: statistics.median(ts) for name, ts in timer.times.items()} for timer in timers]


@torch.no_grad()
def _zero_beyond(gm: GraphModule, groups, widths: dict[str, int]) -> None:
    for g in groups:
        for m in g.slices(PRODUCER, AFFINE):
            t = tensor_named(gm, m.param)
            t.index_fill_(m.dim, m.index[widths[g.name]:].reshape(-1).to(t.device), 0.0)


class Sizer:
    """Smaller copies of an analysed graph at chosen widths (group name -> channels kept, the
    first ones; groups not named stay whole): one working copy, analysed once, its weights
    restored before each shrink. Build one and reuse it across widths."""

    def __init__(self, analysis) -> None:
        from otofx.api import analyze
        self.work = copy.deepcopy(analysis.gm)
        self.analysis = analyze(self.work, analysis.example_inputs)
        self.state = {k: v.clone() for k, v in self.work.state_dict().items()}
        self.full = {g.name: g.size for g in analysis.prunable}

    def __call__(self, widths: dict[str, int]) -> GraphModule:
        from otofx.api import shrink
        self.work.load_state_dict(self.state)
        _zero_beyond(self.work, self.analysis.prunable, self.full | widths)
        return shrink(self.work, self.analysis, verify=False)


def end_to_end_ratio(analysis, widths: list[dict[str, int]], repeats: int = 9,
                     sizer: Sizer | None = None) -> list[float]:
    """For each of ``widths`` (group name -> channels kept, others at full width), the eager
    latency of the graph shrunk to them over the dense graph's: whole forward calls, one of each
    in turn per round (``repeats`` rounds after a warm-up), the median of the rounds' ratios (a
    round's load falls on both sides of its ratio). ``sizer``: a :class:`Sizer` of ``analysis``
    to reuse (one is built otherwise)."""
    gm, inputs = analysis.gm, analysis.example_inputs
    sizer = sizer or Sizer(analysis)
    models = [copy.deepcopy(gm)] + [sizer(w) for w in widths]
    sync = next((p.device for p in gm.parameters()), torch.device("cpu")).type == "cuda"
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad(), ExitStack() as stack:
        for m in models:
            stack.enter_context(evaluation(m))
        for m in models:
            m(*inputs)
        for _ in range(repeats):
            for m, ts in zip(models, times):
                if sync:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                m(*inputs)
                if sync:
                    torch.cuda.synchronize()
                ts.append(time.perf_counter() - t)
    return [statistics.median(t / d for t, d in zip(ts, times[0])) for ts in times[1:]]


def measure_latency_table(analysis, repeats: int = 5) -> LatencyTable:
    """Shrink a copy of the analysed graph to each of ``LEVELS`` and time its nodes."""
    gm, inputs = analysis.gm, analysis.example_inputs
    cost = analysis.cost
    names = [n for n in cost.node_work]
    works = PolynomialEvaluator([cost.node_work[n] for n in names], analysis.prunable,
                                analysis.prunable)
    sizer = Sizer(analysis)
    nodes: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    smalls, level_widths = [], []
    for level in LEVELS:
        widths = {g.name: max(1, round(level * g.size)) for g in analysis.prunable}
        smalls.append(sizer(widths))
        level_widths.append(widths)
    for widths, times in zip(level_widths, interleaved_node_times(smalls, inputs, repeats)):
        work = works(torch.tensor([widths[g.name] for g in analysis.prunable])).reshape(-1)
        for name, w in zip(names, work.tolist()):
            nodes[name].append((int(w), times.get(name, 0.0)))
    for name, points in nodes.items():
        nodes[name] = _monotone(points)
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    return LatencyTable(table_key(gm, inputs), _device_name(device), nodes)


def _monotone(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """One point per work (the median time of the levels that share it), times made
    non-decreasing in work (more work never takes less time: what a drop shows is noise)."""
    by_work: dict[int, list[float]] = {}
    for w, t in points:
        by_work.setdefault(w, []).append(t)
    out, top = [], 0.0
    for w in sorted(by_work):
        top = max(top, statistics.median(by_work[w]))
        out.append((w, top))
    return out


def latency_table(analysis, repeats: int = 5, cache: bool = True) -> LatencyTable:
    """The analysed model's latency table on its device: from the cache when measured before."""
    key = table_key(analysis.gm, analysis.example_inputs)
    path = cache_dir() / f"{key}.json"
    if cache and path.exists():
        data = json.loads(path.read_text())
        return LatencyTable(data["key"], data["device"],
                            {n: [tuple(p) for p in ps] for n, ps in data["nodes"].items()})
    table = measure_latency_table(analysis, repeats)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(table)))
    return table


class LatencyModel:
    """Predicted seconds for a tensor of widths of ``groups`` (others at full width): each node's
    time interpolated (piecewise linear, clamped at the measured ends) at its work. The nodes
    ``skip`` (an erased structure's region) cost nothing; ``zero`` sets widths to zero in the
    others' work (the segment an erased cat operand leaves)."""

    def __init__(self, table: LatencyTable, analysis, groups, skip: set[str] = frozenset(),
                 zero: dict | None = None) -> None:
        cost = analysis.cost
        self.names = [n for n in table.nodes if n in cost.node_work and n not in skip]
        self.works = PolynomialEvaluator([cost.node_work[n].xreplace(zero or {})
                                          for n in self.names], analysis.prunable, groups)
        width = max(len(table.nodes[n]) for n in self.names) if self.names else 1
        self.x = torch.full((len(self.names), width), float("inf"), dtype=torch.float64)
        self.y = torch.zeros((len(self.names), width), dtype=torch.float64)
        for i, n in enumerate(self.names):
            pts = table.nodes[n]
            ys = torch.tensor([p[1] for p in pts], dtype=torch.float64)
            self.x[i, :len(pts)] = torch.tensor([float(p[0]) for p in pts], dtype=torch.float64)
            self.y[i, :len(pts)] = ys
            self.y[i, len(pts):] = ys[-1]
        self.count = torch.tensor([len(table.nodes[n]) for n in self.names])

    def __call__(self, widths: torch.Tensor) -> torch.Tensor:
        w = self.works(widths).to(torch.float64)
        if len(self.names) == 1:
            w = w.unsqueeze(-1)                                # (..., N)
        if w.dim() == 1:
            w = w.unsqueeze(0)
        j = torch.searchsorted(self.x.expand(w.shape[0], -1, -1).contiguous(),
                               w.unsqueeze(-1)).squeeze(-1)   # first point >= work
        last = (self.count - 1).expand_as(j)
        hi = torch.minimum(j, last)
        lo = (hi - 1).clamp(min=0)
        xs, ys = self.x.expand(w.shape[0], -1, -1), self.y.expand(w.shape[0], -1, -1)
        x0, x1 = xs.gather(-1, lo[..., None])[..., 0], xs.gather(-1, hi[..., None])[..., 0]
        y0, y1 = ys.gather(-1, lo[..., None])[..., 0], ys.gather(-1, hi[..., None])[..., 0]
        t = torch.where(x1 > x0, ((w - x0) / (x1 - x0).clamp(min=1e-30)).clamp(0, 1),
                        torch.ones_like(w))
        total = (y0 + t * (y1 - y0)).sum(-1)
        return total if widths.dim() > 1 else total[0]
