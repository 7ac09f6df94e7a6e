"""The main job: compress a CNN on real data (scikit-learn's load_digits) with otofx, once.

Trains the same CNN densely (SGD, momentum) and with otofx (DHSPG, target 50% of the prunable
channels) for the same steps, shrinks the result and prints the report: dense vs subnet accuracy,
parameters, FLOPs and the sparsity reached.

    python examples/compress_digits.py [--epochs 12] [--target 0.5] [--optimizer dhspg|hesso]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import otofx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from digits import DigitsCNN, accuracy, digits, steps_per_epoch, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--optimizer", choices=("dhspg", "hesso"), default="dhspg")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    train_set, test_set = digits()
    steps = args.epochs * steps_per_epoch(train_set)
    common = dict(lr=0.05, momentum=0.9, target_group_sparsity=args.target,
                  start_pruning_step=steps // 4, pruning_steps=steps // 2)
    config = (otofx.DHSPGConfig(**common) if args.optimizer == "dhspg"
              else otofx.HESSOConfig(pruning_periods=4, **common))

    torch.manual_seed(args.seed)
    dense = DigitsCNN()
    sgd = torch.optim.SGD(dense.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(args.seed)
    job = otofx.compress(DigitsCNN(), config, (train_set[0][:2],))

    for name, module, optimizer in (("dense", dense, sgd), (args.optimizer, job.module,
                                                           job.optimizer)):
        bar = tqdm(total=steps, desc=f"{name:6s}", unit="step", leave=False)
        for epoch in range(args.epochs):
            train(module, optimizer, train_set, 1, seed=epoch, on_step=lambda _, b=bar: b.update())
            line = f"{name:6s} epoch {epoch + 1:2d}/{args.epochs}  test accuracy " \
                   f"{accuracy(module, test_set):.3f}"
            if module is job.module:
                line += f"  zero channels {job.optimizer.sparsity_report()['zero_channels']}" \
                        f"/{job.optimizer.target}"
            tqdm.write(line)
        bar.close()

    small = job.subnet()
    with torch.no_grad():
        same = torch.equal(small.eval()(test_set[0]).argmax(1),
                           job.module.eval()(test_set[0]).argmax(1))
    print()
    print(f"dense accuracy  : {accuracy(dense, test_set):.4f}")
    print(f"subnet accuracy : {accuracy(small, test_set):.4f}  (same predictions as the trained "
          f"model: {same})")
    print(job.report(small))


if __name__ == "__main__":
    main()
