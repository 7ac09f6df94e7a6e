"""Compress a YOLO detector with ultralytics' own trainer: ``otofx_trainer(config)``.

    from ultralytics import YOLO
    from otofx.integrations.ultralytics import otofx_trainer

    model = YOLO("yolov8n.yaml")                         # or a pretrained yolov8n.pt
    model.train(trainer=otofx_trainer(otofx.DHSPGConfig(lr=0.01, momentum=0.9, target_group_sparsity=0.5,
                                                        start_pruning_step=..., pruning_steps=...)),
                data="data.yaml", epochs=..., imgsz=640)
    small = model.trainer.otofx_subnet                  # also saved: <run>/weights/otofx_subnet.pt2

ultralytics builds the model, the data loaders, the loss, warm-up, LR schedule, validation and
checkpoints as usual; the trainer only swaps in otofx's optimizer (``build_optimizer``) and, when
training ends, shrinks the trained model into ``otofx_subnet`` (a GraphModule: eval mode returns
what the YOLO model returns) and saves it as a ``torch.export`` program (``otofx.load`` reads it).

How the model is seen: ``trace_yolo`` traces ``model.predict`` with torch.fx *without copying*,
so the graph's layers are the model's own and otofx's optimizer trains the very parameters
ultralytics runs. The detection head (``Detect`` and its subclasses) stays an opaque leaf: it
branches on ``self.training`` and on the input shape, and its input channels are pinned; every
layer before it can shrink. The EMA copy ultralytics validates and saves follows the trained
weights exactly (decay 0): an average would keep removed channels small but not zero.

Settings that would train with another optimizer (``optimizer=`` other than ``"auto"``) raise
``otofx.ConfigError``; without ultralytics installed, ``otofx.MissingDependencyError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule, Proxy, Tracer

from otofx.compress import CompressionJob, compress
from otofx.config import _BaseConfig
from otofx.errors import ConfigError
from otofx.flops import count_flops
from otofx.integrations import require
from otofx.io import save

_PURPOSE = "otofx.integrations.ultralytics (YOLO training)"
require("ultralytics", purpose=_PURPOSE)
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.nn.modules.head import Detect  # noqa: E402
from ultralytics.utils import LOGGER  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402


class _Predict(nn.Module):
    """``model.predict(x)`` as a forward of one tensor (YOLO's forward also takes a batch dict)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model.predict(x)


class _Sized(Proxy):
    """A proxy of a ``chunk``/``split`` result whose length is known: ``list(x.chunk(2, 1))``
    (ultralytics' C2f) then traces."""

    def __len__(self) -> int:
        return self.__dict__["_length"]

    def __iter__(self):
        return iter([self[i] for i in range(len(self))])


class _YoloTracer(Tracer):
    def __init__(self, leaves: tuple[type[nn.Module], ...]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)

    def proxy(self, node: torch.fx.Node) -> Proxy:
        length = None
        if node.target in ("chunk", torch.chunk) and len(node.args) > 1 and isinstance(node.args[1], int):
            length = node.args[1]
        elif node.target in ("split", torch.split) and len(node.args) > 1 and isinstance(node.args[1], list | tuple):
            length = len(node.args[1])
        if length is None:
            return super().proxy(node)
        sized = _Sized(node, self)
        sized.__dict__["_length"] = length
        return sized


def trace_yolo(model: nn.Module, leaves: tuple[type[nn.Module], ...] = (Detect,)) -> GraphModule:
    """A GraphModule of ``model.predict`` that holds ``model``'s own layers (no copy): training
    the GraphModule's parameters trains ``model``. ``leaves`` stay opaque (the detection head)."""
    wrapper = _Predict(model)
    graph = _YoloTracer(leaves).trace(wrapper)
    return GraphModule(wrapper, graph, type(model).__name__)


class OtofxDetectionTrainer(DetectionTrainer):
    """ultralytics' ``DetectionTrainer`` training with otofx's optimizer; ``otofx_trainer(config)``
    makes one bound to a config (ultralytics builds the trainer from its class)."""

    otofx_config: _BaseConfig | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not isinstance(self.otofx_config, _BaseConfig):
            raise ConfigError("OtofxDetectionTrainer has no otofx config: pass "
                              "trainer=otofx_trainer(otofx.DHSPGConfig(...)) to YOLO(...).train.")
        super().__init__(*args, **kwargs)
        if str(self.args.optimizer).lower() != "auto":
            raise ConfigError(
                f"ultralytics optimizer={self.args.optimizer!r}: with otofx_trainer the optimizer is "
                "otofx's, which drives the groups to zero; leave optimizer='auto' and set lr, "
                "momentum and weight decay in the otofx config.")
        self.otofx_job: CompressionJob | None = None
        self.otofx_subnet: GraphModule | None = None
        self.otofx_report: dict[str, float] = {}
        self.add_callback("on_train_end", _finish)

    def build_optimizer(self, model: nn.Module, name: str = "auto", lr: float = 0.001,
                        momentum: float = 0.9, decay: float = 1e-5, iterations: float = 1e5
                        ) -> torch.optim.Optimizer:
        yolo = unwrap_model(model)
        device = next(yolo.parameters()).device
        example = torch.zeros(2, 3, self.args.imgsz, self.args.imgsz, device=device)
        self.otofx_job = compress(trace_yolo(yolo), self.otofx_config, (example,))
        LOGGER.info(f"otofx: {type(self.otofx_job.optimizer).__name__} over "
                    f"{len(self.otofx_job.analysis.prunable)} prunable groups "
                    f"({sum(g.size for g in self.otofx_job.analysis.prunable)} channels), target group "
                    f"sparsity {self.otofx_config.target_group_sparsity}")
        return self.otofx_job.optimizer

    def _setup_train(self) -> None:
        super()._setup_train()
        if self.ema is not None:
            self.ema.decay = lambda updates: 0.0      # the EMA copy is the trained weights, zeros exact


def otofx_trainer(config: _BaseConfig) -> type[OtofxDetectionTrainer]:
    """A trainer class for ``YOLO(...).train(trainer=...)`` that compresses with ``config``."""
    if not isinstance(config, _BaseConfig):
        raise ConfigError(f"otofx_trainer takes otofx.DHSPGConfig, otofx.HESSOConfig or "
                          f"otofx.H2SPGConfig, got {type(config).__name__}.")
    config.validate()
    return type("OtofxDetectionTrainer", (OtofxDetectionTrainer,), {"otofx_config": config})


def _finish(trainer: OtofxDetectionTrainer) -> None:
    """At the end of training: shrink, report parameters and FLOPs, save the subnet."""
    job = trainer.otofx_job
    if job is None:
        return
    subnet = job.subnet().eval()
    for head in subnet.modules():
        if isinstance(head, Detect):
            head.dynamic = True       # anchors rebuilt per call: the saved program takes any batch and size
    base = job.baseline()
    params = sum(p.numel() for p in subnet.parameters())
    flops = count_flops(subnet, job.example_inputs)
    report = job.optimizer.sparsity_report()
    trainer.otofx_subnet = subnet
    trainer.otofx_report = {"group_sparsity": job.optimizer.group_sparsity(),
                            "zero_channels": report["zero_channels"], "target_channels": report["target_channels"],
                            "params": params, "params_ratio": params / base["params"],
                            "flops": flops, "flops_ratio": flops / base["flops"] if base["flops"] else 1.0}
    path = Path(trainer.wdir) / "otofx_subnet.pt2"
    save(subnet, path, job.example_inputs)
    LOGGER.info(f"otofx: subnet {params:,} parameters ({params / base['params']:.2f}x), "
                f"{flops / base['flops']:.2f}x FLOPs, {report['zero_channels']}/{report['target_channels']} "
                f"channels removed; saved {path}")
