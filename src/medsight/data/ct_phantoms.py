"""Synthetic CT vessel phantoms: a labelled DICOM set whose class lives only in the Hounsfield units.

Each phantom is one axial CT slice: air (-1000 HU) around a body disc with a fat ring, soft
tissue, a central fat pad holding a few round vessels, a bone of random brightness, and noise.
Both classes draw the anatomy from the same distributions (positions, sizes, vessel count);
they differ in HU only:

- ``plain``: fat -100 HU, soft tissue and vessels 40 HU (unenhanced blood);
- ``enhanced``: every body value scaled about air, ``HU -> 1.2 (HU + 1000) - 1000``, so the
  vessels and soft tissue read 250 HU (contrast enhanced) and fat ~80 HU.

Because the enhanced body is the plain body scaled about air, the ratios between tissues are
the same in both classes: only the absolute HU tells them apart. The bone's brightness is drawn
log-uniform between 700 and 3071 HU (the 12-bit CT ceiling), so a per-image min-max (air -> 0,
bone -> 1) divides every image by its own random scale, which spans a factor 2.4 and swamps
the classes' factor 1.2. The noise's standard deviation (7-24 HU) is drawn in proportion to
that scale, so the min-max image's noise cannot reveal it either, and the air is not clipped
(a clipped noise tail would). Its best possible AUC from the tissue level is about
1 - (1 - ln 1.2 / ln 2.4)^2 / 2 = 0.69, while a fixed HU window keeps the class whole.
Everything follows from the seed; no real patient is involved.

Example:
    >>> root = make_ct_vessel_phantoms(Path("ct"), n_per_class=4, seed=0)
    >>> sorted(p.name for p in root.iterdir())
    ['enhanced', 'plain']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsight.data.phantoms import write_ct_slice
from medsight.errors import ConfigError

CT_CLASSES = ("plain", "enhanced")

FAT_HU = -100.0
TISSUE_HU = 40.0
AIR_HU = -1000.0
ENHANCEMENT = 1250.0 / 1040.0  # (250 + 1000) / (40 + 1000): 40 HU -> 250 HU, scaled about air
BONE_HU_RANGE = (700.0, 3071.0)
NOISE_PER_BONE_RANGE = (0.004, 0.006)  # noise std per HU of bone above air: 7-24 HU
PIXEL_SPACING_MM = 0.7


def make_ct_vessel_phantom(rng: np.random.Generator, size: int, enhanced: bool) -> tuple[np.ndarray, np.ndarray]:
    """Draw one slice: ``(hu, vessels)``, whole-number HU (float64 HxW) and the vessel mask (bool HxW).

    Example:
        >>> hu, vessels = make_ct_vessel_phantom(np.random.default_rng(0), 64, enhanced=True)
        >>> hu.shape, bool(vessels.any()), hu.min() >= -1100
        ((64, 64), True, True)
    """
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    y = (rows + 0.5) / size * 2 - 1
    x = (cols + 0.5) / size * 2 - 1
    cy, cx = rng.uniform(-0.05, 0.05, size=2)
    radius = rng.uniform(0.8, 0.9)
    r = np.hypot(y - cy, x - cx)
    body = r <= radius
    hu = np.full((size, size), AIR_HU)
    hu[body] = FAT_HU
    hu[r <= radius - rng.uniform(0.08, 0.14)] = TISSUE_HU
    pad_y, pad_x = cy + rng.uniform(-0.15, 0.05), cx + rng.uniform(-0.1, 0.1)
    pad_ry, pad_rx = rng.uniform(0.28, 0.36), rng.uniform(0.34, 0.44)
    pad = ((y - pad_y) / pad_ry) ** 2 + ((x - pad_x) / pad_rx) ** 2 <= 1.0
    hu[pad] = FAT_HU
    vessels = _vessels(rng, rows, cols, pad, size)
    hu[vessels] = TISSUE_HU
    if enhanced:
        hu[body] = (hu[body] - AIR_HU) * ENHANCEMENT + AIR_HU
    bone_y, bone_x = cy + rng.uniform(0.56, 0.62), cx + rng.uniform(-0.1, 0.1)
    bone = np.hypot((y - bone_y) / 0.14, (x - bone_x) / 0.18) <= 1.0
    low, high = np.log(np.array(BONE_HU_RANGE) - AIR_HU)
    bone_above_air = np.exp(rng.uniform(low, high))
    hu[bone & body] = bone_above_air + AIR_HU
    hu += rng.normal(0.0, bone_above_air * rng.uniform(*NOISE_PER_BONE_RANGE), (size, size))
    return np.round(hu), vessels


def make_ct_vessel_phantoms(folder: Path, *, n_per_class: int, size: int = 64, seed: int) -> Path:
    """Write ``folder/{plain,enhanced}/case_NNNN.dcm``: CT slices as real DICOM files.

    CT Image Storage, Modality CT, int16 stored values with RescaleSlope 1 and RescaleIntercept
    -1024, PixelSpacing 0.7 mm, one synthetic patient per case (``PatientID`` ``PHANTOM-0007``,
    numbered across both classes). The same arguments write byte-identical files.

    Args:
        folder: the data set root (created if missing); it reads as a folder-per-class set.
        n_per_class: slices per class.
        size: height and width in pixels (at least 32).
        seed: the whole data set follows from it.

    Returns:
        ``folder``.

    Raises:
        ConfigError: ``size`` below 32 or ``n_per_class`` below 1.
    """
    if size < 32 or n_per_class < 1:
        raise ConfigError(
            f"size={size}, n_per_class={n_per_class}", "too small for a CT phantom set",
            "use size >= 32 and n_per_class >= 1",
        )
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    case = 0
    for label in CT_CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            hu, _ = make_ct_vessel_phantom(rng, size, enhanced=label == "enhanced")
            name = f"{label}/case_{i:04d}.dcm"
            write_ct_slice(
                hu, folder / name, uid_key=f"ct-vessels/{seed}/{size}/{name}", number=i,
                patient_id=f"PHANTOM-{case:04d}", description=f"synthetic CT vessel phantom ({label})",
                window=(40, 400), spacing=PIXEL_SPACING_MM,
            )
            case += 1
    return folder


def _vessels(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, pad: np.ndarray, size: int) -> np.ndarray:
    """Three to six round vessels (radius 1.5-3 px at 64 px) with their centres inside the fat pad."""
    scale = size / 64
    vessels = np.zeros(pad.shape, dtype=bool)
    inside = np.argwhere(pad)
    for _ in range(int(rng.integers(3, 7))):
        row, col = inside[int(rng.integers(0, len(inside)))]
        vessels |= np.hypot(rows - row, cols - col) <= rng.uniform(1.5, 3.0) * scale
    return vessels & pad
