"""Compress with Hugging Face's ``transformers.Trainer``: ``OtofxTrainer``.

The Trainer trains ``job.module`` with ``job.optimizer`` (its LR scheduler, gradient clipping,
accumulation, evaluation and checkpoints work as usual); every log line also carries otofx's
sparsity (``otofx_group_sparsity``, ``otofx_zero_channels``, ``otofx_target_channels``), and at the
end of ``train()`` the subnet is built, its parameters and FLOPs logged next to the dense model's
(``otofx_params_ratio``, ``otofx_flops_ratio``) and saved as a ``torch.export`` program
(``<output_dir>/otofx_subnet.pt2``; ``otofx.load`` reads it back, and it takes the inputs
by name, as the model does).

    job = otofx.compress(model, otofx.HESSOConfig(lr=1e-3, variant="adamw", ...), example_batch)
    trainer = OtofxTrainer(job, TrainingArguments(output_dir="out", ...), train_dataset=...)
    trainer.train()
    small = trainer.subnet

A model that came in through ``torch.export`` (HF transformers 5.x) is fixed to the example
batch's shapes: pad every batch to that length and set ``dataloader_drop_last=True``. Settings
that would train with another optimizer (``optimizers=``, ``optimizer_cls_and_kwargs=``,
DeepSpeed, FSDP) raise ``otofx.ConfigError``. SDPA attention dropout follows ``.train()`` and
``.eval()`` in an exported graph too (``otofx.passes.export``): compress the model in training mode.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.fx import GraphModule

from otofx.compress import CompressionJob
from otofx.errors import ConfigError
from otofx.flops import count_flops
from otofx.integrations import require
from otofx.io import save
from otofx.passes.meta import EXPORTED

transformers = require("transformers", purpose="otofx.integrations.hf (the Hugging Face Trainer)")
require("accelerate", purpose="transformers.Trainer")


def sparsity_logs(job: CompressionJob) -> dict[str, float]:
    """What ``OtofxTrainer`` adds to every log: the share of prunable channels that are zero now,
    their count, and the target count."""
    report = job.optimizer.sparsity_report()
    return {"otofx_group_sparsity": job.optimizer.group_sparsity(),
            "otofx_zero_channels": float(report["zero_channels"]),
            "otofx_target_channels": float(report["target_channels"])}


def subnet_logs(job: CompressionJob, small: GraphModule) -> dict[str, float]:
    """Parameters and FLOPs of ``small`` (one forward on the job's example inputs), and their
    ratios to the dense model's."""
    base = job.baseline()
    params = sum(p.numel() for p in small.parameters())
    flops = count_flops(small, job.example_inputs)
    return {"otofx_params": float(params), "otofx_params_ratio": params / base["params"],
            "otofx_flops": float(flops), "otofx_flops_ratio": flops / base["flops"] if base["flops"] else 1.0}


class OtofxTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that trains ``job.module`` with ``job.optimizer``.

    ``save_subnet``: write the subnet to ``<output_dir>/otofx_subnet.pt2`` after ``train()``
    (it is kept in ``self.subnet``, in eval mode, either way). Other arguments go to ``transformers.Trainer``.
    """

    def __init__(self, job: CompressionJob, args: Any = None, *, save_subnet: bool = True,
                 **kwargs: Any) -> None:
        if not isinstance(job, CompressionJob):
            raise ConfigError(f"OtofxTrainer takes the job otofx.compress returns, got "
                              f"{type(job).__name__}: job = otofx.compress(model, config, batch).")
        model = kwargs.pop("model", job.module)
        if model is not job.module:
            raise ConfigError("OtofxTrainer(model=...) is not job.module: the Trainer must train the "
                              "module otofx.compress analysed; leave model= out.")
        optimizer, scheduler = kwargs.pop("optimizers", (None, None))
        if optimizer is not None and optimizer is not job.optimizer:
            raise ConfigError(f"OtofxTrainer(optimizers=({type(optimizer).__name__}, ...)) would train "
                              "with another optimizer than otofx's, which drives the groups to zero; "
                              "pass optimizers=(job.optimizer, scheduler) or only a scheduler via "
                              "TrainingArguments (lr_scheduler_type).")
        if kwargs.get("optimizer_cls_and_kwargs") is not None:
            raise ConfigError("OtofxTrainer(optimizer_cls_and_kwargs=...) is not supported: the "
                              "optimizer is otofx's (configure it in the otofx config: lr, "
                              "variant='adamw', weight_decay, ...).")
        if args is not None:
            _check_args(args, job)
        super().__init__(model=job.module, args=args, optimizers=(job.optimizer, scheduler), **kwargs)
        self.job = job
        self.save_subnet = save_subnet
        self.subnet: GraphModule | None = None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log({**logs, **sparsity_logs(self.job)}, start_time)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        result = super().train(*args, **kwargs)
        self.subnet = self.job.subnet().eval()
        self.log(subnet_logs(self.job, self.subnet))
        if self.save_subnet and self.is_world_process_zero():
            os.makedirs(self.args.output_dir, exist_ok=True)
            names = [str(n.target) for n in self.subnet.graph.nodes if n.op == "placeholder"]
            by_name = ((), dict(zip(names, self.job.example_inputs)))     # called as the model is: by name
            save(self.subnet, os.path.join(self.args.output_dir, "otofx_subnet.pt2"), by_name,
                 dynamic_batch=not self.job.module.meta.get(EXPORTED, False))
        return result


def _check_args(args: Any, job: CompressionJob) -> None:
    for field in ("deepspeed", "fsdp"):
        if getattr(args, field, None):
            raise ConfigError(f"TrainingArguments.{field} is not supported by OtofxTrainer: it "
                              "replaces or shards the optimizer that drives the groups to zero. Train "
                              "on one device or with DistributedDataParallel.")
    if not job.module.meta.get(EXPORTED, False):
        return
    batch = next((t.shape[0] for t in job.example_inputs if isinstance(t, torch.Tensor) and t.dim()), None)
    fixed = f"the model came in through torch.export, so its graph is fixed to the example batch " \
            f"(batch size {batch})"
    if not args.dataloader_drop_last:
        raise ConfigError(f"TrainingArguments.dataloader_drop_last = False: {fixed}, and a last, "
                          "smaller batch would not fit. Set dataloader_drop_last=True and pad every "
                          "batch to the example's length.")
    for field in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        if batch is not None and getattr(args, field) * max(1, args.n_gpu) != batch:
            raise ConfigError(f"TrainingArguments.{field} = {getattr(args, field)}: {fixed}; set it "
                              f"to {batch}, or compress with an example batch of the size you train on.")
