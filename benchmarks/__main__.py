"""Run every benchmark and regenerate ``benchmarks/RESULTS.md``; or check its sections are current.

    python -m benchmarks [--quick] [--only a,b] [--skip a,b] [--timeout SECONDS] [--jobs N]
    python -m benchmarks --check

Every module ``benchmarks/<name>.py`` with a ``main`` function is a benchmark (``models`` and
``peers`` are helpers); each runs in its own process as ``python -m benchmarks.<name>``, with
``--quick`` when given and supported, writing its markdown to ``benchmarks/results/<name>.md``
(a script without ``--out`` has its printed output kept instead). RESULTS.md then collects the
machine, the versions, and for each benchmark the command that reproduces it, its wall time and
its tables and plots; a benchmark that fails or times out gets its reason and the tail of its
output, never stops the others. ``--jobs`` goes to the benchmarks that accept it.

Provenance: each section is stamped (``results/<name>.run.json``, key ``stamp``) with the commit
it ran at, whether the code it measures had uncommitted changes, the date, the machine and the
load average at its start and end, and lists the paths it measures (``measures``): ``otofx/``,
``passes/``, ``constraints.txt``, its own script and the ``benchmarks`` helpers it imports.
``--check`` exits non-zero naming each section whose measured code changed between its stamped
commit and HEAD (``git diff``), or that has no stamp, or ran on uncommitted measured code.
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
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.paired import stamp, stamp_line

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
HELPERS = {"models", "peers", "paired"}
MEASURED = ("otofx/", "passes/", "constraints.txt")   # what every benchmark measures
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


def measured_paths(name: str, directory: Path = HERE) -> list[str]:
    """The paths (relative to the repository root) whose changes can move the numbers of
    benchmark ``name``: the package, the pins, its script and every ``benchmarks`` module it
    imports, transitively."""
    seen: list[str] = []
    todo = [name]
    while todo:
        module = todo.pop()
        path = directory / f"{module}.py"
        if module in seen or not path.exists():
            continue
        seen.append(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "benchmarks":
                    todo += [a.name for a in node.names]
                elif node.module.startswith("benchmarks."):
                    todo.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                todo += [a.name.split(".")[1] for a in node.names
                         if a.name.startswith("benchmarks.")]
    return list(MEASURED) + [f"{directory.name}/{m}.py" for m in seen]


def command(script: Script, quick: bool, jobs: int | None = None) -> list[str]:
    """The argument list that runs ``script`` (from the repository root)."""
    args = ["python", "-m", f"benchmarks.{script.name}"]
    if quick and "--quick" in script.flags:
        args.append("--quick")
    if jobs is not None and "--jobs" in script.flags:
        args += ["--jobs", str(jobs)]
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
    stamp: dict = field(default_factory=dict)      # paired.stamp() at the start, + "end"
    measures: list[str] = field(default_factory=list)

    def save(self) -> None:
        """Keep it as ``results/<name>.run.json``, so a later partial run still lists it (the
        benchmark's own data may be ``results/<name>.json``)."""
        (RESULTS_DIR / f"{self.script.name}.run.json").write_text(json.dumps(
            dict(argv=self.argv, seconds=self.seconds, body=self.body, ok=self.ok, when=self.when,
                 stamp=self.stamp, measures=self.measures), indent=1))

    @classmethod
    def load(cls, script: Script) -> Outcome | None:
        for path in (RESULTS_DIR / f"{script.name}.run.json", RESULTS_DIR / f"{script.name}.json"):
            d = json.loads(path.read_text()) if path.exists() else {}
            if {"argv", "seconds", "body", "ok"} <= set(d):   # the older place held only this
                break
        else:
            return None
        return cls(script, d["argv"], d["seconds"], d["body"], d["ok"], d.get("when", ""),
                   d.get("stamp", {}), d.get("measures", []))

    def provenance(self) -> str:
        """The section's stamp line, or why it has none."""
        if not self.stamp:
            return "No stamp (run before sections were stamped): `--check` flags it."
        line = stamp_line(self.stamp, self.stamp.get("end"))
        if self.stamp.get("dirty_measured"):
            line += f" Uncommitted changes to: {', '.join(self.stamp['dirty_measured'])}."
        return line


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


def git(root: Path, *args: str) -> str | None:
    """``git args`` in ``root``: its output, or None when git fails."""
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def section_stamp(measures: list[str], root: Path = ROOT) -> dict:
    """:func:`benchmarks.paired.stamp` plus the measured paths with uncommitted changes."""
    dirty = git(root, "diff", "--name-only", "HEAD", "--", *measures)   # staged or not
    return {**stamp(), "dirty_measured": sorted((dirty or "").splitlines())}


def run(script: Script, quick: bool, timeout: float | None, jobs: int | None = None) -> Outcome:
    measures = measured_paths(script.name)
    start = section_stamp(measures)
    outcome = execute(script, quick, timeout, jobs)
    outcome.when = utc_now()
    outcome.stamp, outcome.measures = {**start, "end": stamp()}, measures
    outcome.save()
    return outcome


def execute(script: Script, quick: bool, timeout: float | None, jobs: int | None = None) -> Outcome:
    argv = command(script, quick, jobs)
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
        "numbers and its own stamp (commit, date, machine, load; also in "
        "`results/<name>.run.json`); a section from an earlier run (the runner was given `--only`) "
        "is kept as it was. `python -m benchmarks --check` (in `make lint`) fails when the code "
        "a section measures changed after its numbers.",
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
                  f"Provenance: {o.provenance()}", "",
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
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel jobs, passed to the benchmarks that accept --jobs")
    parser.add_argument("--list", action="store_true", help="print the benchmarks and exit")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 naming each section whose measured code changed after its "
                             "numbers (git diff from its stamped commit to HEAD); run nothing")
    return parser.parse_args(argv)


