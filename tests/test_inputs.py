"""Inputs that must work exactly or fail with a clear ``OtofxError``: output containers, several
and keyword inputs, frozen, shared and tied weights, in-place ops, integer buffers, half
precision, CUDA, empty models, models with nothing to prune, example inputs that do not fit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

import otofx
from otofx.testing import zero_groups


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flat(out) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple, dict, ModelOutput, dataclass), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flat(v)]
    if dataclasses.is_dataclass(out):
        return [t for f in dataclasses.fields(out) for t in flat(getattr(out, f.name))]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flat(v)]
    return []


def zero_and_shrink(model: nn.Module, inputs, fraction: float = 0.5, affine: bool = True):
    """Trace, analyse, zero ``fraction`` of every prunable group, shrink: (gm, analysis, small)."""
    gm = otofx.trace(model)
    analysis = otofx.analyze(gm, inputs)
    zero_groups(gm, analysis, fraction, affine=affine)
    return gm, analysis, otofx.shrink(gm, analysis)


def assert_same_outputs(a, b, rtol=1e-5, atol=1e-6) -> None:
    assert type(a) is type(b), f"output type {type(b).__name__}, expected {type(a).__name__}"
    ta, tb = flat(a), flat(b)
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb):
        torch.testing.assert_close(y, x, rtol=rtol, atol=atol)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def body(self, x):
        return self.b(torch.relu(self.a(x)))


@dataclasses.dataclass
class Prediction:
    logits: torch.Tensor
    hidden: torch.Tensor


class ReturnsDict(MLP):
    def forward(self, x):
        return {"logits": self.body(x), "norm": self.a(x).sum()}


class ReturnsTuple(MLP):
    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h), h.sum(dim=1)


class ReturnsDataclass(MLP):
    def forward(self, x):
        return Prediction(self.body(x), self.a(x).sum(dim=1))


class ReturnsModelOutput(MLP):
    def forward(self, x):
        return BaseModelOutput(last_hidden_state=self.body(x))


@pytest.mark.parametrize("cls", [ReturnsDict, ReturnsTuple, ReturnsDataclass, ReturnsModelOutput])
def test_output_containers_keep_their_type_and_shrink_exactly(cls):
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(5, 4)
    with torch.no_grad():
        assert_same_outputs(model(x), otofx.trace(model)(x))   # the trace keeps the type
        gm, analysis, small = zero_and_shrink(model, (x,))
        assert_same_outputs(gm(x), small(x))
    a = next(g for g in analysis.groups if g.name == "a")
    b = next(g for g in analysis.groups if g.name == "b")
    assert a.prunable and n_params(small) < n_params(gm)   # a's sums are zero-invariant
    assert not b.prunable and b.why_pinned     # the logits reach the output, in every container


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.c = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x, z, scale=1.0):
        h = torch.relu(self.a(x)) + torch.relu(self.c(z))
        return self.b(h) * scale


def test_several_and_keyword_inputs_bind_by_position_and_name():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    x, z, scale = torch.randn(3, 4), torch.randn(3, 6), torch.tensor(2.0)
    gm = otofx.trace(model)
    ways = [(x, z, scale), {"x": x, "z": z, "scale": scale}, ((x,), {"z": z, "scale": scale})]
    analyses = [otofx.analyze(gm, w) for w in ways]
    for a in analyses:
        assert [(g.name, g.size, g.prunable) for g in a.groups] == \
               [(g.name, g.size, g.prunable) for g in analyses[0].groups]
        assert len(a.example_inputs) == 3 and a.example_inputs[2] is scale
    assert next(g for g in analyses[0].groups if g.name == "a").prunable   # a and c joined
    zero_groups(gm, analyses[1], 0.5)
    small = otofx.shrink(gm, analyses[1])
    with torch.no_grad():
        torch.testing.assert_close(small(x, z=z, scale=scale), gm(x, z, scale))
    # a keyword input left out takes its default
    assert otofx.analyze(gm, {"x": x, "z": z}).example_inputs == (x, z, 1.0)


def test_frozen_parameters_pin_their_groups_and_say_why():
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    model[0].weight.requires_grad_(False)
    model[4].weight.requires_grad_(False)      # a frozen consumer does not stop group '2'
    analysis = otofx.analyze(otofx.trace(model), (x,))
    frozen, trainable = analysis.groups[0], analysis.groups[1]
    assert not frozen.prunable
    assert any("'0.weight' is frozen" in w and "requires_grad=False" in w for w in frozen.why_pinned)
    assert trainable.prunable
    assert "frozen" in analysis.report()
    job = otofx.compress(model, otofx.DHSPGConfig(lr=0.1, target_group_sparsity=0.5,
                                                  pruning_steps=2), (x,))
    before = job.module.get_parameter("0.weight").clone()
    for _ in range(3):
        job.optimizer.zero_grad()
        job.module(x).square().mean().backward()
        job.optimizer.step()
    assert torch.equal(job.module.get_parameter("0.weight"), before)   # never touched
    assert job.optimizer.sparsity_report()["zero_channels"] == 4       # half of group '2' only
    assert torch.equal(job.subnet()(x), job.module(x))


class UsedTwice(nn.Module):
    """One Linear applied to the input and again to its own output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.a(torch.relu(self.a(x))))


