"""The quality benchmarks' harness: log-FLOPs interpolation, paired verdicts, the method table's
checks, a missing peer or a failing run as a row with its reason, the peers' pruning and the
erasing baseline."""

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import compress_quality as cq  # noqa: E402
from benchmarks import paired, peers  # noqa: E402
from examples.digits_data import digits  # noqa: E402


def test_accuracy_at_a_flops_level_is_linear_in_log_flops_and_never_extrapolated():
    pts = [(0.1, 0.80), (0.4, 0.90), (0.2, 0.85)]
    value, why = paired.at_flops(pts, 0.2)
    assert value == pytest.approx(0.85) and why == ""
    # halfway in log between 0.1 and 0.4 is 0.2; a quarter of the way in log(0.1..0.2) is 0.1*2**.25
    value, _ = paired.at_flops(pts, 0.1 * 2 ** 0.25)
    assert value == pytest.approx(0.80 + 0.25 * 0.05)
    assert paired.at_flops(pts, 0.3)[0] == pytest.approx(
        0.85 + math.log(1.5) / math.log(2) * 0.05)
    for outside in (0.05, 0.5):
        value, why = paired.at_flops(pts, outside)
        assert value is None and "outside its points (FLOPs 0.100-0.400)" in why
    assert paired.at_flops([], 0.3) == (None, "no measured point")


def test_verdict_needs_twice_the_standard_error():
    peer = {s: 0.90 + 0.01 * s for s in range(5)}
    ahead = {s: v + 0.02 + 0.001 * (-1) ** s for s, v in peer.items()}
    noisy = {s: v + (0.03 if s % 2 else -0.025) for s, v in peer.items()}
    behind = {s: v - 0.01 for s, v in peer.items()}
    assert paired.verdict(ahead, peer).word == "beats"
    v = paired.verdict(noisy, peer)
    assert v.word == "ties" and abs(v.mean) < 2 * v.se
    v = paired.verdict(behind, peer)
    assert v.word == "loses" and v.mean == pytest.approx(-0.01) and v.cell().startswith("loses -1.00")
    missing = {**ahead, 3: None}
    v = paired.verdict(missing, peer, why_a="outside its points")
    assert v.word == "beats" and len(v.diffs) == 4 and "seeds [3] left out" in v.why
    v = paired.verdict({0: 0.9, 1: None}, {0: 0.8, 1: 0.8})
    assert v.word == "n/a"


def record(method, seed, target, flops, acc, task="digits"):
    return dict(task=task, seed=seed, method=method, target=target, flops=flops, accuracy=acc,
                params=flops, wall=2.0, cpu=2.0, note="")


def test_verdict_table_pairs_each_otofx_method_with_each_peer_at_each_level():
    specs = [cq.Spec("mine", "otofx", (0.3,), "DHSPGConfig", peer=False),
             cq.Spec("peer", "torch-pruning", (0.3,)), cq.Spec("narrow", "torch-pruning", (0.3,))]
    records = []
    for seed in range(4):
        records.append(record(cq.DENSE, seed, 0.0, 1.0, 0.99, ))
        for f in (0.6, 0.4, 0.2, 0.1, 0.05):
            records.append(record("mine", seed, f, f, 0.9 + 0.05 * f + 0.001 * seed))
            records.append(record("peer", seed, f, f, 0.9 + 0.001 * seed - 0.002 * (seed % 2)))
        for f in (0.6, 0.4):                       # its points cover 0.5 only
            records.append(record("narrow", seed, f, f, 0.95))
    table = cq.verdicts(records, ["digits"], specs, list(range(4)))
    assert [(r["peer"], r["level"]) for r in table] == [
        (p, lv) for p in ("peer", "narrow") for lv in cq.LEVELS]
    assert all(r["method"] == "mine" for r in table)
    vs_peer = {r["level"]: r for r in table if r["peer"] == "peer"}
    assert all(r["verdict"] == "beats" for r in vs_peer.values())
    in_log = 0.2 + 0.2 * math.log(0.3 / 0.2) / math.log(0.4 / 0.2)   # not 0.3: log FLOPs
    assert vs_peer[0.3]["mean"] == pytest.approx(0.05 * in_log + 0.001, abs=1e-9)
    vs_narrow = {r["level"]: r for r in table if r["peer"] == "narrow"}
    assert vs_narrow[0.5]["verdict"] == "loses"
    assert vs_narrow[0.15]["verdict"] == "n/a"
    assert "peer (seeds 0, 1, 2, 3: points span FLOPs 0.400-0.600)" in vs_narrow[0.15]["cell"]
    lines = cq.summary_lines(table, specs, ["digits"])
    assert lines[0].startswith("- **mine**: beats 4, ties 0, loses 1, n/a 3 of 8")
    assert "MISSED" in lines[0] and "loses to narrow on digits at 0.5" in lines[1]


