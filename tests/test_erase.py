"""Erasing operators: the erasable pass, connectivity, shrink's join simplification, H2SPG."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from otofx.passes.common import tensor_named
from otofx.passes.erasable import closure, connected
from torch import nn
from zoo.supernets import DartsSuperNet, SuperResNet, UNetStack

import otofx
from otofx.testing import erase_structures, zero_groups


def conv_bn(cin, cout, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout))


class Joins(nn.Module):
    """A residual branch, a three-term sum without skip, and a cat operand before a head."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.branch = nn.Sequential(conv_bn(8, 8), nn.ReLU(), conv_bn(8, 8))
        self.t3, self.t5, self.t1 = conv_bn(8, 8, 3), conv_bn(8, 8, 5), conv_bn(8, 8, 1)
        self.side = conv_bn(8, 4, 1)
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.branch(x)
        y = self.t3(x) + self.t5(x) + self.t1(x)
        return self.head(torch.cat([y, F.relu(self.side(y))], 1))


def _analyze(model, x):
    gm = otofx.trace(model)
    return gm, otofx.analyze(gm, (x,))


def _zero(gm, structure):
    with torch.no_grad():
        for p in structure.params:
            tensor_named(gm, p).zero_()


def _by_name(analysis):
    return {s.name: s for s in analysis.structures}


def _same(gm, small, x):
    gm.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), gm(x), rtol=1e-4, atol=1e-5)


X = torch.randn(2, 3, 8, 8)


def test_structures_of_each_join_with_their_own_parameters():
    _, a = _analyze(Joins(), X)
    s = _by_name(a)
    assert s["branch"].kind == "residual branch"
    assert set(s["branch"].params) == {f"branch.{i}.{j}.{w}" for i in (0, 2) for j in (0, 1)
                                       for w in ("weight", "bias")}
    assert {s[n].kind for n in ("t3", "t5", "t1")} == {"mixed-edge candidate"}
    assert s["side"].kind == "cat operand" and s["side"].segment == (8, 12)
    assert all(x.erasable for x in a.structures), [x.why_pinned for x in a.structures]
    assert a.structures is a.gm.meta["otofx.structures"]
    node = next(n for n in a.gm.graph.nodes if n.name == "branch_2_0")
    assert node.meta["otofx.structure"] == ["branch"]


def test_shrink_deletes_erased_structures_and_simplifies_joins():
    gm, a = _analyze(Joins(), X)
    s = _by_name(a)
    for name in ("branch", "t5", "t1", "side"):
        _zero(gm, s[name])
    small = otofx.shrink(gm, a)
    _same(gm, small, X)
    assert sorted(small.meta["otofx.shrink"].erased) == ["branch", "side", "t1", "t5"]
    names = dict(small.named_modules())
    assert not any(n.startswith(("branch", "t5", "t1", "side")) for n in names)
    assert small.head.in_channels == 8
    # by the function's name: str(target) holds its address, which may spell "add" in hex
    adds = [n for n in small.graph.nodes
            if n.op == "call_function" and getattr(n.target, "__name__", "") in ("add", "iadd", "add_")]
    assert not adds, small.code           # x + 0 -> x; t3 + 0 + 0 -> t3
    before = sum(p.numel() for p in gm.parameters())
    gone = sum(s[n].numel for n in ("branch", "t5", "t1", "side")) + 4 * 5   # head's columns
    assert sum(p.numel() for p in small.parameters()) == before - gone


def test_connectivity_keeps_one_term_of_a_sum_without_skip():
    gm, a = _analyze(Joins(), X)
    s = _by_name(a)
    terms = [s[n] for n in ("t3", "t5", "t1")]
    assert connected(a.gm, terms[:2]) and not connected(a.gm, terms)
    for t in terms:
        _zero(gm, t)
    small = otofx.shrink(gm, a)      # all three are zero: one stays so the output is computed
    _same(gm, small, X)
    assert len(set(small.meta["otofx.shrink"].erased) & {"t3", "t5", "t1"}) == 2


def test_a_structure_goes_only_once_all_its_parameters_are_zero():
    gm, a = _analyze(Joins(), X)
    with torch.no_grad():        # output zero (last BatchNorm's affine), but the convs are not
        gm.get_submodule("branch.2.1").weight.zero_()
        gm.get_submodule("branch.2.1").bias.zero_()
    small = otofx.shrink(gm, a)
    assert "branch" not in small.meta["otofx.shrink"].erased
    _same(gm, small, X)
    _zero(gm, _by_name(a)["branch"])
    small = otofx.shrink(gm, a)
    assert "branch" in small.meta["otofx.shrink"].erased and not hasattr(small, "branch")
    _same(gm, small, X)


class Shared(nn.Module):
    """Two branches run the same conv: neither owns it; their sum does."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.shared, self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.post = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        x = self.stem(x)
        return x + self.post(self.a(self.shared(x)) + self.b(self.shared(x)))


class Gated(nn.Module):
    """sigmoid(conv(x)) is 0.5, not 0, once the conv is zero: not erasable."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        x = self.stem(x)
        return x + torch.sigmoid(self.conv(x))


