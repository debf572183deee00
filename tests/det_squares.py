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
