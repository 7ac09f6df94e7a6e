"""The shapes pass: run the graph once on example inputs and record every tensor's shape.

Results: ``node.meta["otofx.shape"]`` (a ``torch.Size`` per tensor, a tuple of them for tuple
outputs, None otherwise) and ``node.meta["otofx.dtype"]``; with ``keep_values`` also the graph's
output (``gm.meta["otofx.output"]``) and, when they fit in ``KEEP_BYTES``, the inputs of every
node whose rule may read channels (``OpRule.reads_channels``) in ``gm.meta["otofx.values"]``:
those values and the version each had when the node read it, for ``passes.capture`` to summarise
and drop. The run is in eval mode under
``no_grad``, on the module as it is: no buffer (BatchNorm running stats) is updated and the
training flags are restored afterwards.

Before: ``conv1 = self.conv1(x)``; after, with x of shape (2, 3, 8, 8):
``conv1.meta["otofx.shape"] == torch.Size([2, 16, 8, 8])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter, Node
from torch.fx.passes.infra.pass_base import PassResult

from otofx.errors import ShapeError

from . import rules  # noqa: F401  (registers the op rules the recorder asks)
from .common import evaluation
from .meta import DTYPE, OUTPUT, SHAPE, VALUES
from .registry import RULES

KEEP_BYTES = 1 << 30      # node values kept after the run at most (else only shapes are kept)


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(_describe(v) for v in value)
    return None


def _dtype(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.dtype
    if isinstance(value, (list, tuple)):
        return tuple(_dtype(v) for v in value)
    return None


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


class _Recorder(Interpreter):
    failure: ShapeError | None = None

    def __init__(self, gm: GraphModule, keep_values: bool) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] | None = {} if keep_values else None
        self.read_versions: dict[tuple[str, int], int] = {}   # what each node read, see below
        self.kept_bytes = 0

    def run_node(self, n: Node) -> Any:
        if self.values is not None and n.op.startswith("call_"):
            rule = RULES.lookup(self.module, n)
            if rule is not None and rule.reads_channels:
                self._keep_inputs(n)
        try:
            value = super().run_node(n)
        except Exception as exc:
            inputs = []
            for a in n.all_input_nodes:
                shape, dtype = a.meta.get(SHAPE), a.meta.get(DTYPE)
                dtype = f" {str(dtype).removeprefix('torch.')}" if isinstance(dtype, torch.dtype) else ""
                inputs.append(f"{a.name}: {tuple(shape) if isinstance(shape, torch.Size) else shape}{dtype}")
            self.failure = ShapeError(
                f"the example inputs do not fit node '{n.name}' ({n.format_node()}): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0].rstrip('.')}. Its inputs were "
                f"[{', '.join(inputs)}]. Pass example inputs with the shapes and dtypes the model "
                "expects.")
            raise
        n.meta[SHAPE] = _describe(value)
        n.meta[DTYPE] = _dtype(value)
        return value

    def _keep_inputs(self, n: Node) -> None:
        """Keep the tensors ``n`` reads (a node whose rule may record a consumer site), with the
        version each has now: an in-place op later in the graph (a ReLU(inplace=True), ``+=``)
        changes it, and the kept value is stale then."""
        for i, a in enumerate(n.args):
            x = self.env.get(a) if isinstance(a, Node) else None
            if not isinstance(x, torch.Tensor):
                continue
            self.read_versions[(n.name, i)] = x._version
            if a.name not in self.values:
                self.kept_bytes += _nbytes(x)
                if self.kept_bytes > KEEP_BYTES:
                    self.values = None
                    return
                self.values[a.name] = x


def shapes_pass(gm: GraphModule, example_inputs: Sequence[Any], keep_values: bool = False) -> PassResult:
    """Record shapes and dtypes of every node on ``example_inputs`` (and, with ``keep_values``,
    the output and node values in ``gm.meta``)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(example_inputs) > len(placeholders):
        raise ShapeError(
            f"got {len(example_inputs)} example inputs but the graph takes {len(placeholders)} "
            f"({', '.join(p.name for p in placeholders)})."
        )
    recorder = _Recorder(gm, keep_values)
    with evaluation(gm):
        try:
            output = recorder.run(*example_inputs)
        except Exception as exc:
            if recorder.failure is not None:
                raise recorder.failure from exc   # raised here: torch annotates errors in run()
            raise
    if keep_values:
        gm.meta[OUTPUT] = output
        if recorder.values is not None:
            gm.meta[VALUES] = (recorder.values, recorder.read_versions)
    return PassResult(gm, False)
