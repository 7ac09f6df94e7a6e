"""``otofx.compress``: analysis + optimizer in one job; ``job.subnet()`` is the smaller model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.fx import GraphModule

from otofx.analysis import Analysis
from otofx.api import analyze, shrink, trace
from otofx.config import DHSPGConfig, H2SPGConfig, HESSOConfig, _BaseConfig
from otofx.errors import ConfigError
from otofx.flops import count_flops
from otofx.inputs import inputs_on_module_device
from otofx.optim_base import GroupSparsityOptimizer


def make_optimizer(module: nn.Module, analysis: Analysis, config: _BaseConfig
                   ) -> GroupSparsityOptimizer:
    from otofx.dhspg import DHSPG
    from otofx.h2spg import H2SPG
    from otofx.hesso import HESSO
    if isinstance(config, H2SPGConfig):
        return H2SPG(module, analysis, config)
    if isinstance(config, DHSPGConfig):
        return DHSPG(module, analysis, config)
    if isinstance(config, HESSOConfig):
        return HESSO(module, analysis, config)
    raise ConfigError(f"unknown optimizer config {type(config).__name__}: use otofx.DHSPGConfig, "
                      "otofx.H2SPGConfig or otofx.HESSOConfig.")


@dataclass
class CompressionJob:
    """``module`` is trained with ``optimizer``; ``subnet()`` shrinks its current weights."""

    module: GraphModule
    optimizer: GroupSparsityOptimizer
    analysis: Analysis
    example_inputs: tuple
    _baseline: dict = field(default_factory=dict, repr=False)

    def subnet(self, verify: bool = True) -> GraphModule:
        """A new, smaller GraphModule computing what ``module`` computes now (eval mode);
        ``module`` is not modified."""
        return shrink(self.module, self.analysis, verify=verify)

    def report(self, subnet: GraphModule | None = None) -> str:
        """Target vs reached sparsity, parameters and FLOPs before/after, per-group widths."""
        from otofx.report import compression_report
        return compression_report(self, subnet if subnet is not None else self.subnet())

    def baseline(self) -> dict:
        if not self._baseline:
            self._baseline = {
                "params": sum(p.numel() for p in self.module.parameters()),
                "flops": count_flops(self.module, inputs_on_module_device(self.module, self.example_inputs)),
            }
        return self._baseline


def compress(gm: nn.Module, optimizer_cfg: _BaseConfig, example_inputs: Any,
             attention_unit: str = "head", prune_hidden: bool = True) -> CompressionJob:
    """Analyse ``gm`` and build the optimizer that trains it to the configured group sparsity.

    A GraphModule is trained in place (``job.module is gm``); an ``nn.Module`` is traced from a
    deepcopy first, so the original stays untouched. A model with no prunable group still gets a
    working optimizer (the base variant) and the report says so. ``attention_unit`` and
    ``prune_hidden`` (``False`` keeps a transformer's hidden size): see :func:`otofx.analyze`.
    """
    if not isinstance(optimizer_cfg, _BaseConfig):
        raise ConfigError(f"optimizer_cfg must be otofx.DHSPGConfig, otofx.H2SPGConfig or "
                          f"otofx.HESSOConfig, got "
                          f"{type(optimizer_cfg).__name__}.")
    if not isinstance(gm, GraphModule):
        gm = trace(gm, example_inputs)
    analysis = analyze(gm, example_inputs, attention_unit, prune_hidden)
    optimizer = make_optimizer(gm, analysis, optimizer_cfg)
    job = CompressionJob(gm, optimizer, analysis, analysis.example_inputs)
    job.baseline()
    return job


