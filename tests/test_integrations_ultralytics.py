"""otofx.integrations.ultralytics: a YOLOv8n (from yolov8n.yaml, no weights) compressed by
ultralytics' own trainer for one short epoch on CPU, on a synthetic detection set written to a
temporary folder, offline; the saved subnet matches the trained model."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import otofx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.shapes_data import shapes, write_yolo  # noqa: E402

# before ultralytics is first imported (it reads them then): no network checks, settings kept
# out of the home folder
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="otofx-ultralytics-"))


@pytest.fixture
def offline_ultralytics():
    """ultralytics with every online feature and logger integration off."""
    ultralytics = pytest.importorskip("ultralytics")
    from ultralytics.utils import ONLINE, SETTINGS
    assert not ONLINE
    SETTINGS.update({"sync": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False,
                     "raytune": False, "tensorboard": False, "wandb": False})
    return ultralytics


def test_yolo_trainer_compresses_and_the_saved_subnet_matches_the_trained_model(tmp_path, offline_ultralytics):
    from otofx.integrations.ultralytics import otofx_trainer
    data = write_yolo(tmp_path / "shapes", shapes(8, 64, seed=0), shapes(4, 64, seed=1))
    config = otofx.DHSPGConfig(lr=0.01, momentum=0.9, target_group_sparsity=0.5, start_pruning_step=0,
                               pruning_steps=1)
    torch.manual_seed(0)
    model = offline_ultralytics.YOLO("yolov8n.yaml")
    model.train(trainer=otofx_trainer(config), data=str(data), epochs=1, imgsz=64, batch=4, device="cpu",
                workers=0, amp=False, plots=False, warmup_epochs=0, nbs=4, project=str(tmp_path / "runs"), name="run",
                exist_ok=True, verbose=False, val=False, seed=0, deterministic=False)
    trainer = model.trainer
    job = trainer.otofx_job                                 # nbs=batch: a step per batch of 4
    assert trainer.optimizer is job.optimizer and job.optimizer.steps_taken == 2
    report = trainer.otofx_report
    assert report["zero_channels"] == report["target_channels"] > 0
    assert 0 < report["params_ratio"] < 0.8 and 0 < report["flops_ratio"] < 1
    yolo = trainer.model.eval()
    # the graph otofx trained holds the model's own layers: the optimizer trained what ultralytics ran
    assert job.module.get_submodule("model.model.0.conv").weight is yolo.model[0].conv.weight

    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        want = yolo(x)[0]                                   # decoded boxes and class scores
        assert torch.allclose(trainer.otofx_subnet(x)[0], want, rtol=1e-4, atol=1e-4)
        loaded = otofx.load(Path(trainer.wdir) / "otofx_subnet.pt2")
        assert torch.allclose(loaded(x)[0], want, rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in trainer.otofx_subnet.parameters()) == report["params"]


def test_yolo_trainer_refuses_its_own_optimizer(tmp_path, offline_ultralytics):
    from otofx.integrations.ultralytics import otofx_trainer
    data = write_yolo(tmp_path / "shapes", shapes(2, 64), shapes(2, 64, seed=1))
    model = offline_ultralytics.YOLO("yolov8n.yaml")
    with pytest.raises(otofx.ConfigError, match="optimizer='SGD'.*leave optimizer='auto'"):
        model.train(trainer=otofx_trainer(otofx.DHSPGConfig(lr=0.01)), data=str(data), optimizer="SGD",
                    epochs=1, imgsz=64, device="cpu", project=str(tmp_path / "runs"), name="run")
    with pytest.raises(otofx.ConfigError, match="otofx_trainer takes"):
        otofx_trainer({"lr": 0.01})
    assert os.environ["YOLO_OFFLINE"] == "1"