def test_shared_parameters_and_non_vanishing_outputs_pin():
    _, a = _analyze(Shared(), X)
    s = _by_name(a)
    assert not s["a"].erasable and "shared" in s["a"].why_pinned[0]
    assert "shared" in s["a"].why_pinned[0] and "outside it" in s["a"].why_pinned[0]
    assert not s["b"].erasable
    outer = s["post"]
    assert outer.erasable and "shared.weight" in outer.params
    assert set(outer.children) == {"a", "b"}
    _, a = _analyze(Gated(), X)
    (g,) = a.structures
    assert not g.erasable and "does not make its output zero" in g.why_pinned[0]


def test_hierarchy_nests_blocks_in_stages_and_erasing_a_stage_takes_them():
    x = torch.randn(2, 1, 8, 8)
    gm, a = _analyze(SuperResNet(c=4, stages=1, blocks=2), x)
    s = _by_name(a)
    assert set(s["stages.0"].children) == {"stages.0.blocks.0", "stages.0.blocks.1"}
    assert s["stages.0.blocks.0"].parents == ["stages.0"]
    assert closure(a.structures, ["stages.0"]) == {"stages.0", "stages.0.blocks.0",
                                                    "stages.0.blocks.1"}
    _zero(gm, s["stages.0"])
    small = otofx.shrink(gm, a)
    assert small.meta["otofx.shrink"].erased == ["stages.0"]
    assert not hasattr(small, "stages")
    _same(gm, small, x)


@pytest.mark.parametrize("net", [UNetStack, DartsSuperNet])
def test_random_valid_erasures_of_supernets_shrink_exactly(net):
    x = torch.randn(2, 1, 8, 8)
    gm, a = _analyze(net(c=4, **({"cells": 1} if net is DartsSuperNet else {"unets": 1})), x)
    assert a.erasable
    for seed in range(2):
        work = copy.deepcopy(gm)
        chosen = erase_structures(work, a, 0.99, seed)
        assert chosen and connected(a.gm, [_by_name(a)[n] for n in chosen])
        small = otofx.shrink(work, a)
        assert set(small.meta["otofx.shrink"].erased) == set(chosen)
        _same(work, small, x)


class TransformerBlock(nn.Module):
    def __init__(self, d=16, heads=2):
        super().__init__()
        self.emb, self.head = nn.Linear(8, d), nn.Linear(d, 3)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        x = self.emb(x)
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(1))


def test_transformer_sub_layers_are_structures_and_erase_exactly():
    x = torch.randn(2, 5, 8)
    gm, a = _analyze(TransformerBlock(), x)
    kinds = {s.kind: s for s in a.structures}
    assert set(kinds) == {"attention sub-layer", "MLP sub-layer"}
    assert {p.split(".")[0] for p in kinds["attention sub-layer"].params} == {"ln1", "attn"}
    assert {p.split(".")[0] for p in kinds["MLP sub-layer"].params} == {"ln2", "fc1", "fc2"}
    for s in a.structures:
        _zero(gm, s)
    small = otofx.shrink(gm, a)        # both go: the block is the identity, emb feeds the head
    assert len(small.meta["otofx.shrink"].erased) == 2
    assert {n for n, _ in small.named_children()} == {"emb", "head"}
    _same(gm, small, x)


# regressions found by tests/test_properties_erase.py
CAT_OF_SUM = [("residual", ("seq", [("cat", [("seq", [("sum", [("seq", [("conv", 1, False)]),
                                                              ("seq", [("conv", 1, False)])],
                                                       False)])], False)]))]
CAT_OF_TWO = [("residual", ("seq", [("cat", [("seq", [("conv", 1, False)]),
                                             ("seq", [("conv", 1, False)])], False)]))]


@pytest.mark.parametrize("spec", [CAT_OF_SUM, CAT_OF_TWO])
def test_a_cat_keeps_an_operand_and_never_reads_an_erased_sum(spec):
    from strategies_erase import INPUT, build
    x = torch.randn(INPUT)
    gm, a = _analyze(build(spec), x)
    inner = [s for s in a.erasable if not s.children]
    assert len(inner) == 2 and not connected(a.gm, inner)      # an empty cat, or a zero read
    for s in inner:
        _zero(gm, s)
    small = otofx.shrink(gm, a)
    assert len(small.meta["otofx.shrink"].erased) == 1
    _same(gm, small, x)


def test_zero_groups_can_erase_structures_too():
    x = torch.randn(2, 1, 8, 8)
    gm, a = _analyze(SuperResNet(c=4, stages=1, blocks=3), x)
    zero_groups(gm, a, 0.5, seed=1, structures=0.5)
    small = otofx.shrink(gm, a)
    stats = small.meta["otofx.shrink"]
    assert stats.erased and stats.removed
    _same(gm, small, x)


# ---- H2SPG ---------------------------------------------------------------------------------------


def _train(job, steps, seed=0, start=0):
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 5, (8,), generator=gen))
            for _ in range(steps)]
    for x, y in data[start:]:
        loss = F.cross_entropy(job.module(x).mean((2, 3)), y)
        job.optimizer.zero_grad()
        loss.backward()
        job.optimizer.step()


