"""otofx under DistributedDataParallel: 2 gloo processes on this machine, one data shard each.

Each rank builds the load_digits CNN (with a rank-dependent seed, so DDP's initial broadcast from
rank 0 is what makes the ranks agree), calls ``otofx.compress`` (which builds the optimizer over
``job.module``'s parameters), wraps ``job.module`` in DDP *after* that, and trains on its own half
of the training set through the whole schedule (warm-up, pruning phase, fine-tuning). DDP averages
the gradients, so every rank must end with bit-identical parameters, the same partition and
optimizer state, the exact target sparsity, and the same ``job.subnet()`` (same tensors, same
outputs on the test split). Each rank saves what it holds; the test compares them here.

BatchNorm running statistics are not gradients: DDP broadcasts rank 0's buffers at the start of
every forward, so after the last local forward each rank's buffers are its own. The worker
broadcasts them once from rank 0 after training (what a user does before evaluating or saving).

Loopback only (``MASTER_ADDR=127.0.0.1``, gloo on ``lo``); every collective has a timeout and the
test kills its workers when they have not finished in ``JOB_TIMEOUT_S``.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from digits import DigitsCNN, digits

import otofx

WORLD = 2
STEPS = 80                    # per rank; the pruning phase is [20, 60)
START, PRUNING = 20, 40
BATCH = 32                    # per rank
TARGET = 0.5
COLLECTIVE_TIMEOUT_S = 60     # one gloo collective (a hung peer fails the rank, not the test run)
JOB_TIMEOUT_S = 120           # both workers, start to finish

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _config(kind: str):
    common = dict(lr=0.02, momentum=0.9, variant="sgd", target_group_sparsity=TARGET,
                  start_pruning_step=START, pruning_steps=PRUNING, total_steps=STEPS)
    if kind == "dhspg":
        return otofx.DHSPGConfig(**common)
    return otofx.HESSOConfig(pruning_periods=4, **common)


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


# ---- the worker (runs in the spawned processes) -------------------------------------------------

def _worker(rank: int, port: int, kind: str, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if Path("/sys/class/net/lo").exists():
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        result = _train(rank, kind)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _train(rank: int, kind: str) -> dict:
    (X, y), (X_test, y_test) = digits(seed=0)
    shard = torch.arange(rank, len(X), WORLD)            # disjoint halves of the training set
    X, y = X[shard], y[shard]

    torch.manual_seed(100 + rank)                         # different weights on every rank ...
    job = otofx.compress(DigitsCNN(), _config(kind), (X[:2],))
    before_ddp = _clone(dict(job.module.named_parameters()))
    ddp = torch.nn.parallel.DistributedDataParallel(job.module)   # ... until DDP broadcasts
    optimized = {id(p) for g in job.optimizer.param_groups for p in g["params"]}
    same_objects = optimized == {id(p) for p in ddp.module.parameters()}
    after_ddp = _clone(dict(job.module.named_parameters()))

    gen = torch.Generator().manual_seed(1000 + rank)
    order, at, losses = torch.randperm(len(X), generator=gen), 0, []
    ddp.train()
    for _ in range(STEPS):
        if at + BATCH > len(order):
            order, at = torch.randperm(len(X), generator=gen), 0
        idx = order[at:at + BATCH]
        at += BATCH
        loss = F.cross_entropy(ddp(X[idx]), y[idx])
        job.optimizer.zero_grad()
        loss.backward()
        job.optimizer.step()
        losses.append(loss.item())

    params_after_training = _clone(dict(job.module.named_parameters()))
    for buffer in job.module.buffers():                   # see the module docstring
        dist.broadcast(buffer, src=0)

    job.module.eval()
    small = job.subnet()
    small.eval()
    with torch.no_grad():
        out_module, out_small = job.module(X_test), small(X_test)
    return {
        "same_objects": same_objects,
        "before_ddp": before_ddp,
        "after_ddp": after_ddp,
        "params": params_after_training,
        "state": _clone(job.module.state_dict()),
        "otofx_state": _clone(dict(job.optimizer.otofx_state)),
        "sparsity": job.optimizer.sparsity_report(),
        "subnet_state": _clone(small.state_dict()),
        "subnet_params": sum(p.numel() for p in small.parameters()),
        "module_params": sum(p.numel() for p in job.module.parameters()),
        "out_module": out_module,
        "out_small": out_small,
        "accuracy": (out_small.argmax(1) == y_test).float().mean().item(),
        "losses": losses,
        "shard": shard[:8],
    }


# ---- the test (runs here) -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(kind: str, out_dir: Path, attempts: int = 2) -> None:
    """Run the ranks; a fresh port once more if another process took the free one first."""
    for attempt in range(attempts):
        try:
            return _spawn_and_wait(kind, out_dir)
        except mp.ProcessRaisedException as exc:
            if attempt + 1 == attempts or "address already in use" not in str(exc).lower():
                raise


def _spawn_and_wait(kind: str, out_dir: Path) -> None:
    """Spawn the ranks and wait at most ``JOB_TIMEOUT_S``; a rank's exception fails the test
    with its traceback, and no worker outlives this function."""
    ctx = mp.spawn(_worker, args=(_free_port(), kind, str(out_dir)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"DDP workers did not finish within {JOB_TIMEOUT_S} s")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def _assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: different keys"
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}: '{k}' differs"
        assert torch.equal(a[k], b[k]), (
            f"{what}: '{k}' differs between ranks (max abs diff "
            f"{(a[k].double() - b[k].double()).abs().max().item():.3g})")


@pytest.mark.parametrize("kind", ["dhspg", "hesso"])
def test_ddp_ranks_agree_on_weights_partition_and_subnet(kind, tmp_path):
    _run_workers(kind, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    first = ranks[0]

    for r, res in enumerate(ranks):
        assert res["same_objects"], f"rank {r}: the optimizer does not hold the DDP module's params"
        s = res["sparsity"]
        assert s["pruning_done"], s
        assert s["zero_channels"] == s["target_channels"] == round(TARGET * s["prunable_channels"]), s
        assert int(res["otofx_state"]["pruned"].sum()) == s["target_channels"], s
        assert res["subnet_params"] < 0.7 * res["module_params"]
        torch.testing.assert_close(res["out_small"], res["out_module"], rtol=1e-4, atol=1e-5)

    # the ranks started from different weights, which DDP replaced by rank 0's ...
    assert not torch.equal(first["before_ddp"]["c1.weight"], ranks[1]["before_ddp"]["c1.weight"])
    _assert_same_tensors(first["before_ddp"], first["after_ddp"], "rank 0 before/after DDP")
    for r, res in enumerate(ranks[1:], start=1):
        _assert_same_tensors(first["after_ddp"], res["after_ddp"], f"DDP broadcast, rank 0 vs {r}")
    # ... saw different data ...
    assert not torch.equal(ranks[0]["shard"], ranks[1]["shard"])
    assert ranks[0]["losses"] != ranks[1]["losses"]
    # ... and hold the same model, partition, optimizer state and subnet
    for r, res in enumerate(ranks[1:], start=1):
        _assert_same_tensors(first["params"], res["params"], f"parameters, rank 0 vs {r}")
        _assert_same_tensors(first["state"], res["state"], f"state_dict, rank 0 vs {r}")
        a, b = first["otofx_state"], res["otofx_state"]
        assert a.keys() == b.keys()
        for k in a:
            same = torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
            assert same, f"otofx_state['{k}'] differs between rank 0 and {r}"
        assert first["sparsity"] == res["sparsity"]
        _assert_same_tensors(first["subnet_state"], res["subnet_state"], f"subnet, rank 0 vs {r}")
        assert torch.equal(first["out_small"], res["out_small"])
    assert first["accuracy"] > 0.8, first["accuracy"]   # dense, single process: ~0.97