def stale(outcomes: list[Outcome], root: Path = ROOT) -> list[str]:
    """One line per section whose numbers may not hold for HEAD: no stamp, measured code
    uncommitted when it ran, a stamped commit git does not know, or measured code changed
    between the stamped commit and HEAD."""
    problems = []
    for o in outcomes:
        name, commit = o.script.name, o.stamp.get("commit", "unknown")
        measures = o.measures or measured_paths(name)
        if not o.stamp or commit == "unknown":
            problems.append(f"{name}: no commit stamp; rerun `python -m benchmarks --only {name}`")
            continue
        if o.stamp.get("dirty_measured"):
            problems.append(f"{name}: ran with uncommitted changes to "
                            f"{', '.join(o.stamp['dirty_measured'])} (at {commit[:12]})")
            continue
        changed = git(root, "diff", "--name-only", commit, "HEAD", "--", *measures)
        if changed is None:
            problems.append(f"{name}: stamped commit {commit[:12]} is not in this repository")
        elif changed:
            files = changed.splitlines()
            more = f" and {len(files) - 5} more" if len(files) > 5 else ""
            problems.append(f"{name}: measured code changed since its numbers ({commit[:12]}): "
                            f"{', '.join(files[:5])}{more}")
    return problems


def check(scripts: list[Script], root: Path = ROOT) -> int:
    """``--check``: print each stale section; 1 if any, else 0."""
    outcomes = [o for s in scripts if (o := Outcome.load(s)) is not None]
    problems = stale(outcomes, root)
    for line in problems:
        print(f"benchmarks/RESULTS.md section {line}", file=sys.stderr)
    if not problems:
        print(f"benchmarks: {len(outcomes)} sections, each current with HEAD's measured code")
    return 1 if problems else 0


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
    if args.check:
        return check(chosen)
    if args.list:
        for s in chosen:
            print(f"{s.name}: {s.summary}\n    {' '.join(command(s, args.quick, args.jobs))}")
        return 0
    RESULTS_DIR.mkdir(exist_ok=True)
    load_before = os.getloadavg()
    fresh = {s.name: run(s, args.quick, args.timeout, args.jobs) for s in chosen}
    outcomes = [fresh.get(s.name) or Outcome.load(s) for s in scripts]
    RESULTS_MD.write_text(results_markdown([o for o in outcomes if o is not None], load_before,
                                           args.note))
    print(f"wrote {RESULTS_MD.relative_to(ROOT)}")
    return 0 if all(o.ok for o in fresh.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
