"""otofx.compress on real data: the exact target, an equivalent subnet, dense-level accuracy."""

import copy

import pytest
import torch
from digits import DigitsCNN, accuracy, digits, steps_per_epoch, train

import otofx

EPOCHS = 12


def _config(kind: str, steps: int, **extra):
    common = dict(lr=0.05, momentum=0.9, target_group_sparsity=0.5,
                  start_pruning_step=steps // 4, pruning_steps=steps // 2, **extra)
    if kind == "dhspg":
        return otofx.DHSPGConfig(**common)
    return otofx.HESSOConfig(pruning_periods=4, **common)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Training here runs on one torch thread: the rounding of conv backward depends on how
    many threads split it, and over 12 epochs that moves accuracy by a point or two (DHSPG's
    subnet: 0.967 on one thread, 0.950 on two, same seed), so a comparison with a 1.5-point
    margin would depend on the machine's core count rather than on the optimizer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def dense_accuracy(data):
    torch.manual_seed(1)
    model = DigitsCNN()
    train(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), data[0], EPOCHS)
    return accuracy(model, data[1])


@pytest.mark.parametrize("kind", ["dhspg", "hesso"])
def test_compress_reaches_target_exactly_with_dense_accuracy(kind, data, dense_accuracy):
    train_set, test_set = data
    steps = EPOCHS * steps_per_epoch(train_set)
    torch.manual_seed(1)
    job = otofx.compress(DigitsCNN(), _config(kind, steps), (train_set[0][:2],))
    train(job.module, job.optimizer, train_set, EPOCHS)
    sparsity = job.optimizer.sparsity_report()
    assert sparsity["zero_channels"] == sparsity["target_channels"] == round(
        0.5 * sparsity["prunable_channels"])
    small = job.subnet()
    job.module.eval()
    small.eval()
    with torch.no_grad():
        assert torch.equal(small(test_set[0]).argmax(1), job.module(test_set[0]).argmax(1))
    acc = accuracy(small, test_set)
    assert acc >= dense_accuracy - 0.015, (acc, dense_accuracy)
    base = job.baseline()
    assert sum(p.numel() for p in small.parameters()) < 0.6 * base["params"]
    text = job.report(small)
    assert "reached exactly" in text and "FLOPs" in text


