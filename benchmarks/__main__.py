"""Run every benchmark and regenerate ``benchmarks/RESULTS.md``.

    python -m benchmarks [--quick] [--only a,b] [--skip a,b] [--timeout SECONDS]

Every module ``benchmarks/<name>.py`` with a ``main`` function is a benchmark (``models`` and
``peers`` are helpers); each runs in its own process as ``python -m benchmarks.<name>``, with
``--quick`` when given and supported, writing its markdown to ``benchmarks/results/<name>.md``
(a script without ``--out`` has its printed output kept instead). RESULTS.md then collects the
machine, the versions, and for each benchmark the command that reproduces it, its wall time and
its tables and plots; a benchmark that fails or times out gets its reason and the tail of its
output, never stops the others.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
HELPERS = {"models", "peers"}
ORDER = ("analysis_speed", "optimizer_overhead", "subnet_latency", "compress_quality")
PACKAGES = ("torch", "torchvision", "timm", "transformers", "scikit-learn", "torch-pruning",
            "only-train-once", "matplotlib")


@dataclass
class Script:
    name: str
    summary: str          # the docstring's first line
    flags: set[str]       # the command-line flags it defines (from its source)


def discover(directory: Path = HERE) -> list[Script]:
    """The benchmark scripts in ``directory``: modules with a top-level ``main`` function."""
    found = []
    for path in sorted(directory.glob("*.py")):
        name = path.stem
        if name.startswith("_") or name in HELPERS:
            continue
        source = path.read_text()
        tree = ast.parse(source)
        if not any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            continue
        doc = (ast.get_docstring(tree) or name).strip().splitlines()[0]
        found.append(Script(name, doc, set(re.findall(r"""["'](--[a-z][a-z-]*)["']""", source))))
    rank = {n: i for i, n in enumerate(ORDER)}
    return sorted(found, key=lambda s: (rank.get(s.name, len(ORDER)), s.name))


def command(script: Script, quick: bool) -> list[str]:
    """The argument list that runs ``script`` (from the repository root)."""
    args = ["python", "-m", f"benchmarks.{script.name}"]
    if quick and "--quick" in script.flags:
        args.append("--quick")
    if "--out" in script.flags:
        args += ["--out", f"benchmarks/results/{script.name}.md"]
    return args


@dataclass
class Outcome:
    script: Script
    argv: list[str]
    seconds: float
    body: str                # markdown for RESULTS.md
    ok: bool
    when: str = ""           # UTC time it finished

    def save(self) -> None:
        """Keep it as ``results/<name>.run.json``, so a later partial run still lists it (the
        benchmark's own data may be ``results/<name>.json``)."""
        (RESULTS_DIR / f"{self.script.name}.run.json").write_text(json.dumps(
            dict(argv=self.argv, seconds=self.seconds, body=self.body, ok=self.ok, when=self.when),
            indent=1))

    @classmethod
    def load(cls, script: Script) -> Outcome | None:
        for path in (RESULTS_DIR / f"{script.name}.run.json", RESULTS_DIR / f"{script.name}.json"):
            d = json.loads(path.read_text()) if path.exists() else {}
            if {"argv", "seconds", "body", "ok"} <= set(d):   # the older place held only this
                break
        else:
            return None
        return cls(script, d["argv"], d["seconds"], d["body"], d["ok"], d.get("when", ""))


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fix_links(markdown: str, base: Path) -> str:
    """Relative image/file links in ``markdown`` written under ``base``, made relative to
    RESULTS.md's folder."""
    def repl(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^(?:[a-z]+:|/|#)", target):
            return m.group(0)
        return f"{m.group(1)}({os.path.relpath(base / target, HERE)})"
    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", repl, markdown)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(script: Script, quick: bool, timeout: float | None) -> Outcome:
    outcome = execute(script, quick, timeout)
    outcome.when = utc_now()
    outcome.save()
    return outcome


def execute(script: Script, quick: bool, timeout: float | None) -> Outcome:
    argv = command(script, quick)
    out_md = RESULTS_DIR / f"{script.name}.md"
    if "--out" in script.flags and out_md.exists():
        out_md.unlink()
    print(f"== {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable] + argv[1:], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        seconds = time.perf_counter() - start
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return Outcome(script, argv, seconds, f"**Timed out** after {timeout:g} s.\n\n```\n"
                       f"{tail(output)}\n```", False)
    seconds = time.perf_counter() - start
    (RESULTS_DIR / f"{script.name}.log").write_text(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        return Outcome(script, argv, seconds, f"**Failed** (exit {proc.returncode}):\n\n```\n"
                       f"{tail(proc.stderr or proc.stdout)}\n```", False)
    if out_md.exists():
        body = fix_links(out_md.read_text(), out_md.parent)
    else:
        body = f"```\n{proc.stdout.strip()}\n```"
    print(f"   done in {seconds:.0f} s", flush=True)
    return Outcome(script, argv, seconds, body, True)


def versions() -> str:
    parts = [f"Python {platform.python_version()}"]
    for name in PACKAGES:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def results_markdown(outcomes: list[Outcome], load_before: tuple[float, ...], note: str = "") -> str:
    """The whole RESULTS.md."""
    load_after = os.getloadavg()
    lines = [
        "# otofx benchmark results",
        "",
        f"Generated by `python -m benchmarks` (`make bench`; `--quick` for the quick sizes) on "
        f"{utc_now()} at commit {git_commit()}. Each section gives the exact command behind its "
        "numbers and when it ran; a section from an earlier run (the runner was given `--only`) "
        "is kept as it was.",
        "",
        f"- Machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} "
        f"{platform.release()}; load average {', '.join(f'{v:.1f}' for v in load_before)} "
        f"before, {', '.join(f'{v:.1f}' for v in load_after)} after.",
        f"- Versions: {versions()}.",
    ]
    if note:
        lines.append(f"- Note: {note}")
    lines += ["", "| benchmark | what | status | size | wall time | ran |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        size = "quick" if "--quick" in o.argv else "default"
        lines.append(f"| [{o.script.name}](#{o.script.name.replace('_', '-')}) | {o.script.summary} "
                     f"| {'ok' if o.ok else 'FAILED'} | {size} | {o.seconds:.0f} s | {o.when} |")
    for o in outcomes:
        lines += ["", f"## {o.script.name.replace('_', '-')}", "", o.script.summary, "",
                  f"Reproduce: `{' '.join(o.argv)}` ({o.seconds:.0f} s here, {o.when})", "",
                  o.body.strip()]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick size")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per benchmark (default: none)")
    parser.add_argument("--note", default="", help="a line for RESULTS.md (e.g. the machine was "
                                                   "shared)")
    parser.add_argument("--list", action="store_true", help="print the benchmarks and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scripts = discover()
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    unknown = (only | skip) - {s.name for s in scripts}
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; have {[s.name for s in scripts]}",
              file=sys.stderr)
        return 2
    chosen = [s for s in scripts if (not only or s.name in only) and s.name not in skip]
    if args.list:
        for s in chosen:
            print(f"{s.name}: {s.summary}\n    {' '.join(command(s, args.quick))}")
        return 0
    RESULTS_DIR.mkdir(exist_ok=True)
    load_before = os.getloadavg()
    fresh = {s.name: run(s, args.quick, args.timeout) for s in chosen}
    outcomes = [fresh.get(s.name) or Outcome.load(s) for s in scripts]
    RESULTS_MD.write_text(results_markdown([o for o in outcomes if o is not None], load_before,
                                           args.note))
    print(f"wrote {RESULTS_MD.relative_to(ROOT)}")
    return 0 if all(o.ok for o in fresh.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
