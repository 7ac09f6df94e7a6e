"""Never mutate: ``trace``, ``analyze``, ``shrink``, ``compress(...)`` and ``job.subnet()``, and
the ``torch.compile`` backend stage, leave the user's module and the given GraphModule
bit-identical: every state_dict tensor (bits), the parameter objects, ``requires_grad``, every
module's training flag, the graph's code. BatchNorm running stats of a model in train mode stay
where they were."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import otofx
from otofx.testing import zero_groups


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def fingerprint(module: nn.Module) -> dict:
    """Everything the user could observe of ``module`` that otofx must not change."""
    return {
        "state": {k: (v.dtype, tuple(v.shape), _bits(v))
                  for k, v in module.state_dict(keep_vars=True).items()},
        "objects": [(n, id(p)) for n, p in module.named_parameters(remove_duplicate=False)]
                   + [(n, id(b)) for n, b in module.named_buffers(remove_duplicate=False)],
        "requires_grad": [(n, p.requires_grad) for n, p in module.named_parameters()],
        "training": [(n, m.training) for n, m in module.named_modules()],
        "code": module.code if isinstance(module, torch.fx.GraphModule) else None,
        "modules": [(n, type(m).__name__, {k: v for k, v in vars(m).items() if not k.startswith("_")
                                            and isinstance(v, (int, float, bool, str, tuple))})
                    for n, m in module.named_modules()],
    }


def assert_untouched(before: dict, module: nn.Module, stage: str) -> None:
    after = fingerprint(module)
    for key in before:
        if key == "state":
            assert before[key].keys() == after[key].keys(), f"{stage}: state_dict keys changed"
            changed = [k for k in before[key] if before[key][k] != after[key][k]]
            assert not changed, f"{stage} changed {changed[:5]}"
        else:
            assert before[key] == after[key], f"{stage} changed the module's {key}"


class Block(nn.Module):
    """A transformer-ish MLP block: pre-norm, expand, GELU, project, residual; then a head."""

    def __init__(self, d: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.fc2(F.gelu(self.fc1(self.norm(h))))
        return self.head(h.mean(dim=1))


class TrainModeCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)) + h)
        return self.head(h.mean(dim=(2, 3)))


def _resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval(), torch.randn(2, 3, 32, 32)


def _block():
    torch.manual_seed(0)
    return Block().eval(), torch.randn(2, 5, 6)


def _train_mode_cnn():
    torch.manual_seed(0)
    model = TrainModeCNN().train()
    with torch.no_grad():              # running stats away from their defaults, so a move shows
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.num_batches_tracked.fill_(3)
    model.head.bias.requires_grad_(False)
    return model, torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("make", [pytest.param(_resnet18, marks=pytest.mark.slow), _block,
                                  _train_mode_cnn], ids=["resnet18", "transformer-mlp", "bn-train-mode"])
def test_no_stage_mutates_the_model_or_the_graph(make):
    model, x = make()
    user = fingerprint(model)

    gm = otofx.trace(model)
    assert_untouched(user, model, "trace")
    given = fingerprint(gm)
    analysis = otofx.analyze(gm, (x,))
    assert_untouched(given, gm, "analyze(gm)")
    zero_groups(gm, analysis, 0.5, affine=False)      # the user's own edit (training's stand-in)
    given = fingerprint(gm)
    small = otofx.shrink(gm, analysis)
    assert_untouched(given, gm, "shrink")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in gm.parameters())

    job = otofx.compress(model, otofx.DHSPGConfig(lr=0.01, pruning_steps=1), (x,))
    assert_untouched(user, model, "compress(model)")      # analyze(model) traces a copy too
    assert job.module is not model
    job.module(x).square().mean().backward()
    job.optimizer.step()
    trained, optimizer_state = fingerprint(job.module), copy.deepcopy(job.optimizer.state_dict())
    job.subnet()
    assert_untouched(trained, job.module, "job.subnet()")
    after = job.optimizer.state_dict()
    assert after["param_groups"] == optimizer_state["param_groups"]
    assert torch.equal(after["state"]["otofx"]["pruned"], optimizer_state["state"]["otofx"]["pruned"])
    assert_untouched(user, model, "training the job")


def test_the_compile_stage_does_not_mutate_the_graph():
    torch._dynamo.reset()
    model, x = _train_mode_cnn()
    gm = otofx.trace(model.eval())
    zero_groups(gm, otofx.analyze(gm, (x,)), 0.5)
    given = fingerprint(gm)
    compiled = torch.compile(gm, backend=otofx.backend(inner="eager"))
    with torch.no_grad():
        out = compiled(x)
    assert_untouched(given, gm, "torch.compile(backend=otofx)")
    with torch.no_grad():
        torch.testing.assert_close(out, gm(x), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
