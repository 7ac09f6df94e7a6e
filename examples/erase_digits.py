"""Erase whole operators: train a super-network on load_digits with H2SPG and keep what matters.

Builds one of the OTOv3-style super-networks (``tests/zoo/supernets.py``: a DARTS-style cell
network whose mixed edges sum separable/dilated convs and pools, a super-ResNet with extra
candidate blocks, or a stack of small U-Nets), trains it densely and with H2SPG for the same
steps, recomputes both networks' batch-norm statistics over a few training batches
(``otofx.recalibrate_batchnorm``), shrinks the H2SPG run and prints which operators survived,
parameters and FLOPs, and test accuracy of the subnet against the full super-network.

    python examples/erase_digits.py [--net darts|resnet|unet] [--epochs 6] [--target 0.5]
                                    [--channels 0.0] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from zoo.supernets import SUPERNETS  # noqa: E402

import otofx  # noqa: E402
from examples.digits_data import accuracy, digits, first_batches, steps_per_epoch, train  # noqa: E402
from otofx.flops import count_flops  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", choices=sorted(SUPERNETS), default="darts")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--target", type=float, default=0.5,
                        help="fraction of the erasable structures to erase")
    parser.add_argument("--channels", type=float, default=0.0,
                        help="fraction of the prunable channels to prune at the same time")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--quick", action="store_true",
                        help="a few steps on a small slice (seconds; what CI runs)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def survivors(job: otofx.CompressionJob) -> list[str]:
    """One line per erasable structure: erased or kept, its kind and parameter count."""
    erased = set(job.optimizer.sparsity_report()["erased_structures"])
    return [f"  {'erased' if s.name in erased else 'kept  '}  {s.name:<28} {s.kind:<22} "
            f"{s.numel:>7,} params" for s in job.optimizer.structures]


def run(args: argparse.Namespace) -> dict:
    train_set, test_set = digits(args.seed)
    if args.quick:
        train_set = (train_set[0][:256], train_set[1][:256])
        args.epochs = 2
    steps = args.epochs * steps_per_epoch(train_set)
    x = train_set[0][:2]
    net = SUPERNETS[args.net]

    torch.manual_seed(args.seed)
    dense = net(c=args.width)
    train(dense, torch.optim.SGD(dense.parameters(), lr=args.lr, momentum=0.9), train_set,
          args.epochs)

    torch.manual_seed(args.seed)
    cfg = otofx.H2SPGConfig(lr=args.lr, momentum=0.9, target_structure_sparsity=args.target,
                            target_group_sparsity=args.channels, start_pruning_step=steps // 6,
                            pruning_steps=max(1, steps // 3))
    job = otofx.compress(net(c=args.width), cfg, (x,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(job.module, job.optimizer, train_set, args.epochs)
    # batch-norm statistics lag behind weights that move (more so after an erasure): recompute
    # them over a few training batches, for both networks alike
    otofx.recalibrate_batchnorm(dense, first_batches(train_set[0]))
    otofx.recalibrate_batchnorm(job.module, first_batches(train_set[0]))
    small = job.subnet()
    result = {
        "dense_accuracy": accuracy(dense, test_set), "subnet_accuracy": accuracy(small, test_set),
        "dense_params": sum(p.numel() for p in dense.parameters()),
        "subnet_params": sum(p.numel() for p in small.parameters()),
        "dense_flops": count_flops(dense, (x,)), "subnet_flops": count_flops(small, (x,)),
        "erased": job.optimizer.sparsity_report()["erased_structures"],
        "warnings": [str(w.message) for w in caught],
    }
    print(f"otofx H2SPG on load_digits: {args.net} super-network, {steps} steps, "
          f"target {args.target} of the erasable structures")
    print("\n".join(survivors(job)))
    print(f"accuracy:   full {result['dense_accuracy']:.3f}  subnet {result['subnet_accuracy']:.3f}")
    print(f"parameters: full {result['dense_params']:,}  subnet {result['subnet_params']:,} "
          f"({result['subnet_params'] / result['dense_params']:.3f}x)")
    print(f"FLOPs:      full {result['dense_flops']:,}  subnet {result['subnet_flops']:,} "
          f"({result['subnet_flops'] / result['dense_flops']:.3f}x)")
    print()
    print(job.report(small))
    return result


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
