"""Paired-seed statistics and the stamp every quality benchmark puts on its section.

- :func:`at_flops`: a method's accuracy at a FLOPs level, interpolated linearly in log(FLOPs)
  between the two measured points that bracket it (never extrapolated);
- :func:`verdict`: "beats" / "loses" only when the mean paired difference is more than twice its
  standard error, otherwise "ties";
- :func:`stamp`: commit (and whether the tree was dirty), date, machine and load average.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def at_flops(points: list[tuple[float, float]], level: float) -> tuple[float | None, str]:
    """``(accuracy, "")`` at FLOPs ``level`` from ``points`` = [(FLOPs kept, accuracy)], linear in
    log(FLOPs) between the two points that bracket ``level``; ``(None, why)`` when no pair does."""
    pts = sorted((f, a) for f, a in points if f > 0)
    if not pts:
        return None, "no measured point"
    for f, a in pts:
        if math.isclose(f, level, rel_tol=1e-9):
            return a, ""
    for (f0, a0), (f1, a1) in zip(pts, pts[1:]):
        if f0 < level < f1:
            w = (math.log(level) - math.log(f0)) / (math.log(f1) - math.log(f0))
            return a0 + w * (a1 - a0), ""
    return None, f"outside its points (FLOPs {pts[0][0]:.3f}-{pts[-1][0]:.3f})"


@dataclass
class Paired:
    """The paired differences (method minus peer) over the seeds where both have a value."""

    diffs: list[float]
    seeds: int                    # seeds tried
    word: str                     # "beats" / "ties" / "loses" / "n/a"
    why: str = ""                 # for "n/a", or the seeds left out

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs) if self.diffs else float("nan")

    @property
    def se(self) -> float:
        if len(self.diffs) < 2:
            return float("nan")
        return statistics.stdev(self.diffs) / math.sqrt(len(self.diffs))

    def cell(self) -> str:
        if self.word == "n/a":
            return f"n/a: {self.why}"
        text = f"{self.word} {100 * self.mean:+.2f} ± {100 * self.se:.2f} pt (n={len(self.diffs)})"
        return text + (f"; {self.why}" if self.why else "")


def verdict(a: dict[int, float | None], b: dict[int, float | None], why_a: str = "",
            why_b: str = "") -> Paired:
    """``a`` against ``b``, both by seed: the verdict on the mean of the paired differences.
    A seed where either side has no value is left out (and said); fewer than two pairs is n/a."""
    seeds = sorted(set(a) | set(b))
    both = [s for s in seeds if a.get(s) is not None and b.get(s) is not None]
    diffs = [a[s] - b[s] for s in both]  # type: ignore[operator]
    missing = [s for s in seeds if s not in both]
    why = ""
    if missing:
        sides = []
        if any(a.get(s) is None for s in missing):
            sides.append(f"method ({why_a or 'no value'})")
        if any(b.get(s) is None for s in missing):
            sides.append(f"peer ({why_b or 'no value'})")
        why = f"seeds {missing} left out: no value for " + " and ".join(sides)
    if len(diffs) < 2:
        return Paired(diffs, len(seeds), "n/a", why or "fewer than 2 seeds")
    p = Paired(diffs, len(seeds), "ties", why)
    se = p.se
    if p.mean > 2 * se:
        p.word = "beats"
    elif p.mean < -2 * se:
        p.word = "loses"
    return p


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def stamp() -> dict:
    """Commit, dirty tree, UTC date, machine and load average, now."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(dirty),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "load": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
    }


def stamp_line(start: dict, end: dict | None = None) -> str:
    """One markdown line from :func:`stamp` at the start (and, given, the end) of a run."""
    load = ", ".join(f"{v:.1f}" for v in start["load"])
    line = (f"Commit {start['commit'][:12]}{' (tree dirty)' if start['dirty'] else ''}, "
            f"{start['date']}; {start['platform']}, {start['cores']} cores; load average {load} "
            "at the start")
    if end is not None:
        line += f", {', '.join(f'{v:.1f}' for v in end['load'])} at the end ({end['date']})"
    return line + "."
