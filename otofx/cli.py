"""Command line: ``python -m otofx inspect|roundtrip MODULE:FACTORY --input-shape 1,3,224,224``.

``inspect`` prints every group (channels, layers, pinned and why) and the prunable share of
parameters and FLOPs. ``roundtrip`` also zeroes a fraction of every prunable group, shrinks, and
checks that the smaller model computes the same outputs: a quick way to see whether otofx handles
a model before training it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
import time
from collections.abc import Sequence

import torch

import otofx
from otofx.errors import OtofxError
from otofx.flops import count_flops
from otofx.passes.common import evaluation
from otofx.passes.meta import SHRINK


def _factory(spec: str, kwargs: Sequence[str]):
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"expected MODULE:FACTORY (e.g. torchvision.models:resnet50), got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"cannot load {spec}: {exc}") from exc
    parsed = {}
    for item in kwargs:
        key, _, value = item.partition("=")
        try:
            parsed[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed[key] = value
    return factory(**parsed)


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--input-shape wants integers like 1,3,224,224: {text}") \
            from exc


def _latency(module: torch.nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    with evaluation(module):
        module(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def inspect(args: argparse.Namespace) -> int:
    model = _factory(args.factory, args.kwarg)
    x = torch.randn(args.input_shape)
    t = time.perf_counter()
    gm = otofx.trace(model, leaf_modules=args.leaf_module)
    analysis = otofx.analyze(gm, (x,))
    took = time.perf_counter() - t
    print(analysis.report(max_rows=args.max_rows))
    print(f"\nanalysis took {took:.2f} s")
    if args.command == "roundtrip":
        return roundtrip(args, gm, analysis, x)
    return 0


def roundtrip(args, gm, analysis, x) -> int:
    from otofx.testing import zero_groups
    zero_groups(gm, analysis, args.fraction, seed=args.seed)
    t = time.perf_counter()
    small = otofx.shrink(gm, analysis)
    took = time.perf_counter() - t
    with evaluation(gm), evaluation(small):
        err = (small(x) - gm(x)).abs().max().item()
    p0 = sum(p.numel() for p in gm.parameters())
    p1 = sum(p.numel() for p in small.parameters())
    f0, f1 = count_flops(gm, (x,)), count_flops(small, (x,))
    l0, l1 = _latency(gm, x), _latency(small, x)
    stats = small.meta[SHRINK]
    print(f"\nround trip: zeroed {args.fraction:.0%} of every prunable group (seed {args.seed}), "
          f"shrank in {took:.2f} s")
    print(f"  channels removed : {sum(stats.removed.values())} in {len(stats.removed)} groups"
          + (f" ({sum(stats.kept.values())} zero channels kept: not foldable or would empty a tensor)"
             if stats.kept else ""))
    print(f"  parameters       : {p0:,} -> {p1:,} ({p1 / p0:.2f}x)")
    print(f"  FLOPs            : {f0:,} -> {f1:,} ({f1 / max(f0, 1):.2f}x)")
    print(f"  CPU latency      : {1e3 * l0:.1f} ms -> {1e3 * l1:.1f} ms ({l1 / l0:.2f}x)")
    print(f"  max |small(x) - model(x)| = {err:.2e}  (exact up to float rounding)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otofx", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("inspect", "print groups, pins and the prunable share"),
                        ("roundtrip", "inspect, then zero a fraction, shrink and compare")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("factory", help="MODULE:FACTORY, e.g. torchvision.models:resnet50")
        p.add_argument("--input-shape", type=_shape, required=True, help="e.g. 1,3,224,224")
        p.add_argument("--kwarg", action="append", default=[], metavar="KEY=VALUE",
                       help="keyword argument for the factory (repeatable)")
        p.add_argument("--leaf-module", action="append", default=[], metavar="NAME",
                       help="qualified name of a submodule to keep opaque (repeatable)")
        p.add_argument("--max-rows", type=int, default=60, help="groups to list")
        if name == "roundtrip":
            p.add_argument("--fraction", type=float, default=0.5)
            p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        return inspect(args)
    except OtofxError as exc:
        print(f"otofx: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