def test_a_method_row_with_an_option_the_installed_otofx_lacks_fails_clearly(monkeypatch, capsys):
    bad = cq.Spec("otofx DHSPG", "otofx", (0.5,), "DHSPGConfig", {"no_such_option": 1}, peer=False)
    monkeypatch.setattr(cq, "METHODS", (bad,))
    with pytest.raises(cq.SpecError, match="METHODS row 'otofx DHSPG'.*no option no_such_option"):
        cq.check_spec(bad)
    assert cq.main(["--methods", "otofx DHSPG", "--seeds", "1", "--epochs", "1"]) == 2
    assert "no option no_such_option" in capsys.readouterr().err
    with pytest.raises(cq.SpecError, match="has no NoSuchConfig"):
        cq.check_spec(cq.Spec("x", "otofx", (0.5,), "NoSuchConfig", peer=False))
    with pytest.raises(cq.SpecError, match="unknown method"):
        cq.available(["nobody"])


def test_missing_peers_are_rows_with_their_reason_and_every_run_is_kept(monkeypatch, tmp_path):
    monkeypatch.setattr(peers, "load_oto", lambda: (None, "not installed (test)"))
    monkeypatch.setattr(peers, "load_torch_pruning", lambda: (None, "No module (test)"))
    md = tmp_path / "q.md"
    assert cq.main(["--tasks", "digits", "--seeds", "2", "--epochs", "1", "--levels", "0.3,0.6",
                    "--methods", "otofx DHSPG,only-train-once HESSO,torch-pruning L2 global "
                    "iterative", "--out", str(md)]) == 0
    text = md.read_text()
    assert "- only-train-once HESSO: not available: not installed (test)" in text
    assert "- torch-pruning L2 global iterative: not available: No module (test)" in text
    assert "no otofx method ran against a peer" in text
    assert "Commit " in text and "cores; load average" in text
    runs = json.loads(md.with_suffix(".json").read_text())["runs"]
    assert sorted((r["method"], r["seed"], r["target"]) for r in runs) == sorted(
        [(cq.DENSE, s, 0.0) for s in (0, 1)] + [("otofx DHSPG", s, t) for s in (0, 1)
                                                  for t in (0.3, 0.6)])
    flops = {r["target"]: r["flops"] for r in runs if r["seed"] == 0}
    assert flops[0.0] == 1.0          # otofx DHSPG asks for the FLOPs level: it lands on it
    assert flops[0.6] == pytest.approx(0.6, abs=0.03) and flops[0.3] == pytest.approx(0.3, abs=0.03)
    assert md.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_a_failing_run_is_a_row_not_a_crash(monkeypatch):
    def broken(spec, s, target):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(cq.RUNNERS, "otofx", broken)
    records = cq.run_unit("digits", 0, 1, [("otofx HESSO", 0.5)])
    assert records[1]["error"] == "RuntimeError: boom"
    rows = cq.point_rows(records, ["digits"], ["otofx HESSO"])
    assert rows == [["digits", "otofx HESSO", "0.5", "failed: RuntimeError: boom", "", "", "", "",
                     "0"]]


@pytest.mark.skipif(importlib.util.find_spec("torch_pruning") is None,
                    reason="torch-pruning is a bench extra (pip install -e '.[bench]')")
def test_torch_pruning_global_iterative_prunes_in_steps_and_keeps_the_classifier(monkeypatch):
    spec = dataclasses.replace(cq.by_name()["torch-pruning Taylor global iterative"], flops=False)
    s = cq.Setting("digits", digits(), 6, 0)        # warm-up 1 epoch, 2 pruning epochs, 3 more
    widths = []
    original = peers.tp_pruner

    def spy(*args, **kwargs):
        pruner = original(*args, **kwargs)
        step = pruner.step

        def counted():
            step()
            widths.append(sum(m.out_channels for m in args[1].modules()
                              if isinstance(m, torch.nn.Conv2d)))
        pruner.step = counted
        return pruner

    monkeypatch.setattr(peers, "tp_pruner", spy)
    model, note = cq.run_tp(spec, s, 0.5)
    full = sum(m.out_channels for m in cq.DigitsResNet().modules() if isinstance(m, torch.nn.Conv2d))
    assert len(widths) == 2 and full > widths[0] > widths[1]
    assert widths[1] == pytest.approx(full * 0.5, abs=full * 0.1)
    assert model.fc.out_features == 10 and "2 steps" in note


@pytest.mark.skipif(importlib.util.find_spec("torch_pruning") is None,
                    reason="torch-pruning is a bench extra (pip install -e '.[bench]')")
@pytest.mark.parametrize("name", ["torch-pruning L2 global iterative",
                                  "torch-pruning L2 uniform one-shot"])
