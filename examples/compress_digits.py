"""The main job: compress a narrow ResNet on real data (scikit-learn's load_digits) with otofx, once.

Trains the same CNN (``examples/digits_resnet.py``) densely (SGD with momentum) and with otofx
(DHSPG, target 50% of the prunable channels) for the same steps, shrinks the result and prints
the report: dense vs subnet accuracy, parameters, FLOPs, CPU latency (subnet vs the full model,
medians of interleaved runs), target vs reached sparsity, and otofx's wall time vs dense
training. Writes, under ``--out`` (default ``out/``):

- ``digits_subnet.pt2``: the subnet as a ``torch.export`` program, which loads in a fresh process
  without otofx or this code: ``torch.export.load("out/digits_subnet.pt2").module()(x)``; the job
  checks that by loading it in a subprocess and comparing outputs;
- ``digits_subnet.onnx``: the subnet as an ONNX file (torch.onnx's dynamo exporter, dynamic
  batch), checked with onnxruntime against the subnet; the report gives its size next to the
  dense model's ONNX file;
- ``digits_compress.png``: test accuracy per epoch (dense vs otofx), zero channels per step, and
  the width of every group before and after.

    python examples/compress_digits.py [--epochs 12] [--target 0.5] [--optimizer dhspg|hesso]
                                       [--quick] [--out out]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import otofx  # noqa: E402
from examples.digits_data import accuracy, digits, steps_per_epoch, train  # noqa: E402
from examples.digits_resnet import DigitsResNet  # noqa: E402
from otofx.dhspg import FALLBACK  # noqa: E402
from otofx.integrations.onnx_export import export_onnx  # noqa: E402

LOAD_CHECK = """
import sys, torch
program = torch.export.load(sys.argv[1])
x = torch.load(sys.argv[2])
torch.save(program.module()(x), sys.argv[3])
"""


@dataclass
class Curve:
    """What one training run did: test accuracy per epoch, zero channels per step, seconds."""

    accuracy: list[float] = field(default_factory=list)
    zeros: list[int] = field(default_factory=list)
    fallback: list[int] = field(default_factory=list)   # of ``zeros``: zeroed by DHSPG's fallback
    seconds: float = 0.0


def config_for(args: argparse.Namespace, steps: int) -> otofx.DHSPGConfig | otofx.HESSOConfig:
    """Warm-up for the first sixth of the steps, prune over the next third, then recover."""
    common = dict(lr=args.lr, momentum=0.9, target_group_sparsity=args.target,
                  start_pruning_step=steps // 6, pruning_steps=max(1, steps // 3))
    if args.optimizer == "dhspg":
        return otofx.DHSPGConfig(**common)
    return otofx.HESSOConfig(pruning_periods=min(4, common["pruning_steps"]), **common)


def fit(runs: dict[str, tuple], data, test, epochs: int, zeros) -> dict[str, Curve]:
    """Train every ``name: (module, optimizer)`` for ``epochs`` epochs, one epoch of each in
    turn (so a busy machine slows them alike), with a progress bar and one line per epoch;
    ``zeros()`` counts the zero channels of the otofx run (the last one) and, of them, those the
    DHSPG fallback zeroed."""
    curves = {name: Curve() for name in runs}
    last = list(runs)[-1]
    bar = tqdm(total=len(runs) * epochs * steps_per_epoch(data), unit="step", leave=False)
    for epoch in range(epochs):
        for name, (module, optimizer) in runs.items():
            curve = curves[name]
            bar.set_description(name)

            def on_step(_: int, curve: Curve = curve, record: bool = name == last) -> None:
                bar.update()
                if record:
                    total, fallback = zeros()
                    curve.zeros.append(total)
                    curve.fallback.append(fallback)

            start = time.perf_counter()
            train(module, optimizer, data, 1, seed=epoch, on_step=on_step)
            curve.seconds += time.perf_counter() - start
            curve.accuracy.append(accuracy(module, test))
            line = f"epoch {epoch + 1:2d}/{epochs}  {name:6s} test accuracy {curve.accuracy[-1]:.3f}"
            if name == last:
                line += f"  zero channels {curve.zeros[-1]}/{optimizer.target}"
            tqdm.write(line)
    bar.close()
    return curves


def zero_counts(optimizer) -> tuple[int, int]:
    """Channels held at zero now and, of them, those DHSPG's fallback zeroed (HESSO: 0)."""
    st = optimizer.otofx_state
    by = st.get("by")
    return int(st["pruned"].sum()), int((by == FALLBACK).sum()) if by is not None else 0


@torch.no_grad()
def latency_ms(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int
               ) -> dict[str, float]:
    """Median ms of one forward per model (each already in eval mode: an exported program
    refuses ``.eval()``), interleaved (the order alternates)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for m in models.values():
        m(x)                                              # warm-up
    for i in range(repeats):
        for name in (list(models) if i % 2 == 0 else list(models)[::-1]):
            start = time.perf_counter()
            models[name](x)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def export_subnet(small: torch.nn.Module, x: torch.Tensor, out: Path) -> tuple[Path, float]:
    """Save ``small`` as a torch.export program (dynamic batch) and load it in a fresh process;
    returns the path and the largest difference between the loaded program's outputs and
    ``small``'s on ``x``."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(small.eval(), (x[:2],), dynamic_shapes=({0: batch},))
    path = out / "digits_subnet.pt2"
    torch.export.save(program, path)
    inputs, outputs = out / "digits_check_inputs.pt", out / "digits_check_outputs.pt"
    torch.save(x, inputs)
    subprocess.run([sys.executable, "-c", LOAD_CHECK, str(path), str(inputs), str(outputs)],
                   check=True, cwd=out)
    with torch.no_grad():
        diff = (torch.load(outputs) - small(x)).abs().max().item()
    inputs.unlink()
    outputs.unlink()
    return path, diff


