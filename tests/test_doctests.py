"""The examples in the package's docstrings run and print what they say (``doctest``), so a
docstring cannot drift from the code it documents. CI runs them with the rest of the suite."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import otofx.passes

import otofx


def _modules() -> list[str]:
    """The package's modules whose source holds an example (the others are not imported: the
    integrations would import their frameworks)."""
    names = set()
    for package in (otofx, otofx.passes):
        names |= {m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")}
    return sorted(n for n in names if ">>>" in Path(importlib.util.find_spec(n).origin).read_text())


def test_every_docstring_example_runs():
    ran, failed = {}, {}
    for name in _modules():
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        if result.attempted:
            ran[name] = result.attempted
        if result.failed:
            failed[name] = result.failed
    assert not failed, f"docstring examples failed (printed above): {failed}"
    assert ran.get("otofx.passes.labels", 0) >= 3, f"the label examples were not found: {ran}"
