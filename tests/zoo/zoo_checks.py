"""The zoo's round trip, shared by the timm and transformers zoos: trace, analyse, zero 30% of every
prunable group, shrink, and check outputs (every tensor leaf) and the predicted parameter count.

Every zoo model's prunable share (parameters in prunable groups / all parameters) is recorded in
``prunable_share.json`` beside this file; a share below its record fails. After a change that is
meant to move a share (or to add a zoo model), rewrite the records of the models a run touches with
``OTOFX_UPDATE_PRUNABLE_SHARE=1 .venv/bin/python -m pytest -q tests/zoo`` and commit the file; the
diff shows what moved."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import otofx
from otofx.testing import zero_groups

FRACTION = 0.3
SHARES = Path(__file__).with_name("prunable_share.json")
UPDATE = "OTOFX_UPDATE_PRUNABLE_SHARE"


@dataclass
class Roundtrip:
    gm: Any
    analysis: otofx.Analysis
    small: Any
    params_before: int


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: these models are tiny, and on a shared 2-core machine a second
    intra-op thread that waits for a core makes every op wait (measured 7x the CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_leaves_close(got: Any, expected: Any) -> None:
    """Every tensor leaf of two outputs (tensors, tuples, HF ``ModelOutput``s) matches, with the
    tolerances of the torchvision zoo (absolute tolerance scaled by the output's magnitude)."""
    a, b = tree_leaves(got), tree_leaves(expected)
    assert len(a) == len(b), (len(a), len(b))
    assert b, "no outputs to compare"
    for i, (u, v) in enumerate(zip(a, b)):
        if not isinstance(v, torch.Tensor):
            assert u == v, (i, u, v)
            continue
        scale = max(1.0, v.abs().max().item()) if v.numel() and v.is_floating_point() else 1.0
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, i=i: f"leaf {i}: {m}")


def assert_share_kept(key: str, analysis: otofx.Analysis) -> None:
    """The prunable share of ``key``'s analysis is at least its record in ``SHARES`` (rounded
    down to 4 decimals when recorded); with ``OTOFX_UPDATE_PRUNABLE_SHARE=1`` it is recorded instead."""
    removable, total = analysis.prunable_params()
    share = removable / max(total, 1)
    records = json.loads(SHARES.read_text()) if SHARES.exists() else {}
    if os.environ.get(UPDATE):
        records[key] = int(share * 1e4) / 1e4
        part = SHARES.with_suffix(".part")       # written whole, then renamed: a reader never sees half
        part.write_text(json.dumps(dict(sorted(records.items())), indent=1) + "\n")
        part.replace(SHARES)
        return
    assert key in records, f"no prunable share recorded for '{key}' in {SHARES.name}: run {UPDATE}=1 (see {__name__})"
    assert share >= records[key], (
        f"'{key}': the prunable share dropped from {records[key]:.4f} to {share:.4f} of {total:,} parameters "
        f"(if that is intended, rerun with {UPDATE}=1 and commit {SHARES.name}); pinned:\n{analysis.report()}")


def roundtrip(model: nn.Module, inputs: tuple, leaf_modules=(), attention_unit: str = "head",
              key: str | None = None) -> Roundtrip:
    """Analyse ``model``, zero ``FRACTION`` of each prunable group, shrink; assert the shrunk
    graph computes the same outputs with exactly the parameter count the analysis predicts,
    fewer than before, and that the user's model was not touched. With ``key``, the prunable share
    is checked against its record (:func:`assert_share_kept`)."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = n_params(model)
    gm = otofx.trace(model, inputs, leaf_modules=leaf_modules)
    analysis = otofx.analyze(gm, inputs, attention_unit=attention_unit)
    crashed = [w for g in analysis.groups for w in g.why_pinned if "cannot handle" in w]
    assert not crashed, crashed
    assert analysis.prunable, analysis.report()
    if key is not None:
        assert_share_kept(key, analysis)
    zero_groups(gm, analysis, FRACTION, seed=0)
    small = otofx.shrink(gm, analysis)
    gm.eval()
    small.eval()
    with torch.no_grad():
        assert_leaves_close(small(*inputs), gm(*inputs))
    stats = small.meta["otofx.shrink"]
    assert n_params(small) == analysis.params_after(stats.removed_channels)
    assert n_params(small) < params
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), \
        "the user's model changed"
    return Roundtrip(gm, analysis, small, params)


def kept_indices(before: torch.Tensor, after: torch.Tensor, dim: int) -> list[int]:
    """Which slices along ``dim`` of the original weight ``before`` the shrunk ``after`` kept, in order.
    The other dims may have shrunk too (a hidden size): every element of ``after`` whose value occurs
    once in ``before`` (random weights: nearly all) is found there, and those of one slice of
    ``after`` all come from one slice of ``before``, at increasing positions."""
    flat = before.detach().reshape(-1)
    values, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
    where = torch.full((values.numel(),), -1, dtype=torch.long)
    where[inverse] = torch.arange(flat.numel())
    found = []
    for i in range(after.shape[dim]):
        part = after.detach().select(dim, i).reshape(-1).contiguous()
        pos = torch.searchsorted(values, part).clamp(max=values.numel() - 1)
        hit = (values[pos] == part) & (counts[pos] == 1)
        assert bool(hit.any()), f"slice {i} along dim {dim} shares no value with the original weight"
        origin = torch.stack(torch.unravel_index(where[pos[hit]], before.shape))
        rows = origin[dim].unique()
        assert rows.numel() == 1, f"slice {i} along dim {dim} mixes slices {rows.tolist()} of the original"
        order = torch.tensor(before.stride())[[d for d in range(before.dim()) if d != dim]]
        offsets = (origin[[d for d in range(before.dim()) if d != dim]] * order[:, None]).sum(0)
        assert bool((offsets.diff() > 0).all()), f"slice {i} along dim {dim} is reordered"
        found.append(int(rows[0]))
    return found


def heads_kept(rows: list[int], n: int, head_dim: int, offset: int = 0) -> dict[int, list[int]]:
    """Kept ``rows`` of an ``n``-head projection starting at ``offset``: head -> kept offsets in it."""
    kept: dict[int, list[int]] = {}
    for r in rows:
        if offset <= r < offset + n * head_dim:
            kept.setdefault((r - offset) // head_dim, []).append((r - offset) % head_dim)
    return kept


def assert_heads_pinned(analysis, reason: str) -> None:
    """Some attention projection's head group is pinned (never pruned), with ``reason`` among its
    reasons: otofx could not prove the heads separable and said so instead of guessing."""
    pinned = [g for g in analysis.pinned
              if any(s.role == "producer" and any(k in s.param for k in ("qkv", "q.", "query", "q_proj"))
                     for s in g.members)]
    assert pinned, "expected a pinned attention head group"
    assert reason, "an empty reason would match any reason"
    reasons = [w for g in pinned for w in g.why_pinned]
    assert any(reason in w for w in reasons), reasons