def test_torch_pruning_reaches_a_flops_level_by_bisecting_its_ratio(name):
    """The bisected ratio prunes the warm-up model to the level (within what one channel more
    or less moves); the run itself lands near it, and its note says how it got there."""
    tp, _ = peers.load_torch_pruning()
    spec = cq.by_name()[name]
    s = cq.Setting("digits", digits(), 4, 0)
    model = s.model()
    x = s.data[0][0][:1]
    options = {k: v for k, v in spec.options.items()
               if k not in ("importance", "iterative", "global_pruning")}
    ratio = cq.tp_ratio_for(tp, model, s, 0.3, "l2", spec.options["global_pruning"], 1, 0, options)
    trial = peers.tp_pruner(tp, model, x, ratio, "l2", spec.options["global_pruning"], 1, **options)
    dense = cq.count_flops(model, (x,))
    trial.step()
    assert 0 < ratio < 1
    assert cq.count_flops(model, (x,)) / dense == pytest.approx(0.3, abs=0.03)
    small, note = cq.run_tp(spec, s, 0.15)
    assert "bisected for FLOPs 0.15" in note
    assert cq.count_flops(small, (x,)) / dense == pytest.approx(0.15, abs=0.05)


def test_flops_targeting_methods_are_read_at_their_run_for_the_level():
    """A FLOPs-targeting row is read where it landed (no interpolation, no bracketing needed);
    a grid row is interpolated."""
    mine = cq.by_name()["otofx DHSPG"]
    records = [record(mine.name, 0, 0.5, 0.497, 0.91), record(mine.name, 0, 0.3, 0.302, 0.88)]
    at = cq.levels_of(records, "digits", mine.name, [0], (0.5, 0.3, 0.15))
    assert at[0.5][0] == {0: 0.91} and at[0.3][0] == {0: 0.88}
    assert at[0.15][0] == {0: None} and "no measured point" in at[0.15][1]
    grid = [record("grid", 0, t, f, a) for t, f, a in ((0.2, 0.6, 0.9), (0.5, 0.4, 0.8))]
    assert cq.levels_of(grid, "digits", "grid", [0], (0.5,))[0.5][0][0] == pytest.approx(
        0.8 + 0.1 * math.log(0.5 / 0.4) / math.log(0.6 / 0.4))


def test_erasing_baseline_drops_the_smallest_norm_structures_and_shrinks():
    sys.path.insert(0, str(ROOT / "tests"))
    from zoo.supernets import SUPERNETS

    import otofx
    from benchmarks import erase_quality as eq
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    gm = otofx.trace(SUPERNETS["resnet"](c=4), (x,))
    analysis = otofx.analyze(gm, (x,))
    params = dict(gm.named_parameters())
    with torch.no_grad():          # make the blocks of stage 1 the smallest
        for s in analysis.erasable:
            if s.name.startswith("stages.1.blocks"):
                for p in s.params:
                    params[p].mul_(1e-3)
    small, erased, n = eq.norm_erase(gm, x, 3 / 8)
    assert (erased, n) == (3, 8)
    names = {name for name, _ in small.named_parameters()}
    assert not any(name.startswith("stages.1.blocks") for name in names)
    assert any(name.startswith("stages.0.blocks") for name in names)
    gm.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), gm(x), rtol=1e-4, atol=1e-5)


def test_within_two_points_of_the_full_network_is_claimed_only_beyond_twice_the_se():
    from benchmarks.erase_quality import within_word
    full = {s: 0.95 for s in range(5)}
    assert within_word(paired.verdict({s: 0.945 + 0.001 * s for s in range(5)}, full)) == "within"
    assert within_word(paired.verdict({s: 0.90 + 0.001 * s for s in range(5)}, full)) == \
        "NOT within"
    assert within_word(paired.verdict({s: 0.95 + 0.04 * (-1) ** s for s in range(5)}, full)
                       ).startswith("undecided")


# ---- the language-model benchmark (benchmarks/lm_quality.py) ----------------------------------

def _lm_setting(steps=40, seed=0):
    from benchmarks import lm_quality as lm
    train, val, vocab = lm.load_text()
    return lm.Setting(lm.Size(16, 1, 2, 8, 4, steps), train, val[:2000], vocab, seed)


def test_lm_hand_written_attention_is_the_sdpa_model_and_causal():
    s = _lm_setting()
    sdpa, matmul = s.model("sdpa").eval(), s.model("matmul").eval()
    assert [(n, p.shape) for n, p in sdpa.named_parameters()] == \
        [(n, p.shape) for n, p in matmul.named_parameters()]
    x = s.example()
    later = x.clone()
    later[:, 5:] = (later[:, 5:] + 1) % s.vocab
    with torch.no_grad():
        torch.testing.assert_close(matmul(x), sdpa(x), rtol=1e-5, atol=1e-5)
        for m in (sdpa, matmul):        # a token's logits never see later tokens
            torch.testing.assert_close(m(later)[:, :5], m(x)[:, :5])
            assert not torch.allclose(m(later)[:, 5:], m(x)[:, 5:])


