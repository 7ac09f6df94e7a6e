"""A tiny synthetic detection data set: filled rectangles on noise, the class is the colour.

``shapes(n, size)`` returns ``n`` images (``[3, size, size]`` floats in [0, 1]) with 1-3 boxes
each (``[k, 4]`` pixel ``x1, y1, x2, y2``) and their labels (1 = red, 2 = green, 3 = blue; 0 is
the background). Used by the detector recipes and tests; written to disk in YOLO's layout by
``write_yolo``, so ultralytics' own data loader reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

COLOURS = ((1.0, 0.1, 0.1), (0.1, 1.0, 0.1), (0.1, 0.1, 1.0))
NAMES = ("red", "green", "blue")


@dataclass
class Sample:
    image: torch.Tensor       # [3, H, W] in [0, 1]
    boxes: torch.Tensor       # [k, 4] x1, y1, x2, y2 in pixels
    labels: torch.Tensor      # [k] in 1..len(COLOURS)


def shapes(n: int, size: int = 128, seed: int = 0, classes: int = 2) -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        image = 0.15 * torch.rand(3, size, size, generator=gen)
        k = int(torch.randint(1, 4, (1,), generator=gen))
        boxes, labels = [], []
        for _ in range(k):
            w, h = (torch.randint(size // 6, size // 2, (2,), generator=gen)).tolist()
            x1 = int(torch.randint(0, size - w, (1,), generator=gen))
            y1 = int(torch.randint(0, size - h, (1,), generator=gen))
            c = int(torch.randint(0, classes, (1,), generator=gen))
            image[:, y1:y1 + h, x1:x1 + w] = torch.tensor(COLOURS[c])[:, None, None]
            boxes.append([x1, y1, x1 + w, y1 + h])
            labels.append(c + 1)
        samples.append(Sample(image, torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)))
    return samples


def write_yolo(root: Path, train: list[Sample], val: list[Sample], classes: int = 2) -> Path:
    """Write ``train``/``val`` as PNG images and YOLO label files (``class cx cy w h``, normalised,
    classes from 0) under ``root``; returns the data set's YAML file for ultralytics."""
    from PIL import Image
    for split, samples in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(samples):
            _, h, w = s.image.shape
            pixels = (s.image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "images" / split / f"{i}.png")
            lines = []
            for (x1, y1, x2, y2), c in zip(s.boxes.tolist(), s.labels.tolist()):
                lines.append(f"{c - 1} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                             f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    yaml = root / "shapes.yaml"
    names = "\n".join(f"  {i}: {NAMES[i]}" for i in range(classes))
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return yaml
