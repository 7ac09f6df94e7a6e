"""The grammars' kinds: each is reachable, and the session-end check (tests/conftest.py,
tests/strategies_kinds.py) fails when CI's examples miss one and judges only complete evidence."""

from __future__ import annotations

import strategies_erase
import strategies_kinds as sk
import strategies_transformer
from hypothesis import Phase, given, settings
from strategies import cnn_models


def _drawn(strategy, kinds_of, n: int) -> set[str]:
    """The kinds ``n`` fixed examples of ``strategy`` hold (drawn only, no model built)."""
    held: set[str] = set()

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate])
    @given(x=strategy)
    def draw(x):
        held.update(kinds_of(x))

    with sk.quiet():      # generated, not tested: not evidence for the session check
        draw()
    return held


def test_every_registered_kind_is_reachable():
    grammars = {
        "cnn": _drawn(cnn_models(allow_unknown=True), lambda c: c.blocks, 100),
        "transformer": _drawn(strategies_transformer.transformer_specs(), strategies_transformer.kinds, 60),
        "supernet": _drawn(strategies_erase.supernets(), strategies_erase.kinds, 60),
    }
    for name, held in grammars.items():
        assert set(sk.GRAMMARS[name]) - held == set(), (name, set(sk.GRAMMARS[name]) - held)


def test_the_check_names_a_missing_kind_and_waits_for_complete_evidence():
    everything = set(sk.GRAMMARS["cnn"])
    seen = {"a.py::t1": {"cnn": everything - {"upsample"}}, "b.py::t2": {"cnn": {"conv"}}}
    module_of = {"a.py::t1": "a.py", "b.py::t2": "b.py"}
    checked, missing = sk.missing_kinds(seen, module_of, complete={"a.py", "b.py"})
    assert "cnn" in checked and missing == {"cnn": ["upsample"]}
    seen["b.py::t2"]["cnn"].add("upsample")                 # another test's examples held it
    assert sk.missing_kinds(seen, module_of, complete={"a.py", "b.py"}) == (["cnn"], {})
    seen["b.py::t2"]["cnn"] = {"conv"}
    checked, missing = sk.missing_kinds(seen, module_of, complete={"a.py"})   # b.py ran in part
    assert "cnn" not in checked and missing == {}


def test_events_parse_back_to_kinds():
    assert sk.parse(["cnn: residual", "cnn: nonsense", "transformer: rotary", "Retried draw"]) == {
        "cnn": {"residual"}, "transformer": {"rotary"}}
