"""The package's import structure: no cycle between otofx's modules, and each imports first.

Read from the source (``ast``), every import of one otofx module by another is an edge: those at
module level and those inside functions alike (a function-level import that would close a cycle
at module level only hides it), leaving out ``if TYPE_CHECKING:`` blocks, which never run. The
graph must have no cycle. Then every module is imported first thing in a fresh process (forked
after torch and sympy are loaded): a module that works only once some other module has been
imported fails there. Importing any of them runs ``otofx/__init__.py`` first, which loads most of
the others in its own order; the ones it does not load get a process each. (Third-party modules
are loaded before the fork; a missing one is the environment's fault, not the structure's.)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ((ROOT / "otofx", "otofx"), (ROOT / "passes", "otofx.passes"))   # pyproject's package-dir
NOT_IMPORTED = {"otofx.__main__"}      # runs the command line when imported


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of otofx (``passes/`` is ``otofx.passes``)."""
    found = {}
    for base, package in PACKAGES:
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict) -> list[str]:
    """The otofx modules an import statement needs: ``from pkg import sub`` needs ``pkg.sub``
    (the package may be half imported), ``from pkg import attr`` needs ``pkg`` itself."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    base = node.module or ""
    if node.level:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    needed = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    return [t for t in needed if t in known]


def import_graph() -> dict[str, set[str]]:
    """Module -> the otofx modules it imports anywhere in its code (not under TYPE_CHECKING)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        edges: set[str] = set()
        stack = list(ast.parse(path.read_text()).body)
        while stack:
            node = stack.pop()
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                stack += node.orelse
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_targets(name, path, node, known))
            stack += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the list of its modules (first one repeated at the end), or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (cycle := visit(t)) is not None:
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)) is not None:
            return cycle
    return None


def test_the_graph_sees_every_module_and_its_imports():
    graph = import_graph()
    assert {"otofx.api", "otofx.inputs", "otofx.passes.meta", "otofx.passes.rules.conv"} <= set(graph)
    assert "otofx.passes.common" in graph["otofx.passes.rules.conv"]           # from ..common import
    assert "otofx.passes.rules" in graph["otofx.passes.channels"]             # from . import rules
    assert "otofx.report" in graph["otofx.compress"]                          # inside a function
    assert "otofx.analysis" not in graph["otofx.report"]                      # TYPE_CHECKING only


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


_IMPORT_EACH = """
import importlib, json, os, sys
import numpy, sympy, torch, torch.fx, torch.export, torch.utils.flop_counter
try:
    import triton  # noqa: F401  (torch loads it when installed: most of otofx's own import time)
except ImportError:
    pass
torch.set_num_threads(1)


def first(name):
    # import ``name`` first thing in a forked process: (its exit status, what it loaded)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
        except BaseException as exc:
            print(json.dumps([name, f"{type(exc).__name__}: {exc}"]), flush=True)
            os._exit(1)
        os.write(write, json.dumps(sorted(m for m in sys.modules if m.startswith("otofx"))).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        loaded = pipe.read()
    _, status = os.waitpid(pid, 0)
    return status, json.loads(loaded) if loaded else []


# importing any otofx module runs the package's __init__ first: a module it loads was imported
# first in that run already (in the order the package imports it); each other one gets a run
status, loaded = first("otofx")
failed = ["otofx"] if status else [name for name in json.loads(sys.argv[1])
                                   if name not in loaded and first(name)[0]]
print(json.dumps(["done", failed]))
"""


def test_every_module_imports_first_in_a_fresh_process():
    names = sorted(set(modules()) - NOT_IMPORTED)
    run = subprocess.run([sys.executable, "-c", _IMPORT_EACH, json.dumps(names)], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("[")]
    assert lines and lines[-1][0] == "done", run.stderr[-3000:]
    errors = dict(line for line in lines[:-1])
    assert not lines[-1][1], f"modules that fail when imported first: {errors or lines[-1][1]}"
