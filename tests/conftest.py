"""Shared pytest setup: hypothesis profiles, and the check that CI's examples hold every kind.

``HYPOTHESIS_PROFILE=ci`` (the default) is small and deterministic (derandomized, no example
database), so CI runs the same examples every time; ``HYPOTHESIS_PROFILE=fuzz`` explores 2000
examples per property with a random seed and keeps failures in the local database;
``HYPOTHESIS_PROFILE=dev`` is a quick random run. ``HYPOTHESIS_MAX_EXAMPLES=N`` overrides the
example count of whichever profile is loaded. A property that runs fewer examples than the
others asks for a share of the profile (``tests/strategies_budget.py``), never a fixed count.

At the end of a session under ``ci`` or ``fuzz`` the kinds of blocks the passing examples held are
checked against every kind each grammar can draw (``tests/strategies_kinds.py``); a missing kind
fails the run.
"""

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.internal import observability

sys.path.insert(0, str(Path(__file__).parent))   # `import strategies` from the tests

import strategies_kinds  # noqa: E402

_slow_ok = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                          print_blob=True, suppress_health_check=_slow_ok)
settings.register_profile("dev", max_examples=15, deadline=None, print_blob=True,
                          suppress_health_check=_slow_ok)
settings.register_profile("fuzz", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=_slow_ok)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
if os.environ.get("HYPOTHESIS_MAX_EXAMPLES"):    # e.g. a longer random run: profile dev, 300
    settings.register_profile("override", settings(
        max_examples=int(os.environ["HYPOTHESIS_MAX_EXAMPLES"])))
    settings.load_profile("override")


# ---- which kinds the passing examples held ----------------------------------------------------

_seen: dict[str, dict[str, set[str]]] = {}      # test id -> grammar -> kinds
_outcome: dict[str, str] = {}                     # test id -> "passed" / "failed" / "skipped"
_deselected: set[str] = set()                     # modules with a deselected test


def _observe(observation) -> None:
    if observation.type == "test_case" and observation.status == "passed":
        for name, kinds in strategies_kinds.parse(observation.features).items():
            _seen.setdefault(observation.property, {}).setdefault(name, set()).update(kinds)


observability.OBSERVABILITY_COLLECT_COVERAGE = False    # only the events are wanted (hypothesis
observability.add_observability_callback(_observe)      # supports setting this flag)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_deselected(items):
    _deselected.update(_module(item.nodeid) for item in items)


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        if _outcome.get(report.nodeid) in (None, "passed"):
            _outcome[report.nodeid] = report.outcome


def pytest_sessionfinish(session, exitstatus):
    if exitstatus != pytest.ExitCode.OK or hasattr(session.config, "workerinput"):
        return          # a failing run, or one xdist worker's share: no complete evidence
    if settings.get_current_profile_name() not in ("ci", "fuzz"):
        return          # a quick run (dev, HYPOTHESIS_MAX_EXAMPLES): not CI's examples
    picked = {_module(a.replace(os.sep, "/")) for a in session.config.args if "::" in a}
    modules: dict[str, list[str]] = {}
    for item in session.items:
        modules.setdefault(_module(item.nodeid), []).append(item.nodeid)
    complete = {m for m, ids in modules.items()
                if m not in _deselected and not any(m.endswith(p) or p.endswith(m) for p in picked)
                and all(_outcome.get(i) == "passed" for i in ids)}
    module_of = {t: _module(t) for t in _seen}
    checked, missing = strategies_kinds.missing_kinds(_seen, module_of, complete)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and checked:
        reporter.write_line(f"hypothesis grammar coverage checked: {', '.join(checked)}"
                            + (f"; MISSING {missing}" if missing else ""))
    if missing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            for name, kinds in missing.items():
                reporter.write_line(f"FAILED grammar coverage: no passing example of the {name!r} grammar "
                                    f"held {kinds}; change the grammar or the tests' examples so CI "
                                    f"draws every kind (tests/strategies_kinds.py)", red=True)
