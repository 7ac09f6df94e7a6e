"""The main job (examples/compress_digits.py) in its quick size, and the benchmark runner and
compress_quality's table builder (a missing peer is a row with a reason, never a crash)."""

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import __main__ as runner  # noqa: E402
from benchmarks import compress_quality as cq  # noqa: E402
from benchmarks import peers  # noqa: E402
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


def missing_peers(monkeypatch):
    monkeypatch.setattr(peers, "load_oto", lambda: (None, "not installed (test)"))
    monkeypatch.setattr(peers, "load_torch_pruning",
                        lambda: (None, "ModuleNotFoundError: No module named 'torch_pruning'"))


def test_compress_quality_skips_a_missing_peer_with_its_reason(monkeypatch, tmp_path, capsys):
    missing_peers(monkeypatch)
    contestants, skipped = cq.methods()
    assert cq.OTO_NAME not in contestants and cq.TP_NAME not in contestants
    assert skipped[cq.OTO_NAME] == "not available: not installed (test)"
    md, png = tmp_path / "q.md", tmp_path / "q.png"
    assert cq.main(["--tasks", "digits", "--seeds", "1", "--epochs", "1", "--targets", "0.5",
                    "--methods", f"otofx DHSPG,{cq.OTO_NAME},{cq.TP_NAME}",
                    "--plot", str(png), "--out", str(md)]) == 0
    text = md.read_text()
    rows = {r.split(" | ")[1]: r for r in text.splitlines() if r.startswith("| digits |")}
    assert "skipped: not available: not installed (test)" in rows[cq.OTO_NAME]
    assert "skipped: not available: ModuleNotFoundError" in rows[cq.TP_NAME]
    assert "128/128 of 256" in rows["otofx DHSPG"]                  # the target is reached exactly
    assert "no peer result to compare with" in text
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_failing_contestant_is_a_row_not_a_crash(monkeypatch):
    missing_peers(monkeypatch)

    def broken(s, target):
        raise RuntimeError("boom\nsecond line")

    args = cq.parse_args(["--tasks", "digits", "--seeds", "1", "--epochs", "1", "--targets", "0.5"])
    results = cq.Results()
    cq.run_all(args, {"broken": broken}, results)
    rows = cq.table_rows(results, ["digits"], ["broken"], [0.5])
    assert rows == [["digits", "broken", "0.5", "failed: RuntimeError: boom", "", "", "", "0"]]


def test_interpolation_on_a_frontier():
    pts = [(0.2, 0.8, 0.01), (0.6, 0.9, 0.03), (1.0, 1.0, 0.0)]
    assert cq.interpolate(pts, 0.6) == (0.9, 0.03)
    acc, sd = cq.interpolate(pts, 0.4)
    assert acc == pytest.approx(0.85) and sd == pytest.approx(0.02)
    assert cq.interpolate(pts, 0.1) is None


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
