"""The peer packages, loaded if installed: torch-pruning (DepGraph) and only-train-once.

Each loader returns the package's entry point or a one-line reason why it is not available; it
never raises. only-train-once 3.0.1 builds its graph through TorchScript-to-ONNX internals that
recent torch moved; :func:`load_oto` points the old names at the new places for this process only.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import sys
import types
import warnings
from typing import Any

import torch
from torch import nn


def one_line(exc: BaseException) -> str:
    """``exc`` as one short line, for a table cell."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:100]


def load_torch_pruning() -> tuple[Any | None, str]:
    """``(torch_pruning module, "")`` or ``(None, reason)``."""
    try:
        import torch_pruning
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        return None, one_line(exc)
    return torch_pruning, ""


def _shim_torch_onnx() -> None:
    """Re-expose the torch.onnx internals only-train-once 3.0.1 imports, where torch moved them."""
    try:
        importlib.import_module("torch.onnx._globals")  # older torch still has it
    except ImportError:
        from torch.onnx._internal.torchscript_exporter import _globals
        sys.modules["torch.onnx._globals"] = _globals
    if not hasattr(torch.onnx, "_optimize_graph"):
        from torch.onnx._internal.torchscript_exporter import utils as ts_utils
        torch.onnx._optimize_graph = ts_utils._optimize_graph


def _shim_oto_symbolic_helper() -> None:
    """Give only-train-once's graph utils the symbolic_helper names torch dropped."""
    from only_train_once.graph import utils as oto_utils
    helper = oto_utils.symbolic_helper
    if hasattr(helper, "is_caffe2_aten_fallback") and hasattr(helper, "_quantized_ops"):
        return
    from torch.onnx._internal.torchscript_exporter import symbolic_helper as internal
    oto_utils.symbolic_helper = types.SimpleNamespace(
        _quantized_ops=getattr(internal, "_quantized_ops", set()),
        is_caffe2_aten_fallback=lambda: False)


def load_oto() -> tuple[Any | None, str]:
    """``(only_train_once.OTO, "")`` or ``(None, reason)``, applying the torch-compat shims."""
    try:
        if importlib.util.find_spec("only_train_once") is None:
            return None, "not installed (pip install only-train-once==3.0.1)"
        _shim_torch_onnx()
        from only_train_once import OTO
        _shim_oto_symbolic_helper()
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        return None, one_line(exc)
    return OTO, ""


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The last Linear layer (the classifier), which a pruner must leave alone."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def tp_dependency_graph(tp: Any, model: nn.Module, x: torch.Tensor) -> Any:
    """torch-pruning's DependencyGraph of ``model``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=x)


def tp_prune(tp: Any, model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    """torch-pruning's full magnitude prune of ``ratio`` of the channels; mutates ``model``."""
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
            ignored_layers=classifier_layers(model), num_heads=heads)
        pruner.step()
    return model


TP_IMPORTANCES = ("l2", "taylor")


def tp_pruner(tp: Any, model: nn.Module, x: torch.Tensor, ratio: float, importance: str,
              global_pruning: bool, iterative_steps: int, **options: Any) -> Any:
    """torch-pruning 1.6's ``BasePruner`` over ``model`` (the classifier left alone) reaching
    ``ratio`` of the channels after ``iterative_steps`` calls of ``step()`` (linear schedule).

    ``importance``: ``"l2"`` (``MagnitudeImportance(p=2)``) or ``"taylor"``
    (``TaylorImportance()``, which reads ``.grad``: back-propagate a loss before each step).
    ``global_pruning`` ranks every group together; ``options`` go to ``BasePruner`` as they are
    (``max_pruning_ratio``, ``round_to``, ...)."""
    if importance not in TP_IMPORTANCES:
        raise ValueError(f"torch-pruning importance {importance!r}: choose from {TP_IMPORTANCES}")
    imp = (tp.importance.MagnitudeImportance(p=2) if importance == "l2"
           else tp.importance.TaylorImportance())
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.pruner.BasePruner(
            model, x, importance=imp, global_pruning=global_pruning, pruning_ratio=ratio,
            iterative_steps=iterative_steps, ignored_layers=classifier_layers(model),
            num_heads=heads, **options)


@contextlib.contextmanager
def _cuda_is_identity() -> Any:
    """``Tensor.cuda()`` returns the tensor itself while inside (only where CUDA is missing)."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def oto_on_cpu(optimizer: Any) -> Any:
    """Let only-train-once's HESSO step on a CPU-only machine: its redundant-group selection
    hard-codes ``.cuda()``; this instance's ``step`` runs with ``.cuda()`` as the identity."""
    step = optimizer.step

    def cpu_step(*args: Any, **kwargs: Any) -> Any:
        with _cuda_is_identity():
            return step(*args, **kwargs)

    optimizer.step = cpu_step
    return optimizer


def oto_graph(oto_cls: Any, model: nn.Module, x: torch.Tensor) -> Any:
    """only-train-once's graph construction, ``OTO(model, dummy_input)``, its prints silenced."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return oto_cls(model, x)
