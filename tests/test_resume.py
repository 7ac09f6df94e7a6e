"""Save and resume: a checkpoint of ``job.module`` and ``job.optimizer`` taken mid-pruning, loaded
in a fresh process that rebuilds the job with ``otofx.compress``, ends in the subnet an
uninterrupted run ends in, bit for bit. The subnet saved with ``otofx.save`` loads in that fresh
process (before any model code exists there) and gives the same outputs."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import torch

import otofx
from otofx.testing import zero_groups

SCRIPT = '''
"""Resume a compression job from a checkpoint; run a saved subnet. Used by tests/test_resume.py."""
import sys

import torch

import otofx
from otofx.testing import zero_groups

torch.set_num_threads(1)
if __name__ == "__main__":
    # the saved subnet runs before any model class is defined here: nothing of it was pickled
    LOADED = otofx.load(sys.argv[2])(torch.load(sys.argv[3]))

import torch.nn.functional as F
from torch import nn

STEPS, MID = 8, 4       # pruning from step 2 to 6: the checkpoint is taken inside the phase
CFG = dict(lr=0.05, momentum=0.9, weight_decay=1e-4, target_group_sparsity=0.5,
           start_pruning_step=2, pruning_steps=4)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h)) + h), 2)
        return self.fc(h.flatten(1))


gen = torch.Generator().manual_seed(0)
XS = torch.randn(STEPS, 16, 1, 8, 8, generator=gen)
YS = torch.randint(0, 10, (STEPS, 16), generator=gen)


def new_job(config=otofx.DHSPGConfig):
    torch.manual_seed(1)
    return otofx.compress(Net(), config(**CFG), (XS[0],))


def train(job, start, stop):
    for i in range(start, stop):
        loss = F.cross_entropy(job.module(XS[i]), YS[i])
        job.optimizer.zero_grad()
        loss.backward()
        job.optimizer.step()


if __name__ == "__main__":
    checkpoint, _, _, out = sys.argv[1:]
    job = new_job()
    state = torch.load(checkpoint)
    job.module.load_state_dict(state["module"])
    job.optimizer.load_state_dict(state["optimizer"])
    train(job, MID, STEPS)
    subnet = job.subnet().eval()
    torch.save({"loaded": LOADED, "state": subnet.state_dict(), "out": subnet(XS[0]),
                "sparsity": job.optimizer.sparsity_report()}, out)
'''


def test_resume_in_a_fresh_process_and_load_the_saved_subnet(tmp_path: Path):
    script = tmp_path / "resume_job.py"
    script.write_text(SCRIPT)
    threads = torch.get_num_threads()
    try:
        ns = runpy.run_path(str(script), run_name="resume_job")
        job = ns["new_job"]()
        ns["train"](job, 0, ns["MID"])
        assert job.optimizer.in_pruning_phase()
        torch.save({"module": job.module.state_dict(), "optimizer": job.optimizer.state_dict()},
                   tmp_path / "checkpoint.pt")
        ns["train"](job, ns["MID"], ns["STEPS"])      # the uninterrupted run goes on
        subnet = job.subnet().eval()
        x = ns["XS"][0]
        with torch.no_grad():
            expected = subnet(x)
        otofx.save(subnet, tmp_path / "subnet.pt2", (x,))
        torch.save(x, tmp_path / "x.pt")
    finally:
        torch.set_num_threads(threads)

    run = subprocess.run([sys.executable, str(script), str(tmp_path / "checkpoint.pt"),
                          str(tmp_path / "subnet.pt2"), str(tmp_path / "x.pt"),
                          str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")

    assert got["sparsity"]["reached"] == 0.5 and got["sparsity"]["pruning_done"]
    assert got["state"].keys() == subnet.state_dict().keys()
    for k, v in subnet.state_dict().items():
        assert got["state"][k].shape == v.shape, k
        assert torch.equal(got["state"][k], v), f"resumed '{k}' differs from the uninterrupted run"
    assert torch.equal(got["out"], expected)
    assert sum(v.numel() for v in got["state"].values()) < sum(
        p.numel() for p in job.module.state_dict().values())
    torch.testing.assert_close(got["loaded"], expected, rtol=1e-6, atol=1e-6)


def test_a_saved_subnet_takes_other_batch_sizes(tmp_path: Path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4))
    x = torch.randn(2, 3, 8, 8)
    gm = otofx.trace(model)
    analysis = otofx.analyze(gm, (x,))
    zero_groups(gm, analysis, 0.5)
    small = otofx.shrink(gm, analysis).train()
    otofx.save(small, tmp_path / "small.pt2", (x,))
    assert small.training                                   # saved in eval mode, mode restored
    loaded = otofx.load(tmp_path / "small.pt2")
    small.eval()
    for batch in (1, 2, 5):
        xb = torch.randn(batch, 3, 8, 8)
        torch.testing.assert_close(loaded(xb), small(xb), rtol=1e-6, atol=1e-6)
