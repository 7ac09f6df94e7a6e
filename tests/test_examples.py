"""The main job (examples/compress_digits.py) in its quick size, and the benchmark runner
(compress_quality's own harness: tests/test_bench_quality.py)."""

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import __main__ as runner  # noqa: E402
from examples import compress_digits  # noqa: E402
from examples.digits_data import digits  # noqa: E402
from examples.digits_resnet import DigitsResNet  # noqa: E402


def test_main_job_reports_and_saves_a_subnet_that_loads_without_otofx(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert compress_digits.main(["--quick", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads                      # restored for the other tests
    out = capsys.readouterr().out
    for line in ("dense accuracy", "subnet accuracy", "group sparsity: target 0.500", "reached exactly",
                 "parameters:", "FLOPs:", "CPU latency, batch   1", "subnet / full =", "wall time: otofx"):
        assert line in out, line
    assert "same predictions as the trained model: True" in out
    diff = float(re.search(r"largest output difference (\S+)", out).group(1))
    assert diff <= 1e-5
    flops = re.search(r"FLOPs:\s+([\d,]+) -> ([\d,]+)", out)
    assert int(flops.group(2).replace(",", "")) < int(flops.group(1).replace(",", ""))

    # the saved program alone (no otofx, no model code) gives the printed subnet accuracy
    program = torch.export.load(tmp_path / "digits_subnet.pt2")
    small = program.module()
    printed = float(re.search(r"subnet accuracy : ([\d.]+)", out).group(1))
    assert accuracy_of(small, digits()[1]) == pytest.approx(printed, abs=1e-4)
    n_small = sum(p.numel() for p in program.state_dict.values())
    assert n_small < sum(p.numel() for p in DigitsResNet().parameters())

    # the ONNX file: onnxruntime on the whole test set gives the printed subnet accuracy
    onnx = re.search(r"ONNX saved: \S+ \((\d+) KiB, ([\d.]+)x the trained model's (\d+) KiB\); .*difference (\S+)",
                     out)
    assert float(onnx.group(2)) < 1.0 and float(onnx.group(4)) <= 1e-4
    assert accuracy_of(OnnxModel(tmp_path / "digits_subnet.onnx"), digits()[1]) == pytest.approx(printed, abs=1e-4)
    assert not (tmp_path / "digits_dense.onnx").exists()

    png = tmp_path / "digits_compress.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


class OnnxModel:
    """An ONNX file run by onnxruntime, called like a module."""

    def __init__(self, path):
        import onnxruntime
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, x):
        return torch.from_numpy(self.session.run(None, {self.session.get_inputs()[0].name: x.numpy()})[0])


@torch.no_grad()
def accuracy_of(module, data):
    X, y = data
    return (module(X).argmax(1) == y).float().mean().item()


def test_runner_discovers_every_benchmark_and_builds_its_commands():
    scripts = {s.name: s for s in runner.discover()}
    assert {"analysis_speed", "optimizer_overhead", "compress_quality"} <= set(scripts)
    assert not {"models", "peers", "__main__", "__init__"} & set(scripts)
    assert runner.command(scripts["compress_quality"], quick=True) == [
        "python", "-m", "benchmarks.compress_quality", "--quick", "--out",
        "benchmarks/results/compress_quality.md"]


def test_runner_report_says_which_benchmark_failed_and_fixes_links(tmp_path):
    script = runner.Script("fake_bench", "A fake benchmark.", {"--quick"})
    ok = runner.Outcome(script, ["python", "-m", "benchmarks.fake_bench"], 3.0,
                        runner.fix_links("![plot](fake.png)", runner.RESULTS_DIR), True)
    bad = runner.Outcome(runner.Script("other", "Other.", set()), ["python", "-m", "benchmarks.other"],
                         1.0, "**Failed** (exit 1): boom", False)
    text = runner.results_markdown([ok, bad], load_before=(1.0, 1.0, 1.0))
    assert "![plot](results/fake.png)" in text
    assert "| [other](#other) | Other. | FAILED | default | 1 s |" in text
    assert "Reproduce: `python -m benchmarks.fake_bench`" in text
    assert "Versions: Python" in text and "torch " in text


def test_runner_keeps_its_outcome_apart_from_the_benchmarks_own_json(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "RESULTS_DIR", tmp_path)
    script = runner.Script("fake_bench", "A fake benchmark.", {"--out"})
    (tmp_path / "fake_bench.json").write_text('{"runs": [1, 2]}')          # the benchmark's data
    assert runner.Outcome.load(script) is None
    runner.Outcome(script, ["python", "-m", "benchmarks.fake_bench"], 3.0, "body", True).save()
    assert (tmp_path / "fake_bench.json").read_text() == '{"runs": [1, 2]}'
    assert runner.Outcome.load(script).body == "body"
    (tmp_path / "fake_bench.run.json").unlink()                               # an older results dir
    (tmp_path / "fake_bench.json").write_text(
        '{"argv": ["python"], "seconds": 1.0, "body": "old", "ok": true}')
    assert runner.Outcome.load(script).body == "old"
