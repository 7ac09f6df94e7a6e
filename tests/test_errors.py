"""The error catalogue (docs/errors.md): every ``OtofxError`` subclass raised from the public API,
its message naming what was wrong, where, and what to do."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import otofx
from otofx.testing import zero_groups

CATALOGUE = Path(__file__).parent.parent / "docs" / "errors.md"


def all_error_classes() -> set[type]:
    found, todo = set(), [otofx.OtofxError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return {c for c in found if c.__module__.startswith("otofx")}


def raised(cls: type, fn, *args, **kwargs) -> str:
    """The message of the ``cls`` (exactly that class) that ``fn(*args, **kwargs)`` raises."""
    with pytest.raises(otofx.OtofxError) as info:
        fn(*args, **kwargs)
    assert type(info.value) is cls, f"raised {type(info.value).__name__}: {info.value}"
    return str(info.value)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.a(x)))


class Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class HasBranchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.gate = Branchy()

    def forward(self, x):
        return self.gate(self.a(x))


class Noisy(MLP):
    """Draws random numbers in eval mode: shrink's check cannot match it."""

    def forward(self, x):
        return super().forward(x) + torch.rand_like(x[:, :3])


X = torch.randn(2, 4)


def test_every_error_class_is_exported_documented_and_triggered_here():
    doc = CATALOGUE.read_text()
    source = Path(__file__).read_text()
    for cls in all_error_classes():
        assert getattr(otofx, cls.__name__, None) is cls, f"otofx.{cls.__name__} is not exported"
        assert re.search(rf"^## `{cls.__name__}`", doc, re.M), f"{cls.__name__} not in {CATALOGUE}"
        if cls is not otofx.OtofxError:
            assert f"otofx.{cls.__name__}," in source, f"no test raises {cls.__name__}"
    assert "docs/errors.md" in (CATALOGUE.parent.parent / "README.md").read_text()


def test_otofx_error_shrink_wants_a_graph_module():
    message = raised(otofx.OtofxError, otofx.shrink, MLP())
    assert "GraphModule" in message and "MLP" in message and "otofx.trace" in message


def test_trace_error_names_the_module_and_suggests_a_leaf():
    message = raised(otofx.TraceError, otofx.trace, HasBranchy())
    assert "inside module 'gate' (Branchy)" in message
    assert "leaf_modules=['gate']" in message and "control flow" in message
    assert "fall back to torch.export" in message          # what else the user can do
    message = raised(otofx.TraceError, otofx.trace, 42)
    assert "expected an nn.Module" in message and "int" in message


def test_trace_error_when_neither_fx_nor_export_can_trace():
    message = raised(otofx.TraceError, otofx.trace, Branchy(), (X,))
    assert "neither torch.fx nor torch.export could trace Branchy" in message
    assert "leaf module" in message


def test_trace_error_when_save_cannot_export(tmp_path):
    message = raised(otofx.TraceError, otofx.save, Branchy(), tmp_path / "b.pt2", (X,))
    assert "torch.export could not export Branchy" in message and "state_dict" in message
    assert not (tmp_path / "b.pt2").exists()


def test_shape_error_names_the_node_and_the_inputs():
    gm = otofx.trace(MLP())
    message = raised(otofx.ShapeError, otofx.analyze, gm, (torch.randn(2, 5),))
    assert "node 'a'" in message and "x: (2, 5) float32" in message
    assert "Pass example inputs with the shapes and dtypes" in message
    message = raised(otofx.ShapeError, otofx.analyze, gm, (X, X))
    assert "got 2 example inputs but the graph takes 1 (x)" in message
    message = raised(otofx.ShapeError, otofx.analyze, gm, {"x": X, "mask": X})
    assert "['mask']" in message and "takes (x)" in message
    message = raised(otofx.ShapeError, otofx.compress, MLP(), otofx.DHSPGConfig(), {"y": X})
    assert "['y']" in message


def test_analysis_error_says_what_is_missing():
    gm = otofx.trace(MLP())
    message = raised(otofx.AnalysisError, otofx.analyze, gm, None)
    assert "needs example inputs" in message and "analyze(gm, (torch.randn" in message
    message = raised(otofx.AnalysisError, otofx.shrink, gm)
    assert "otofx.analyze" in message and "example_inputs" in message
    other = otofx.analyze(otofx.trace(HasBranchy().a), (torch.randn(2, 4),))
    message = raised(otofx.AnalysisError, otofx.shrink, gm, other)
    assert "different graph" in message and "run otofx.analyze on this GraphModule" in message
    message = raised(otofx.AnalysisError, otofx.compress, nn.Identity(), otofx.DHSPGConfig(), (X,))
    assert "Identity has no trainable parameter" in message and "otofx.shrink" in message


