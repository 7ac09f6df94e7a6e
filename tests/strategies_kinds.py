"""Which kinds of blocks the grammars draw, and a check that CI's examples hold every kind.

Each grammar (``tests/strategies*.py``) registers the kinds it can draw (:func:`grammar`) and
reports, per example, the kinds it really built (:func:`drew`: one ``hypothesis.event`` each, so
``make fuzz``'s ``--hypothesis-show-statistics`` shows how often each kind came up). The
conftest collects the events of every example that ran to the end of its test (hypothesis's
observability callback) and, at the end of the session, :func:`missing_kinds` lists the kinds
no passing example held: a grammar change that makes a kind unreachable, or a test edit that
changes CI's deterministic examples so that they miss one, fails the run.

The check judges only complete evidence: a grammar is checked when every test module whose
examples drew from it ran whole (no test deselected or picked by node id) and passed.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

from hypothesis import event

GRAMMARS: dict[str, tuple[str, ...]] = {}     # grammar -> every kind it can draw
SEP = ": "
_quiet = [False]      # drawing examples that no property tests: no events


def grammar(name: str, kinds: Iterable[str]) -> None:
    """Register grammar ``name`` and the kinds it can draw."""
    GRAMMARS[name] = tuple(kinds)


def drew(name: str, kinds: Iterable[str]) -> None:
    """In a strategy: the example being drawn holds these kinds of grammar ``name``."""
    known = GRAMMARS[name]
    for kind in sorted(set(kinds)):
        assert kind in known, f"grammar {name!r} drew {kind!r}, which it does not register"
        if not _quiet[0]:
            event(f"{name}{SEP}{kind}")


@contextmanager
def quiet():
    """Draw examples without events (they would count as tested examples)."""
    _quiet[0] = True
    try:
        yield
    finally:
        _quiet[0] = False


def parse(features: Iterable[str]) -> dict[str, set[str]]:
    """Grammar -> kinds, from an example's hypothesis events."""
    out: dict[str, set[str]] = {}
    for f in features:
        name, _, kind = f.partition(SEP)
        if name in GRAMMARS and kind in GRAMMARS[name]:
            out.setdefault(name, set()).add(kind)
    return out


def missing_kinds(seen: dict[str, dict[str, set[str]]], module_of: dict[str, str],
                  complete: set[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(the grammars with complete evidence, grammar -> the kinds no example of it held).

    ``seen``: test id -> grammar -> kinds its passing examples held; ``module_of``: test id ->
    its module; ``complete``: the modules that ran whole and passed."""
    checked, out = [], {}
    for name, kinds in GRAMMARS.items():
        tests = [t for t, g in seen.items() if name in g]
        if not tests or any(module_of.get(t) not in complete for t in tests):
            continue
        checked.append(name)
        held = set().union(*(seen[t][name] for t in tests))
        lacking = [k for k in kinds if k not in held]
        if lacking:
            out[name] = lacking
    return checked, out
