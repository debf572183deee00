"""Tiny synthetic detection sets for the detection training tests: bright squares ("lesions") on noise.

:func:`write_squares` writes ``n`` grey PNGs of ``size`` x ``size`` pixels into ``root/images/`` and a CSV box
manifest ``root/boxes.csv`` (``path,x1,y1,x2,y2,label,split``: x the column, y the row, pixel edges), each image
with one or two squares of ``side`` pixels (every ``negative_every``-th image none: a negative), the first
``n_val`` images in the val split and the rest in train. The squares' positions are drawn from ``seed``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def write_squares(root: Path, *, n: int = 24, size: int = 64, side: int | tuple[int, ...] = 12, n_val: int = 6,
                  seed: int = 0, negative_every: int = 8, splits: bool = True, boxes: bool = True) -> Path:
    """Write the set (see the module); returns the manifest. ``boxes=False`` lists every image without a box; a
    tuple of ``side`` gives the squares those sides in turn."""
    rng = np.random.default_rng(seed)
    sides = side if isinstance(side, tuple) else (side,)
    drawn = 0
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        pixels = rng.normal(40, 8, (size, size))
        split = "val" if i < n_val else "train"
        count = 0 if (i % negative_every == negative_every - 1 or not boxes) else 1 + i % 2
        name = f"images/img{i:03d}.png"
        for _ in range(count):
            edge = sides[drawn % len(sides)]
            drawn += 1
            r, c = (int(v) for v in rng.integers(0, size - edge, 2))
            pixels[r:r + edge, c:c + edge] = 200 + rng.normal(0, 5, (edge, edge))
            rows.append([name, c, r, c + edge, r + edge, "lesion", split])
        if count == 0:
            rows.append([name, "", "", "", "", "", split])
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name)
    manifest = root / "boxes.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "x1", "y1", "x2", "y2", "label", *(["split"] if splits else [])])
        writer.writerows(row if splits else row[:-1] for row in rows)
    return manifest


def square_sample(shape: tuple[int, int], box: tuple[int, int, int, int], rng: np.random.Generator):
    """A Sample of faint noise with one bright square (the finding) over ``box`` = ``(r1, c1, r2, c2)``."""
    from medsight.sample import Sample

    image = rng.normal(0.0, 0.1, (1, *shape)).astype(np.float32)
    r1, c1, r2, c2 = box
    image[0, r1:r2, c1:c2] += 1.0
    return Sample(image, (1.0, 1.0), meta={"path": f"square_{shape[0]}x{shape[1]}.png"})


def square_detector_bundle(folder: Path, *, steps: int, seed: int = 0, score_threshold: float = 0.5) -> Path:
    """A small RetinaNet (resnet10, 16-channel pyramid, anchors 8/16/32 px) trained ``steps`` steps of 4 images to
    find bright squares of 8-20 px on 64 px images, saved as a detection bundle in ``folder``."""
    import torch

    from medsight.boxes import Boxes
    from medsight.bundle import build_bundle, provenance
    from medsight.config import DetectConfig, PreprocessConfig
    from medsight.models.detectors import build_detector
    from medsight.transforms.box_geometry import fit_sample

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    detect = DetectConfig(score_floor=0.05)
    sizes = [[8.0, 8.0], [16.0, 16.0], [32.0, 32.0]]
    detector = build_detector(2, 1, ["square"], detect, sizes, backbone="resnet10", fpn_channels=16)
    preprocess = PreprocessConfig(size=[64, 64], channels=1, normalize="zscore", keep_aspect=True)
    optimiser = torch.optim.Adam(detector.network.parameters(), lr=3e-3)
    detector.train()
    for _ in range(steps):
        images, targets = [], []
        for _ in range(4):
            side = int(rng.integers(8, 21))
            r, c = (int(v) for v in rng.integers(0, 64 - side, 2))
            image, boxes, _ = fit_sample(square_sample((64, 64), (r, c, r + side, c + side), rng), preprocess,
                                         Boxes([[r, c, r + side, c + side]], [0]))
            images.append(image)
            targets.append({"boxes": torch.from_numpy(boxes.corners).float(),
                            "labels": torch.zeros(1, dtype=torch.long)})
        losses = detector(torch.from_numpy(np.stack(images)), targets)
        optimiser.zero_grad()
        (losses["classification"] + losses["box_regression"]).backward()
        optimiser.step()
    return build_bundle(
        task="detection", model=detector.spec.model_config(), label_names=["square"], provenance=provenance(),
        preprocess=preprocess, state_dict=detector.network.state_dict(),
        detection=detector.spec.settings(detect, score_threshold=score_threshold, threshold_note="a test's"),
    ).save(folder)
