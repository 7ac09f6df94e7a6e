"""Compress part of a model: the backbone of torchvision's Faster R-CNN.

A whole Faster R-CNN cannot be traced (its NMS and box sampling depend on the data), but its
backbone (ResNet + FPN) can. The recipe: compress ``detector.backbone`` alone, put the trained
GraphModule back in its place, train the detector end to end (otofx's optimizer on the backbone,
a plain SGD on the RPN and box heads), then put the shrunk backbone in. The FPN's outputs feed
the heads, so their 256 channels stay (the report says so); everything inside shrinks.

    detector = build_detector("resnet18", classes=3, size=128)
    job = compress_backbone(detector, otofx.DHSPGConfig(...), size=128)   # detector.backbone = job.module
    heads = heads_optimizer(detector, lr=0.01)                            # every other parameter
    ... loss = sum(detector(images, targets).values()); loss.backward(); job.optimizer.step(); heads.step()
    detector.backbone = job.subnet()                                      # same detections, fewer params

Or one optimizer over both: ``add_heads(job.optimizer, detector, lr=0.01)`` adds the heads as a
param group of otofx's optimizer (a plain torch.optim.Optimizer API): they take its base step
(SGD with momentum, or Adam/AdamW with ``variant=``) and are never pruned.

Run it on synthetic shapes (``examples/shapes_data.py``):

    python examples/detector_backbone.py [--backbone resnet18|resnet50] [--steps 60] [--size 128]
                                         [--torchvision-heads]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import otofx  # noqa: E402
from examples.shapes_data import Sample, shapes  # noqa: E402


def build_detector(backbone: str = "resnet18", classes: int = 3, size: int = 128, light: bool = False
                   ) -> FasterRCNN:
    """A Faster R-CNN with a ResNet-FPN backbone (random weights; pass ``weights=`` to torchvision
    for a pretrained one) that resizes every image to ``size`` pixels. ``light``: a 128-wide box
    head and fewer sampled proposals (torchvision's defaults: 1024 and 512 per image), for tests."""
    body = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=5)
    if not light:
        return FasterRCNN(body, num_classes=classes, min_size=size, max_size=size)
    head = TwoMLPHead(body.out_channels * 7 * 7, 128)
    return FasterRCNN(body, min_size=size, max_size=size, box_head=head,
                      box_predictor=FastRCNNPredictor(128, classes), rpn_pre_nms_top_n_train=200,
                      rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100,
                      rpn_batch_size_per_image=64, box_batch_size_per_image=64)


def compress_backbone(detector: FasterRCNN, config: otofx.DHSPGConfig | otofx.HESSOConfig,
                      size: int) -> otofx.CompressionJob:
    """Compress ``detector.backbone`` on a ``size`` x ``size`` example and train its traced copy in
    place: ``detector.backbone`` becomes ``job.module``."""
    example = torch.rand(1, 3, size, size)
    job = otofx.compress(detector.backbone, config, (example,))
    detector.backbone = job.module
    return job


def heads_optimizer(detector: FasterRCNN, lr: float, momentum: float = 0.9) -> torch.optim.SGD:
    """A plain SGD over every trainable parameter outside the backbone (RPN, box heads)."""
    backbone = {id(p) for p in detector.backbone.parameters()}
    rest = [p for p in detector.parameters() if p.requires_grad and id(p) not in backbone]
    return torch.optim.SGD(rest, lr=lr, momentum=momentum)


def add_heads(optimizer: torch.optim.Optimizer, detector: FasterRCNN, lr: float) -> None:
    """Every trainable parameter outside the backbone as one more param group of ``optimizer``."""
    backbone = {id(p) for p in detector.backbone.parameters()}
    optimizer.add_param_group({"params": [p for p in detector.parameters()
                                          if p.requires_grad and id(p) not in backbone], "lr": lr})


def batches(data: list[Sample], batch: int, steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        chosen = torch.randint(0, len(data), (batch,), generator=gen).tolist()
        yield ([data[i].image for i in chosen],
               [{"boxes": data[i].boxes, "labels": data[i].labels} for i in chosen])


def train(detector: FasterRCNN, optimizers: list[torch.optim.Optimizer], data: list[Sample],
          steps: int, batch: int = 2, log_every: int = 0, clip: float = 5.0) -> list[float]:
    """Train the detector end to end; every optimizer steps after each backward (gradients clipped
    to norm ``clip``: a detector trained from scratch diverges now and then without it). Returns
    the losses."""
    detector.train()
    losses = []
    for step, (images, targets) in enumerate(batches(data, batch, steps), 1):
        loss = sum(detector(images, targets).values())
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(detector.parameters(), clip)
        for opt in optimizers:
            opt.step()
        losses.append(loss.item())
        if log_every and step % log_every == 0:
            print(f"step {step:3d}/{steps}  loss {loss.item():.3f}")
    return losses


@torch.no_grad()
def detections(detector: FasterRCNN, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return detector.eval()(images)


def same_detections(a: list[dict], b: list[dict], atol: float = 1e-3) -> bool:
    """Same boxes, labels and scores, image by image."""
    return all(x["labels"].shape == y["labels"].shape and torch.equal(x["labels"], y["labels"])
               and torch.allclose(x["boxes"], y["boxes"], atol=atol)
               and torch.allclose(x["scores"], y["scores"], atol=atol) for x, y in zip(a, b))


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18", help="resnet18, resnet34, resnet50, ...")
    parser.add_argument("--size", type=int, default=128, help="image size the detector resizes to")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.5, help="target group sparsity")
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one-optimizer", action="store_true",
                        help="the heads as a param group of otofx's optimizer instead of their own SGD")
    parser.add_argument("--torchvision-heads", action="store_true",
                        help="torchvision's default box head and proposal counts (slower on CPU)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    train_set, val_set = shapes(64, args.size, seed=args.seed), shapes(8, args.size, seed=args.seed + 1)
    detector = build_detector(args.backbone, classes=3, size=args.size, light=not args.torchvision_heads)
    dense_backbone = params(detector.backbone)
    start = time.perf_counter()
    config = otofx.DHSPGConfig(lr=args.lr, momentum=0.9, target_group_sparsity=args.target,
                               start_pruning_step=args.steps // 4, pruning_steps=max(1, args.steps // 2))
    job = compress_backbone(detector, config, args.size)
    optimizers: list[torch.optim.Optimizer] = [job.optimizer]
    if args.one_optimizer:
        add_heads(job.optimizer, detector, args.lr)
    else:
        optimizers.append(heads_optimizer(detector, args.lr))
    losses = train(detector, optimizers, train_set, args.steps, args.batch, log_every=max(1, args.steps // 8))
    trained = detections(detector, [s.image for s in val_set])
    dense_detector = params(detector)
    detector.backbone = job.subnet()                      # the trained backbone, shrunk
    seconds = time.perf_counter() - start
    shrunk = detections(detector, [s.image for s in val_set])
    same = same_detections(trained, shrunk)
    found = sum(len(d["boxes"]) for d in trained)
    print()
    print(job.report(detector.backbone))
    print()
    print(f"{args.backbone}-FPN Faster R-CNN, {args.steps} steps of batch {args.batch} at {args.size}px: "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, {seconds:.1f} s with analysis and shrink")
    print(f"backbone parameters: {dense_backbone:,} -> {params(detector.backbone):,} "
          f"({params(detector.backbone) / dense_backbone:.2f}x); detector: {dense_detector:,} -> "
          f"{params(detector):,}")
    print(f"detections on {len(val_set)} validation images ({found} boxes): the compressed detector's "
          f"are the trained one's: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
