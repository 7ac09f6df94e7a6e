"""ONNX export of subnets (otofx.integrations.onnx_export): a CNN, a transformer and a YOLO detector
shrink, export with torch.onnx's dynamo exporter to a file holding only the subnet's weights, and
onnxruntime computes what the subnet computes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import otofx
from otofx.integrations.onnx_export import export_onnx
from otofx.testing import zero_groups

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.digits_resnet import DigitsResNet  # noqa: E402


def weights_in(path: Path) -> int:
    """Elements of every initializer (weight) stored in the ONNX file."""
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def zeroed_and_shrunk(model: torch.nn.Module, inputs: tuple, fraction: float = 0.5):
    gm = otofx.trace(model, inputs)
    analysis = otofx.analyze(gm, inputs)
    zero_groups(gm, analysis, fraction, seed=1)
    return gm.eval(), otofx.shrink(gm, analysis).eval()


def test_cnn_subnet_onnx_file_holds_only_the_subnet_and_runs_the_same(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8)
    dense, small = zeroed_and_shrunk(DigitsResNet(16), (x,))
    full = export_onnx(dense, (x,), tmp_path / "dense.onnx")
    result = export_onnx(small, (x,), tmp_path / "small.onnx", dynamic_batch=True)
    assert result.max_difference is not None and result.max_difference < 1e-4
    assert result.bytes == (tmp_path / "small.onnx").stat().st_size < 0.6 * full.bytes
    assert not (tmp_path / "small.onnx.data").exists()              # one file
    n_small = sum(t.numel() for t in small.state_dict().values())
    n_dense = sum(t.numel() for t in dense.state_dict().values())
    assert weights_in(result.path) <= n_small < 0.5 * n_dense
    assert weights_in(result.path) < 0.5 * weights_in(full.path)

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    other = torch.rand(7, 1, 8, 8)                        # another batch size: the batch dim is free
    got = session.run(None, {session.get_inputs()[0].name: other.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, small(other).numpy(), rtol=1e-4, atol=1e-5)
        assert np.array_equal(got.argmax(1), dense(other).argmax(1).numpy())


def test_transformer_subnet_with_pruned_heads_exports_and_runs_the_same(tmp_path):
    from zoo.hf_models import build
    torch.manual_seed(0)
    model, inputs, _ = build("bert:sdpa")
    dense, small = zeroed_and_shrunk(model, inputs)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    result = export_onnx(small, inputs, tmp_path / "bert.onnx")
    assert result.max_difference < 1e-4
    n_small = sum(t.numel() for t in small.state_dict().values())
    assert weights_in(result.path) <= n_small


def test_yolo_detector_subnet_exports_and_runs_the_same(tmp_path):
    os.environ.setdefault("YOLO_OFFLINE", "1")             # before ultralytics is imported: no network
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
    x = torch.rand(1, 3, 64, 64)
    dense, small = zeroed_and_shrunk(model, (x,))
    result = export_onnx(small, (x,), tmp_path / "yolo.onnx")
    assert result.max_difference is not None
    n_dense = sum(p.numel() for p in model.parameters())
    assert weights_in(result.path) < 0.5 * n_dense          # half of every group gone: ~0.3x
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    boxes = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = dense(x)[0]                                  # decoded boxes + class scores
    assert boxes.shape == tuple(want.shape) == (1, 4 + 3, 8 * 8 + 4 * 4 + 2 * 2)
    np.testing.assert_allclose(boxes, want.numpy(), rtol=1e-4, atol=1e-3)