@pytest.mark.parametrize("variant", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("kind", ["dhspg", "hesso"])
def test_every_variant_reaches_the_target_and_keeps_it(kind, variant, data):
    train_set, _ = data
    torch.manual_seed(0)
    cfg = _config(kind, 40, variant=variant, weight_decay=1e-4)
    cfg.lr = 0.05 if variant == "sgd" else 1e-3
    job = otofx.compress(DigitsCNN(), cfg, (train_set[0][:2],))
    counts = []
    train(job.module, job.optimizer, (train_set[0][:640], train_set[1][:640]), 5,
          on_step=lambda s: counts.append(job.optimizer.sparsity_report()["zero_channels"]))
    target = job.optimizer.target
    end = cfg.end_pruning_step
    assert counts[end - 1] == target                  # exact at the end of the pruning phase
    assert all(c == target for c in counts[end - 1:])  # and held afterwards


def test_group_divisible_keeps_multiples(data):
    train_set, _ = data
    torch.manual_seed(0)
    cfg = _config("hesso", 20, group_divisible=8)
    job = otofx.compress(DigitsCNN(), cfg, (train_set[0][:2],))
    train(job.module, job.optimizer, (train_set[0][:640], train_set[1][:640]), 2)
    small = job.subnet()
    assert small.c1.out_channels % 8 == 0 and small.c2.out_channels % 8 == 0


def _run(cfg, data, steps, checkpoint_at=None):
    torch.manual_seed(3)
    job = otofx.compress(DigitsCNN(), cfg, (data[0][:2],))
    saved = {}

    def on_step(step):
        if step == checkpoint_at:
            saved["module"] = copy.deepcopy(job.module.state_dict())
            saved["optim"] = copy.deepcopy(job.optimizer.state_dict())

    train(job.module, job.optimizer, (data[0][:64 * steps], data[1][:64 * steps]), 1,
          on_step=on_step)
    return job, saved


@pytest.mark.parametrize("kind", ["dhspg", "hesso"])
def test_state_dict_resumes_bit_for_bit(kind, data):
    train_set, _ = data
    cfg = _config(kind, 16)
    full, saved = _run(cfg, train_set, 16, checkpoint_at=6)
    # a fresh job restored at step 6 continues on the same batches
    torch.manual_seed(99)
    job = otofx.compress(DigitsCNN(), cfg, (train_set[0][:2],))
    job.module.load_state_dict(saved["module"])
    job.optimizer.load_state_dict(saved["optim"])
    assert job.optimizer.steps_taken == 6
    X, y = train_set[0][:64 * 16], train_set[1][:64 * 16]
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    for i in range(6 * 64, len(X), 64):
        idx = order[i:i + 64]
        loss = torch.nn.functional.cross_entropy(job.module(X[idx]), y[idx])
        job.optimizer.zero_grad()
        loss.backward()
        job.optimizer.step()
    for (name, a), b in zip(full.module.state_dict().items(), job.module.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(full.optimizer.otofx_state["pruned"], job.optimizer.otofx_state["pruned"])


def test_lr_scheduler_closure_and_param_groups_work(data):
    train_set, _ = data
    job = otofx.compress(DigitsCNN(), _config("dhspg", 8), (train_set[0][:2],))
    sched = torch.optim.lr_scheduler.StepLR(job.optimizer, step_size=2, gamma=0.5)
    X, y = train_set[0][:32], train_set[1][:32]

    def closure():
        job.optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(job.module(X), y)
        loss.backward()
        return loss

    for _ in range(4):
        loss = job.optimizer.step(closure)
        sched.step()
        assert torch.isfinite(loss)
    assert job.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.25)
    assert len(job.optimizer.param_groups[0]["params"]) == len(list(job.module.parameters()))


@pytest.mark.parametrize("field,value", [("target_group_sparsity", 1.5), ("lr", -0.1),
                                         ("variant", "rmsprop"), ("pruning_steps", 0),
                                         ("momentum", 1.0), ("group_divisible", 0)])
def test_out_of_range_config_names_the_field(field, value):
    with pytest.raises(otofx.ConfigError, match=field):
        otofx.DHSPGConfig(**{field: value})


def test_a_pruning_phase_past_the_end_is_refused():
    with pytest.raises(otofx.ConfigError, match="pruning_steps.*total_steps"):
        otofx.HESSOConfig(start_pruning_step=50, pruning_steps=60, total_steps=100)


def test_non_finite_gradient_names_the_parameter_and_changes_nothing(data):
    train_set, _ = data
    job = otofx.compress(DigitsCNN(), _config("dhspg", 8), (train_set[0][:2],))
    loss = job.module(train_set[0][:8]).sum()
    loss.backward()
    job.module.c2.weight.grad[0, 0, 0, 0] = float("nan")
    before = copy.deepcopy(job.module.state_dict())
    opt_before = copy.deepcopy(job.optimizer.state_dict())
    with pytest.raises(otofx.NonFiniteGradientError, match="c2.weight"):
        job.optimizer.step()
    for name, t in job.module.state_dict().items():
        assert torch.equal(t, before[name]), name
    assert job.optimizer.state_dict()["state"].keys() == opt_before["state"].keys()
    assert job.optimizer.steps_taken == 0


def test_a_model_without_prunable_group_trains_as_the_base_optimizer(data):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    job = otofx.compress(model, otofx.HESSOConfig(lr=0.1), (data[0][0][:2],))
    reference = copy.deepcopy(job.module)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    X, y = data[0][0][:32], data[0][1][:32]
    for module, opt in ((job.module, job.optimizer), (reference, sgd)):
        loss = torch.nn.functional.cross_entropy(module(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for a, b in zip(job.module.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)
    assert "no prunable group" in job.report()


def test_compress_leaves_the_users_module_untouched(data):
    model = DigitsCNN()
    before = copy.deepcopy(model.state_dict())
    job = otofx.compress(model, _config("hesso", 8), (data[0][0][:2],))
    train(job.module, job.optimizer, (data[0][0][:256], data[0][1][:256]), 1)
    for name, t in model.state_dict().items():
        assert torch.equal(t, before[name]), name