def plot(dense: Curve, pruned: Curve, job, small, target: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    epochs = range(1, len(dense.accuracy) + 1)
    axes[0].plot(epochs, dense.accuracy, "o-", label="dense (SGD)")
    axes[0].plot(epochs, pruned.accuracy, "s-", label=f"otofx {type(job.optimizer).__name__}")
    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="load_digits test accuracy")
    axes[0].set_xticks(list(epochs))
    axes[0].legend()
    steps = range(1, len(pruned.zeros) + 1)
    axes[1].plot(steps, pruned.zeros, label="zero channels")
    if any(pruned.fallback):
        axes[1].plot(steps, pruned.fallback, label="of them by the fallback")
    axes[1].axhline(target, color="gray", ls="--", label=f"target ({target})")
    axes[1].set(xlabel="step", ylabel="channels", title="channels driven to exactly zero")
    axes[1].legend()
    stats = small.meta.get("otofx.shrink")
    removed = stats.removed if stats is not None else {}
    names = [g.name for g in job.analysis.prunable]
    before = [g.size for g in job.analysis.prunable]
    after = [g.size - removed.get(g.name, 0) for g in job.analysis.prunable]
    pos = range(len(names))
    axes[2].bar([p - 0.2 for p in pos], before, 0.4, label="before")
    axes[2].bar([p + 0.2 for p in pos], after, 0.4, label="after")
    axes[2].set_xticks(list(pos), names, rotation=30, ha="right", fontsize=8)
    axes[2].set(ylabel="channels", title="width of each prunable group")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--target", type=float, default=0.5, help="target group sparsity")
    parser.add_argument("--optimizer", choices=("dhspg", "hesso"), default="dhspg")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=32, help="stem width of the ResNet")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50, help="latency repeats per model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steadier on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 5 latency repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "out")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats = 1, 5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return job_and_report(args)
    finally:
        torch.set_num_threads(threads)


def job_and_report(args: argparse.Namespace) -> int:
    train_set, test_set = digits()
    steps = args.epochs * steps_per_epoch(train_set)
    print(f"load_digits: {len(train_set[0])} train / {len(test_set[0])} test images; "
          f"{args.epochs} epochs ({steps} steps) each, dense and otofx {args.optimizer.upper()} "
          f"at target group sparsity {args.target}")

    torch.manual_seed(args.seed)
    dense = DigitsResNet(args.width)
    sgd = torch.optim.SGD(dense.parameters(), lr=args.lr, momentum=0.9)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    job = otofx.compress(DigitsResNet(args.width), config_for(args, steps), (train_set[0][:2],))
    setup = time.perf_counter() - start
    curves = fit({"dense": (dense, sgd), args.optimizer: (job.module, job.optimizer)}, train_set,
                 test_set, args.epochs, zeros=lambda: zero_counts(job.optimizer))
    dense_curve, curve = curves["dense"], curves[args.optimizer]
    start = time.perf_counter()
    small = job.subnet()
    shrink = time.perf_counter() - start
    otofx_seconds = setup + curve.seconds + shrink

    X = test_set[0]
    with torch.no_grad():
        same = torch.equal(small.eval()(X).argmax(1), job.module.eval()(X).argmax(1))
    print()
    print(f"dense accuracy  : {accuracy(dense, test_set):.4f}")
    print(f"subnet accuracy : {accuracy(small, test_set):.4f}  (same predictions as the trained "
          f"model: {same})")
    print(job.report(small))
    print()
    for batch in (1, len(X)):
        ms = latency_ms({"full": job.module, "subnet": small}, X[:batch], args.repeats)
        print(f"CPU latency, batch {batch:3d}, {args.threads} thread(s): full {ms['full']:.3f} ms, subnet "
              f"{ms['subnet']:.3f} ms: subnet / full = {ms['subnet'] / ms['full']:.2f}x "
              f"(medians of {args.repeats} interleaved runs)")
    print(f"wall time: otofx {otofx_seconds:.1f} s (analysis {setup:.1f} + training {curve.seconds:.1f} + "
          f"shrink {shrink:.1f}), dense training {dense_curve.seconds:.1f} s: "
          f"{otofx_seconds / dense_curve.seconds:.2f}x; training alone "
          f"{curve.seconds / dense_curve.seconds:.2f}x (epochs interleaved)")

    path, diff = export_subnet(small, X, args.out)
    print(f"subnet saved: {path} (torch.export); loaded in a fresh process, largest output "
          f"difference {diff:.2e}")
    print(f"load it anywhere with torch: torch.export.load('{path}').module()(x)  "
          "# x: [N, 1, 8, 8] in [0, 1]")
    onnx = export_onnx(small, (X[:2],), args.out / "digits_subnet.onnx", dynamic_batch=True)
    dense_onnx = export_onnx(job.module, (X[:2],), args.out / "digits_dense.onnx", check=False)
    dense_onnx.path.unlink()
    print(f"ONNX saved: {onnx.path} ({onnx.bytes / 1024:.0f} KiB, {onnx.bytes / dense_onnx.bytes:.2f}x "
          f"the trained model's {dense_onnx.bytes / 1024:.0f} KiB); onnxruntime vs subnet, largest "
          f"output difference {onnx.max_difference:.2e}")
    png = args.out / "digits_compress.png"
    plot(dense_curve, curve, job, small, job.optimizer.sparsity_report()["target_channels"], png)
    print(f"plot saved: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