class TiedPair(nn.Module):
    """Two Linear modules sharing one weight: their out-channels are one group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(4, 8)
        self.b.weight = self.a.weight
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.a(x)) * torch.sigmoid(self.b(x)))


def test_a_layer_used_twice_pins_the_channels_its_input_columns_share():
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    gm, analysis, small = zero_and_shrink(UsedTwice(), (x,))
    a = next(g for g in analysis.groups if g.name == "a")
    assert not a.prunable and any("shared" in w for w in a.why_pinned), a
    torch.testing.assert_close(small(x), gm(x))


def test_tied_weights_are_one_group_and_stay_tied():
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    gm, analysis, small = zero_and_shrink(TiedPair(), (x,), affine=True)
    a = next(g for g in analysis.groups if g.name == "a")
    assert a.prunable and {m.param for m in a.members} >= {"a.weight", "a.bias", "b.bias"}
    assert small.a.weight is small.b.weight and small.a.weight.shape[0] == 4
    torch.testing.assert_close(small(x), gm(x))


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(4, 8)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = self.a(x)
        y.relu_()                      # result unused: must survive dead-code elimination
        z = self.b(x)
        z += y
        z = F.relu(z, inplace=True)
        z = self.act(z)
        return self.head(z)


def test_in_place_ops_shrink_exactly():
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    for affine in (True, False):
        gm, analysis, small = zero_and_shrink(InPlace(), (x,), affine=affine)
        assert next(g for g in analysis.groups if g.name == "a").prunable
        assert n_params(small) < n_params(gm)
        assert any(n.target == "relu_" for n in small.graph.nodes)
        torch.testing.assert_close(small(x), gm(x))


class IntegerBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)        # num_batches_tracked: an int64 buffer
        self.head = nn.Linear(8, 3)
        self.register_buffer("order", torch.tensor([2, 0, 1]))
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int32))

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.head(h)[:, self.order] * self.steps


def test_integer_buffers_are_kept_with_their_dtype():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    gm, analysis, small = zero_and_shrink(IntegerBuffers().eval(), (x,))
    assert next(g for g in analysis.groups if g.name == "conv").prunable
    assert small.bn.num_batches_tracked.dtype == torch.int64
    assert small.order.dtype == torch.int64 and small.steps.dtype == torch.int32
    assert small.conv.out_channels == 4
    torch.testing.assert_close(small(x), gm(x))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 1)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.sigmoid(self.bn2(self.c2(torch.relu(self.bn1(self.c1(x))))))
        return self.head(h.mean(dim=(2, 3)))


def _randomise_norms(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    return model


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_shrink_and_train(dtype):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8, dtype=dtype)
    tol = 4 * torch.finfo(dtype).eps
    for affine in (True, False):          # False: removed channels are constants to fold
        gm, _, small = zero_and_shrink(_randomise_norms(SmallCNN()).to(dtype).eval(), (x,),
                                       affine=affine)
        assert n_params(small) < n_params(gm)
        assert all(p.dtype == dtype for p in small.parameters())
        torch.testing.assert_close(small(x), gm(x), rtol=tol, atol=tol)
    for cfg in (otofx.DHSPGConfig(lr=0.05, momentum=0.9, pruning_steps=3),
                otofx.HESSOConfig(lr=0.01, variant="adam", pruning_steps=3)):
        job = otofx.compress(SmallCNN().to(dtype), cfg, (x,))
        for _ in range(4):
            job.optimizer.zero_grad()
            job.module(x).float().square().mean().backward()
            job.optimizer.step()
        assert all(torch.isfinite(p).all() for p in job.module.parameters())
        assert job.optimizer.sparsity_report()["reached"] == 0.5
        subnet = job.subnet()
        assert all(p.dtype == dtype for p in subnet.parameters())
        job.module.eval()
        subnet.eval()
        torch.testing.assert_close(subnet(x), job.module(x), rtol=tol, atol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_cuda_stays_on_cuda():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8, device="cuda")
    gm, _, small = zero_and_shrink(_randomise_norms(SmallCNN()).cuda().eval(), (x,), affine=False)
    assert all(p.is_cuda for p in small.parameters()) and n_params(small) < n_params(gm)
    torch.testing.assert_close(small(x), gm(x), rtol=1e-4, atol=1e-5)
    job = otofx.compress(SmallCNN().cuda(), otofx.DHSPGConfig(lr=0.05, pruning_steps=2), (x,))
    for _ in range(3):
        job.optimizer.zero_grad()
        job.module(x).square().mean().backward()
        job.optimizer.step()
    assert job.optimizer.sparsity_report()["reached"] == 0.5
    assert all(p.is_cuda for p in job.subnet().parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_job_analysed_on_cpu_inputs_shrinks_after_moving_to_cuda():
    # example inputs stay where the job got them; shrink and the report follow the module
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    job = otofx.compress(SmallCNN(), otofx.DHSPGConfig(lr=0.05, pruning_steps=2), (x,))
    for _ in range(3):
        job.optimizer.zero_grad()
        job.module(x).square().mean().backward()
        job.optimizer.step()
    job.module.cuda()
    subnet = job.subnet()
    assert all(p.is_cuda for p in subnet.parameters())
    job.module.eval()
    subnet.eval()
    torch.testing.assert_close(subnet(x.cuda()), job.module(x.cuda()), rtol=1e-4, atol=1e-5)
    assert "FLOPs" in job.report(subnet)


@pytest.mark.parametrize("model", [nn.Identity(), nn.Sequential()], ids=["identity", "empty"])
def test_an_empty_model_analyses_to_nothing_and_compress_says_why(model):
    x = torch.randn(2, 4)
    gm, analysis, small = zero_and_shrink(model, (x,))
    assert analysis.groups == [] and "groups: 0" in analysis.report()
    assert torch.equal(small(x), x)
    with pytest.raises(otofx.AnalysisError, match="no trainable parameter.*analyze and otofx.shrink"):
        otofx.compress(model, otofx.DHSPGConfig(), (x,))


def test_a_model_with_no_prunable_group_still_trains():
    torch.manual_seed(0)
    model, x = nn.Linear(4, 3), torch.randn(5, 4)
    gm, analysis, small = zero_and_shrink(model, (x,))
    assert analysis.groups and analysis.prunable == []
    assert n_params(small) == n_params(model)
    job = otofx.compress(model, otofx.DHSPGConfig(lr=0.1), (x,))
    before = job.module.weight.detach().clone()
    job.module(x).square().mean().backward()
    job.optimizer.step()
    expected = before - 0.1 * job.module.weight.grad
    torch.testing.assert_close(job.module.weight.detach(), expected)   # a plain SGD step
    assert job.optimizer.sparsity_report()["prunable_channels"] == 0
    assert "0" in job.report()


@pytest.mark.parametrize("x, shown", [
    (torch.randn(2, 4, 8, 8), "x: (2, 4, 8, 8) float32"),
    (torch.randn(2, 3, 8, 8, dtype=torch.float64), "x: (2, 3, 8, 8) float64"),
    (torch.randint(0, 5, (2, 3, 8, 8)), "x: (2, 3, 8, 8) int64"),
], ids=["shape", "float64", "int64"])
def test_example_inputs_that_do_not_fit_name_the_node(x, shown):
    with pytest.raises(otofx.ShapeError) as info:
        otofx.analyze(otofx.trace(SmallCNN()), (x,))
    message = str(info.value)
    assert "node 'c1'" in message and shown in message and "Pass example inputs" in message
