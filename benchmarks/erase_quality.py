"""Erasing quality: H2SPG on each super-network (load_digits), architecture found, accuracy vs full.

For every super-network of ``tests/zoo/supernets.py`` (DARTS-style cells, super-ResNet, U-Net
stack) and every target, trains the full network densely and with H2SPG for the same epochs
(``examples/erase_digits.py``), shrinks, and reports the erased/erasable structures, the subnet's
parameters and FLOPs as a share of the full network's, both test accuracies and the operators
that survived.

    python -m benchmarks.erase_quality [--nets darts,resnet,unet] [--targets 0.3,0.6]
                                       [--epochs 10] [--quick] [--out erase_quality.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from examples import erase_digits  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", default="darts,resnet,unet")
    parser.add_argument("--targets", default="0.3,0.6")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 epochs on a slice, one target")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")][: 1 if args.quick else None]
    rows, found = [], []
    for net in args.nets.split(","):
        for target in targets:
            run_args = erase_digits.parse_args(["--net", net, "--target", str(target),
                                                "--epochs", str(args.epochs)]
                                               + (["--quick"] if args.quick else []))
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                r = erase_digits.run(run_args)
            seconds = time.perf_counter() - start
            survivors = [line for line in printed.getvalue().splitlines()
                         if line.startswith("  kept")]
            rows.append(f"| {net} | {target:.2f} | {len(r['erased'])} / {len(survivors) + len(r['erased'])} "
                        f"| {r['subnet_params'] / r['dense_params']:.3f} "
                        f"| {r['subnet_flops'] / r['dense_flops']:.3f} | {r['dense_accuracy']:.3f} "
                        f"| {r['subnet_accuracy']:.3f} | {seconds:.0f} |")
            found.append(f"- **{net}, target {target:.2f}** kept: "
                         + (", ".join(line.split()[1] for line in survivors) or "nothing erasable"))
            print(rows[-1], flush=True)
    table = "\n".join([
        f"H2SPG on load_digits, {'quick' if args.quick else f'{args.epochs} epochs'}; shares are "
        "subnet / full super-network.", "",
        "| net | target | erased / erasable | params | FLOPs | full acc | subnet acc | s |",
        "|---|---|---|---|---|---|---|---|", *rows, "", "Operators that survived:", "", *found])
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
