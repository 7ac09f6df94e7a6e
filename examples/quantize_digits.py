"""Prune, then quantize: the digits subnet through PyTorch's pt2e int8 flow (torchao).

Trains the narrow digits ResNet with DHSPG (target 50% of the prunable channels), shrinks it,
quantizes the subnet to int8 (``otofx.integrations.quantize.quantize_int8``: calibration on 512
training images) and prints, for the trained model, the float subnet and the int8 subnet: weight
bytes, test accuracy and CPU latency (eager; with ``--compile`` also through ``torch.compile``,
where inductor runs the int8 model with int8 kernels; compiling takes about a minute).

    python examples/quantize_digits.py [--epochs 6] [--width 32] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import otofx  # noqa: E402
from examples.compress_digits import latency_ms  # noqa: E402
from examples.digits_data import accuracy, digits, first_batches, steps_per_epoch, train  # noqa: E402
from examples.digits_resnet import DigitsResNet  # noqa: E402
from otofx.integrations.quantize import quantize_int8, state_bytes  # noqa: E402


def train_subnet(epochs: int, width: int, target: float = 0.5, seed: int = 0
                 ) -> tuple[otofx.CompressionJob, nn.Module]:
    """DHSPG on load_digits for ``epochs``, batch-norm statistics recomputed over a few
    training batches; returns the job and its subnet (eval mode)."""
    train_set, _ = digits()
    steps = epochs * steps_per_epoch(train_set)
    torch.manual_seed(seed)
    config = otofx.DHSPGConfig(lr=0.05, momentum=0.9, target_group_sparsity=target,
                               start_pruning_step=steps // 6, pruning_steps=max(1, steps // 3))
    job = otofx.compress(DigitsResNet(width), config, (train_set[0][:2],))
    train(job.module, job.optimizer, train_set, epochs, seed=seed)
    otofx.recalibrate_batchnorm(job.module, first_batches(train_set[0]))
    return job, job.subnet().eval()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    train_set, test_set = digits()
    job, small = train_subnet(args.epochs, args.width, args.target)
    start = time.perf_counter()
    int8 = quantize_int8(small, (train_set[0][:2],), first_batches(train_set[0]))
    quantize_seconds = time.perf_counter() - start
    models = {"trained": job.module.eval(), "subnet": small, "subnet int8": int8}
    X = test_set[0]
    eager = {b: latency_ms(models, X[:b], args.repeats) for b in (1, len(X))}
    compiled = {}
    if args.compile:
        fast = {name: torch.compile(m) for name, m in models.items()}
        compiled = {b: latency_ms(fast, X[:b], args.repeats) for b in (1, len(X))}
    print(f"load_digits, {args.epochs} epochs of DHSPG (target {args.target}), int8 calibration on "
          f"512 training images ({quantize_seconds:.1f} s); {args.threads} thread(s), medians of "
          f"{args.repeats} interleaved runs")
    header = f"{'model':12s} {'weights':>10s} {'accuracy':>9s} {'ms b=1':>8s} {'ms b=' + str(len(X)):>9s}"
    if compiled:
        header += f" {'compiled b=1':>13s} {'compiled b=' + str(len(X)):>15s}"
    print(header)
    for name, m in models.items():
        row = (f"{name:12s} {state_bytes(m) / 1024:8.1f}KB {accuracy(m, test_set):9.4f} "
               f"{eager[1][name]:8.3f} {eager[len(X)][name]:9.3f}")
        if compiled:
            row += f" {compiled[1][name]:13.3f} {compiled[len(X)][name]:15.3f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