def test_shrink_error_names_the_first_divergence():
    gm = otofx.trace(Noisy())
    analysis = otofx.analyze(gm, (X,))
    zero_groups(gm, analysis, 0.5)
    message = raised(otofx.ShrinkError, otofx.shrink, gm, analysis)
    assert "differs from the original" in message and "verify=False" in message
    assert "First divergence: node 'rand_like'" in message
    small = otofx.shrink(gm, analysis, verify=False)                 # what the message offers
    assert small.a.out_features == 4


def test_config_error_names_the_field():
    message = raised(otofx.ConfigError, otofx.DHSPGConfig, lr=0.0)
    assert "DHSPGConfig.lr = 0.0" in message and "positive" in message
    message = raised(otofx.ConfigError, otofx.HESSOConfig, pruning_steps=2, pruning_periods=3)
    assert "HESSOConfig.pruning_periods = 3" in message and "between 1 and pruning_steps" in message
    message = raised(otofx.ConfigError, otofx.DHSPGConfig, start_pruning_step=5, pruning_steps=10,
                     total_steps=12)
    assert "must end within total_steps = 12" in message
    message = raised(otofx.ConfigError, otofx.compress, MLP(), {"lr": 0.1}, (X,))
    assert "otofx.DHSPGConfig" in message and "dict" in message
    message = raised(otofx.ConfigError, otofx.backend, inner="no-such-backend")
    assert "no-such-backend" in message


def test_non_finite_gradient_error_names_the_parameter_and_changes_nothing():
    job = otofx.compress(MLP(), otofx.DHSPGConfig(lr=0.1, momentum=0.9), (X,))
    job.module(X).sum().backward()
    job.optimizer.step()
    before = {k: v.clone() for k, v in job.module.state_dict().items()}
    state = job.optimizer.state_dict()
    job.optimizer.zero_grad()
    job.module(X).sum().backward()
    job.module.head.bias.grad[1] = float("inf")
    message = raised(otofx.NonFiniteGradientError, job.optimizer.step)
    assert "the gradient of 'head.bias' has NaN or inf values at step 1" in message
    assert "Lower the learning rate, clip gradients or check the loss" in message
    for k, v in job.module.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert job.optimizer.state_dict()["state"].keys() == state["state"].keys()
    assert job.optimizer.steps_taken == 1


def test_finite_gradients_whose_sum_overflows_are_not_refused():
    # the fast test sums each gradient: float32's largest values overflow that sum to inf,
    # and the element-by-element scan must then find every value finite and let the step run
    job = otofx.compress(MLP(), otofx.DHSPGConfig(lr=1e-40, momentum=0.0), (X,))
    job.module(X).sum().backward()
    big = torch.finfo(torch.float32).max
    job.module.head.bias.grad[:2] = big
    assert not torch.isfinite(job.module.head.bias.grad.sum())
    job.optimizer.step()
    assert job.optimizer.steps_taken == 1


def test_opposite_infinities_in_one_gradient_are_refused():
    job = otofx.compress(MLP(), otofx.DHSPGConfig(lr=0.1), (X,))
    job.module(X).sum().backward()
    job.module.head.bias.grad[0] = float("inf")
    job.module.head.bias.grad[1] = -float("inf")
    message = raised(otofx.NonFiniteGradientError, job.optimizer.step)
    assert "'head.bias'" in message
    assert job.optimizer.steps_taken == 0


@torch.library.custom_op("otofx_errors::twist", mutates_args=())
def twist(x: torch.Tensor) -> torch.Tensor:
    """An op with no ONNX translation."""
    return x.flip(1)


@twist.register_fake
def _(x):
    return torch.empty_like(x)


class Twisted(MLP):
    def forward(self, x):
        return self.head(torch.ops.otofx_errors.twist(self.a(x)))


def test_export_error_names_the_node_and_the_exporters_cause(tmp_path):
    pytest.importorskip("onnxscript")
    from otofx.integrations.onnx_export import export_onnx
    gm = otofx.trace(Twisted())
    message = raised(otofx.ExportError, export_onnx, gm, (X,), tmp_path / "twisted.onnx")
    assert "could not export" in message and "at node 'twist'" in message
    assert "otofx_errors.twist" in message and "No ONNX function found" in message
    assert "custom_translation_table" in message and "otofx.save" in message    # what to do
    assert len(message) < 1000


def test_missing_dependency_error_names_the_package_and_the_pip_command(monkeypatch, tmp_path):
    from otofx.integrations.onnx_export import export_onnx
    monkeypatch.setitem(sys.modules, "onnxscript", None)           # as if not installed
    message = raised(otofx.MissingDependencyError, export_onnx, MLP(), (X,), tmp_path / "m.onnx")
    assert "needs the package 'onnxscript'" in message and "pip install onnxscript" in message
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ImportError):                               # also an ImportError
        export_onnx(MLP(), (X,), tmp_path / "m.onnx")
