"""A small synthetic segmentation set: noisy grey pictures of one bright disc each, with masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def disc_case(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8, mask 0/1)`` of one disc of radius 5-8 px at a random centre."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(12, size - 12, 2)
    radius = rng.integers(5, 9)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.uint8)
    image = np.clip(60 + rng.normal(0, 20, (size, size)) + 120 * mask, 0, 255).astype(np.uint8)
    return image, mask


def write_disc_folder(root: Path, *, n: int = 12, size: int = 48, seed: int = 1) -> Path:
    """``root/images/caseNN.png`` and ``root/masks/caseNN.png`` (0/255), the image/mask pairs layout."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(n):
        image, mask = disc_case(rng, size)
        Image.fromarray(image).save(root / "images" / f"case{k:02d}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"case{k:02d}.png")
    return root
