"""The partial-model recipe (examples/detector_backbone.py): torchvision's Faster R-CNN cannot be
traced whole, so its backbone is compressed alone, trained inside the detector (otofx's optimizer on
the backbone, SGD on the heads) and swapped for its subnet: same detections, fewer parameters."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import otofx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples import detector_backbone as recipe  # noqa: E402
from examples.shapes_data import shapes  # noqa: E402

SIZE = 96


def test_trained_backbone_shrinks_inside_the_detector_with_the_same_detections():
    torch.manual_seed(0)
    detector = recipe.build_detector("resnet18", classes=3, size=SIZE, light=True)
    dense_backbone = recipe.params(detector.backbone)
    config = otofx.DHSPGConfig(lr=0.01, momentum=0.9, target_group_sparsity=0.5, start_pruning_step=1,
                               pruning_steps=2)
    job = recipe.compress_backbone(detector, config, SIZE)
    assert detector.backbone is job.module
    heads = recipe.heads_optimizer(detector, lr=0.01)
    in_heads = {id(p) for g in heads.param_groups for p in g["params"]}
    assert not in_heads & {id(p) for p in job.module.parameters()}
    assert len(in_heads) + len(list(job.module.parameters())) == len(list(detector.parameters()))
    box_head = detector.roi_heads.box_head.fc6.weight.detach().clone()

    losses = recipe.train(detector, [job.optimizer, heads], shapes(16, SIZE), steps=4, batch=2)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(box_head, detector.roi_heads.box_head.fc6.weight)      # the heads trained
    report = job.optimizer.sparsity_report()
    assert report["zero_channels"] == report["target_channels"] > 0

    detector.roi_heads.score_thresh = 0.0                  # many boxes to compare, not only confident ones
    images = [s.image for s in shapes(4, SIZE, seed=5)]
    trained = recipe.detections(detector, images)
    dense_detector = recipe.params(detector)
    detector.backbone = job.subnet()
    assert recipe.params(detector.backbone) < 0.7 * dense_backbone
    assert recipe.params(detector) < dense_detector
    shrunk = recipe.detections(detector, images)
    assert sum(len(d["boxes"]) for d in trained) >= 20
    assert recipe.same_detections(trained, shrunk)


def test_one_optimizer_trains_the_heads_as_a_param_group():
    torch.manual_seed(0)
    detector = recipe.build_detector("resnet18", classes=3, size=64, light=True)
    config = otofx.DHSPGConfig(lr=0.01, momentum=0.9, target_group_sparsity=0.5, start_pruning_step=0,
                               pruning_steps=1)
    job = recipe.compress_backbone(detector, config, 64)
    recipe.add_heads(job.optimizer, detector, lr=0.005)
    assert [g["lr"] for g in job.optimizer.param_groups] == [0.01, 0.005]
    head = detector.rpn.head.conv[0][0].weight.detach().clone()
    recipe.train(detector, [job.optimizer], shapes(8, 64), steps=2, batch=2)
    assert not torch.equal(head, detector.rpn.head.conv[0][0].weight)
    report = job.optimizer.sparsity_report()
    assert report["zero_channels"] == report["target_channels"] > 0


def test_the_whole_detector_is_refused_in_a_few_lines_that_point_to_the_backbone():
    detector = recipe.build_detector("resnet18", classes=3, size=64, light=True).eval()
    try:
        otofx.trace(detector, ([torch.rand(3, 64, 64)],))
    except otofx.TraceError as exc:
        message = str(exc)
    else:
        raise AssertionError("a whole Faster R-CNN traced")
    assert "could trace FasterRCNN" in message and "leaf_modules" in message
    assert len(message) < 1200 and "aten." not in message          # torch's graph dump stays out


@pytest.mark.parametrize("optimizers", [[], ["--one-optimizer"]], ids=["two optimizers", "one optimizer"])
def test_recipe_script_runs_and_reports_the_same_detections(capsys, optimizers):
    assert recipe.main(["--steps", "3", "--size", "64", *optimizers]) == 0
    out = capsys.readouterr().out
    assert "the compressed detector's are the trained one's: True" in out
    assert "backbone parameters: 13,774,016 -> " in out