def _h2spg(**kw):
    return otofx.H2SPGConfig(lr=0.05, momentum=0.9, start_pruning_step=2, pruning_steps=6, **kw)


def test_h2spg_erases_exactly_the_target_count():
    torch.manual_seed(0)
    job = otofx.compress(Joins(), _h2spg(target_structures=3), (X,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(job, 10)
    report = job.optimizer.sparsity_report()
    assert len(report["erased_structures"]) == report["target_structures"] == 3
    assert not report["structure_warning"]
    small = job.subnet()
    deleted = small.meta["otofx.shrink"].erased          # outermost only: with what they hold
    assert closure(job.analysis.structures, deleted) & {s.name for s in job.analysis.erasable} == set(
        report["erased_structures"])
    _same(job.module, small, X)
    text = job.report(small)
    assert "structures: target 3" in text and "erased 3" in text


def test_h2spg_impossible_target_takes_the_largest_valid_count_and_warns():
    torch.manual_seed(0)
    job = otofx.compress(Joins(), _h2spg(target_structure_sparsity=0.99, target_group_sparsity=0.25),
                         (X,))
    with pytest.warns(UserWarning, match="cannot be met without disconnecting"):
        _train(job, 10)
    report = job.optimizer.sparsity_report()
    assert len(report["erased_structures"]) == 4 < report["target_structures"] == 5
    assert report["zero_channels"] - report["zero_channels_in_erased"] == report["target_channels"] > 0
    small = job.subnet()
    _same(job.module, small, X)
    assert "cannot be met" in job.report(small)


def test_h2spg_state_dict_resumes_bit_for_bit():
    cfg = _h2spg(target_structures=2)
    torch.manual_seed(1)
    full = otofx.compress(Joins(), cfg, (X,))
    _train(full, 4)
    module, optim = copy.deepcopy(full.module.state_dict()), copy.deepcopy(full.optimizer.state_dict())
    _train(full, 10, start=4)
    torch.manual_seed(7)
    job = otofx.compress(Joins(), cfg, (X,))
    job.module.load_state_dict(module)
    job.optimizer.load_state_dict(optim)
    _train(job, 10, start=4)
    for (name, a), b in zip(full.module.state_dict().items(), job.module.state_dict().values()):
        assert torch.equal(a, b), name
    assert full.optimizer.sparsity_report() == job.optimizer.sparsity_report()


@pytest.mark.parametrize("field,value", [("target_structure_sparsity", 1.5),
                                         ("target_structures", -1), ("target_structures", 2.5)])
def test_h2spg_config_names_the_wrong_field(field, value):
    with pytest.raises(otofx.ConfigError, match=field):
        otofx.H2SPGConfig(**{field: value})


def test_erase_digits_example_runs_quick(capsys):
    from examples import erase_digits
    result = erase_digits.run(erase_digits.parse_args(["--quick", "--net", "unet", "--width", "4"]))
    out = capsys.readouterr().out
    assert "erased" in out and "accuracy:   full" in out and "structures: target" in out
    assert result["erased"] and result["subnet_params"] < result["dense_params"]
    assert result["subnet_flops"] < result["dense_flops"]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_report_lists_llama_sub_layers_by_what_they_are_and_nothing_that_cannot_go(attention):
    """A Llama's MLP reads ``post_attention_layernorm.weight``: still an MLP sub-layer. Rotary
    embedding's ``mul``/``neg``/``arange`` are join operands without parameters: not listed."""
    from zoo import hf_models as hf

    from otofx.report import structures_table
    model, inputs, _ = hf.build(f"llama:{attention}")
    a = otofx.analyze(otofx.trace(model, inputs), inputs)
    kinds = {}
    for s in a.erasable:
        roles = {p.split(".")[2] for p in s.params if p.startswith("layers.")}
        kinds.setdefault(s.kind, set()).update(roles)
    assert kinds == {"attention sub-layer": {"self_attn"} | ({"input_layernorm"} if attention == "sdpa" else set()),
                     "MLP sub-layer": {"mlp", "post_attention_layernorm"}}, kinds
    table = structures_table(a)
    rows = table.splitlines()[3:]
    assert len(rows) == sum(1 for s in a.structures if s.params and s.kind != "sum term") >= 4
    assert all(" 0 " not in r and not r.split()[0].startswith(("mul", "neg", "arange", "slice")) for r in rows), table
    bare = len(a.structures) - len(rows)
    assert bare >= 19 and f"; {bare} join operands that cannot be erased not listed" in table.splitlines()[0]
    assert "otofx_" not in table, "a structure named after a module otofx inserted"


class TwoParallel(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = conv_bn(3, 8), conv_bn(8, 8, 3), conv_bn(8, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        return self.head(self.a(x) + self.b(x))


def test_two_parallel_ops_without_a_skip_are_mixed_edge_candidates():
    _, a = _analyze(TwoParallel(), torch.randn(2, 3, 6, 6))
    assert {s.name: s.kind for s in a.structures} == {"a": "mixed-edge candidate", "b": "mixed-edge candidate"}