@pytest.mark.parametrize("width,layers", [(16, 1), (64, 2), (128, 4)])
def test_lm_untrained_gpt_predicts_near_uniform_whatever_the_seed(width, layers):
    """GPT-2's initialisation: the tied output layer starts with small logits, so an untrained
    model's perplexity is about the vocabulary size on every seed (torch's N(0, 1) embedding gave
    logits of scale width: untrained perplexities of 2e5 at width 16, 1e38-1e42 at width 128)."""
    from benchmarks import lm_quality as lm
    train, val, vocab = lm.load_text()
    for seed in (0, 1):
        s = lm.Setting(lm.Size(width, layers, 2, 8, 4, 10), train, val[:2000], vocab, seed)
        model = s.model()
        assert 0.5 * vocab <= s.perplexity(model) <= 1.5 * vocab
        stds = {n: float(p.std()) for n, p in model.named_parameters() if n.endswith("weight")
                and p.dim() == 2}
        for name, std in stds.items():      # the residual writers start smaller by sqrt(2L)
            want = 0.02 / (2 * layers) ** 0.5 if name.split(".")[-2] in ("o", "down") else 0.02
            assert std == pytest.approx(want, rel=0.25), name


@given(steps=st.integers(20, 5000))
def test_lm_learning_rate_warms_up_then_decays_to_a_tenth(steps):
    from benchmarks import lm_quality as lm
    s = lm.Setting(lm.Size(16, 1, 2, 8, 4, steps), torch.zeros(1), torch.zeros(1), 2, 0)
    lrs = [s.lr_at(t) for t in range(steps)]
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(s.size.lr) and 0 < lrs[0] <= s.size.lr
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert lrs[-1] == pytest.approx(0.1 * s.size.lr)


def test_lm_perplexity_covers_the_whole_validation_text_in_any_batching():
    s = _lm_setting()
    vocab = s.vocab

    class Uniform(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(*x.shape, vocab)

    assert s.perplexity(Uniform()) == pytest.approx(vocab)     # every token has probability 1/V
    model = s.model()
    assert s.perplexity(model, rows=7) == pytest.approx(s.perplexity(model, rows=64), rel=1e-6)


def test_lm_otofx_subnet_is_exact_at_its_flops_target_with_the_hidden_size_pruned():
    from benchmarks import lm_quality as lm
    s = _lm_setting(steps=40)
    out = lm.otofx_method("HESSO", True)(s, 0.5, 0.0)
    x = s.example()
    kept = lm.count_flops(out.model, (x,)) / lm.count_flops(s.model(), (x,))
    assert out.exactness <= 1e-5
    assert 0.4 <= kept <= 0.55
    assert any(p.shape[-1] < 16 for n, p in out.model.named_parameters() if "tok" in n)


@pytest.mark.skipif(importlib.util.find_spec("only_train_once") is None,
                    reason="only-train-once is a bench extra (pip install -e '.[bench]')")
def test_lm_only_train_once_runs_on_hand_written_attention_and_its_subnet_is_its_model():
    from benchmarks import lm_quality as lm
    oto, why = peers.load_oto()
    assert oto is not None, why
    s = _lm_setting(steps=30)
    out = lm.oto_method(oto)(s, 0.5, 0.5)
    x = s.example()
    assert out.exactness <= 1e-5
    assert lm.count_flops(out.model, (x,)) < lm.count_flops(s.model("matmul"), (x,))


def test_lm_runs_made_apart_merge_by_seed_with_their_failures_and_knobs(tmp_path):
    from benchmarks import lm_quality as lm
    files = []
    for seed in (1, 0):
        run = lm.Run(10.0 + seed, 0.5, 0.5, 1e-7, 1.0, "", seed)
        data = {"otofx HESSO @ 0.5": [run.__dict__], "failures": {f"x @ {seed}": "failed: boom"},
                "knobs": {f"tp @ {seed}": 0.1 * seed}, "skipped": {}}
        files.append(tmp_path / f"seed{seed}.json")
        files[-1].write_text(json.dumps(data))
    results = lm.Results()
    lm.merge(files, results)
    assert [r.seed for r in results.runs["otofx HESSO @ 0.5"]] == [0, 1]
    assert [r.ppl for r in results.runs["otofx HESSO @ 0.5"]] == [10.0, 11.0]
    assert set(results.failures) == {"x @ 0", "x @ 1"} and set(results.knobs) == {"tp @ 0", "tp @ 1"}
