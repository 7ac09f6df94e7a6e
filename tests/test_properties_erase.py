"""Property tests of erasing (grammar in tests/strategies_erase.py).

* validity: whatever a random valid erasure or H2SPG erases, every graph output stays connected
  to the inputs, even at a target of 0.99;
* exactness: ``shrink(gm)(x)`` equals ``gm(x)`` after erasing (with random zero channels too), and
  the structures shrink deletes are exactly the chosen ones (for H2SPG: with the ones nested in
  them, exactly the ones it erased);
* H2SPG erases the target count, or the largest valid count it found and says so.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from hypothesis import given, note
from hypothesis import strategies as st
from otofx.passes.erasable import closure, connected
from strategies_budget import examples
from strategies_erase import INPUT, build, supernets

import otofx
from otofx.testing import erase_structures, zero_groups

SEEDS = st.integers(0, 2**16)
FEW = examples(1 / 3)     # each example trains or shrinks a network: 13 in CI


def _same(gm, small, x):
    gm.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), gm(x), rtol=1e-4, atol=1e-5)


def _setup(spec, seed):
    note(f"spec = {spec!r}")
    torch.manual_seed(seed)
    x = torch.randn(INPUT)
    gm = otofx.trace(build(spec))
    return gm, otofx.analyze(gm, (x,)), x


@FEW
@given(spec=supernets(), fraction=st.sampled_from([0.3, 0.6, 0.99]), channels=st.booleans(),
       seed=SEEDS)
def test_random_valid_erasure_stays_connected_and_shrinks_exactly(spec, fraction, channels, seed):
    gm, analysis, x = _setup(spec, seed)
    chosen = erase_structures(gm, analysis, fraction, seed)
    by = {s.name: s for s in analysis.structures}
    assert connected(analysis.gm, [by[n] for n in chosen])
    if channels:
        zero_groups(gm, analysis, 0.5, seed=seed)
    small = otofx.shrink(gm, analysis)
    assert set(small.meta["otofx.shrink"].erased) == set(chosen)
    _same(gm, small, x)
    if chosen:
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in gm.parameters())


@FEW
@given(spec=supernets(max_blocks=2), target=st.sampled_from([0.5, 0.99]), seed=SEEDS)
def test_h2spg_erases_a_valid_set_and_the_subnet_is_exact(spec, target, seed):
    torch.manual_seed(seed)
    x = torch.randn(INPUT)
    note(f"spec = {spec!r}")
    job = otofx.compress(build(spec), otofx.H2SPGConfig(
        lr=0.05, target_structure_sparsity=target, start_pruning_step=1, pruning_steps=2), (x,))
    y = torch.randint(0, 3, (INPUT[0],))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            loss = F.cross_entropy(job.module(x), y)
            job.optimizer.zero_grad()
            loss.backward()
            job.optimizer.step()
    report = job.optimizer.sparsity_report()
    erased = report["erased_structures"]
    by = {s.name: s for s in job.analysis.structures}
    assert connected(job.analysis.gm, [by[n] for n in erased])
    if len(erased) < report["target_structures"]:
        assert report["structure_warning"] and any("cannot be met" in str(w.message) for w in caught)
    else:
        assert len(erased) == report["target_structures"]
    small = job.subnet()
    deleted = small.meta["otofx.shrink"].erased          # outermost only: with what they hold
    assert closure(job.analysis.structures, deleted) & {s.name for s in job.analysis.erasable} == set(erased)
    _same(job.module, small, x)
    assert copy.deepcopy(small)(x).shape == (INPUT[0], 3)
