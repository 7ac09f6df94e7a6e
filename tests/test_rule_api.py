"""The typed rule API: what a rule may ask of its context is what ``passes.registry`` declares.

``PropagateContext`` and ``RewriteContext`` (``passes/registry.py``) are the whole surface a rule's
``propagate`` and ``rewrite`` see. The contexts the passes hand them (``ChannelContext``,
``ShrinkContext``) must provide every member with the same parameters (optional extras allowed),
every registered rule must be annotated with them, and every ``ctx.<name>`` a rule file reads
must be declared there (a rule reaching for ``ctx._private`` or a method only one context has
fails here, not on some model).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from otofx.passes.channels import ChannelContext
from otofx.passes.registry import RULES, PropagateContext, RewriteContext
from otofx.passes.shrink import ShrinkContext

RULE_FILES = sorted(p for p in (Path(__file__).resolve().parents[1] / "passes" / "rules").glob("*.py")
                    if p.name not in ("__init__.py", "flops.py"))    # flops.py: FlopContext, not a rule
PROTOCOLS = {"PropagateContext": PropagateContext, "RewriteContext": RewriteContext}


def members(protocol: type) -> set[str]:
    """The attributes and methods a protocol declares."""
    names = set(protocol.__annotations__)
    return names | {n for n in vars(protocol) if not n.startswith("_")}


@pytest.mark.parametrize("protocol, context, attributes", [
    (PropagateContext, ChannelContext, {"gm", "table", "node", "attention_unit", "prune_hidden"}),
    (RewriteContext, ShrinkContext, {"gm", "table", "node"}),
])
def test_each_context_provides_its_protocol(protocol, context, attributes):
    assert set(protocol.__annotations__) == attributes
    init = inspect.getsource(context.__init__)
    for name in attributes:
        assert re.search(rf"self\.{name}\s*[:=]", init), f"{context.__name__} does not set {name}"
    for name in members(protocol) - attributes:
        declared, actual = getattr(protocol, name), getattr(context, name, None)
        assert actual is not None, f"{context.__name__} has no {name}"
        if isinstance(declared, property):
            assert isinstance(actual, property), name
            continue
        have, want = inspect.signature(actual).parameters, list(inspect.signature(declared).parameters)
        assert list(have)[:len(want)] == want, name          # the same parameters, in order
        assert all(p.default is not p.empty for p in list(have.values())[len(want):]), name   # extras optional


def test_every_rule_is_annotated_with_the_protocols():
    rules = set(RULES._rules.values())
    assert len(rules) > 40
    for rule in rules:
        assert inspect.signature(rule.propagate).parameters["ctx"].annotation == "PropagateContext", rule.name
        if rule.rewrite is not None:
            assert inspect.signature(rule.rewrite).parameters["ctx"].annotation == "RewriteContext", rule.name


def _ctx_uses(path: Path) -> list[tuple[str, set[str], str]]:
    """(function, the protocol names its ``ctx`` is annotated with, an attribute it reads)."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, ast.FunctionDef):
            continue
        ctx = next((a for a in fn.args.args if a.arg == "ctx"), None)
        if ctx is None:
            continue
        kinds = {n.id for n in ast.walk(ctx.annotation) if isinstance(n, ast.Name)} if ctx.annotation else set()
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ctx":
                found.append((fn.name, kinds, node.attr))
        if not found or found[-1][0] != fn.name:
            found.append((fn.name, kinds, ""))
    return found


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rules_use_only_what_the_protocols_declare(path):
    uses = _ctx_uses(path)
    assert uses, f"{path.name} has no rule"
    for fn, kinds, attr in uses:
        assert kinds and kinds <= set(PROTOCOLS), f"{path.name}: {fn}'s ctx is not annotated with a protocol"
        for kind in kinds:
            assert not attr or attr in members(PROTOCOLS[kind]), f"{path.name}: {fn} reads ctx.{attr}, not in {kind}"


def test_the_check_sees_an_undeclared_use(tmp_path):
    rule = tmp_path / "rule.py"
    rule.write_text("def f(ctx: RewriteContext, node):\n    return ctx._labels(node)\n"
                    "def g(ctx, node):\n    return ctx.labels(node)\n")
    assert _ctx_uses(rule) == [("f", {"RewriteContext"}, "_labels"), ("g", set(), "labels")]
    with pytest.raises(AssertionError, match="not in RewriteContext"):
        test_rules_use_only_what_the_protocols_declare(rule)
