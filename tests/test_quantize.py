"""int8 after pruning (otofx.integrations.quantize): a DHSPG-trained digits subnet through torchao's
pt2e flow keeps its accuracy within a point, stores int8 weights and runs on any batch size."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import otofx
from otofx.integrations.quantize import quantize_int8, state_bytes

pytest.importorskip("torchao")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.digits_data import accuracy, digits, first_batches  # noqa: E402
from examples.quantize_digits import train_subnet  # noqa: E402


def test_int8_subnet_keeps_accuracy_within_a_point_with_a_third_of_the_bytes():
    train_set, test_set = digits()
    job, small = train_subnet(epochs=3, width=16)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in job.module.parameters())
    int8 = quantize_int8(small, (train_set[0][:2],), first_batches(train_set[0]))
    float_accuracy = accuracy(small, test_set)
    assert float_accuracy > 0.85                          # trained: the comparison means something
    assert abs(accuracy(int8, test_set) - float_accuracy) <= 0.01
    assert state_bytes(int8) < 0.35 * state_bytes(small)
    weights = [t for t in int8.state_dict().values() if t.dim() >= 2]
    assert weights and all(t.dtype == torch.int8 for t in weights)
    ops = {str(n.target) for n in int8.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in op for op in ops)
    with torch.no_grad():                                 # another batch size than the export's
        x = test_set[0][:37]
        agree = (int8(x).argmax(1) == small(x).argmax(1)).float().mean()
    assert agree >= 0.95


class Branchy(torch.nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_quantize_refuses_no_calibration_an_unexportable_model_and_names_a_missing_torchao(monkeypatch):
    small = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(3, 4)
    with pytest.raises(otofx.ConfigError, match="no calibration batch"):
        quantize_int8(small, (x,), [])
    with pytest.raises(otofx.ExportError, match="could not export Branchy for quantization") as info:
        quantize_int8(Branchy(), (x,), [x])
    assert len(str(info.value)) < 800
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e.quantize_pt2e", None)
    with pytest.raises(otofx.MissingDependencyError, match="pip install torchao"):
        quantize_int8(small, (x,), [x])


def test_quantize_example_prints_the_three_models(capsys):
    from examples import quantize_digits
    threads = torch.get_num_threads()
    try:
        assert quantize_digits.main(["--epochs", "2", "--width", "8", "--repeats", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = {line.split()[0] + (" int8" if "int8" in line else ""): line.split()
            for line in capsys.readouterr().out.splitlines() if line.startswith(("trained", "subnet"))}
    kb = {name: float(row[2 if name == "subnet int8" else 1].rstrip("KB")) for name, row in rows.items()}
    assert kb["subnet int8"] < kb["subnet"] < kb["trained"]
