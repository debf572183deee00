"""Synthetic chest phantoms: a labelled data set that needs no patient.

Each phantom is a chest-like image: a bright body ellipse holding two dark elliptical
lungs, faint rib arcs, a smooth random shading and noise, with the anatomy shifted and
scaled a little at random. Class ``nodule`` adds a small bright round blob inside one
lung; faint vessel dots appear in both classes, so the task is learnable but not trivial.
Everything follows from the seed: the same seed writes byte-identical files.

Example:
    >>> root = make_chest_phantoms(Path("phantoms"), n_per_class=20, size=32)
    >>> sorted(p.name for p in root.iterdir())
    ['nodule', 'normal', 'regions.csv']
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsight.errors import ConfigError

CLASSES = ("normal", "nodule")
FORMATS = ("png", "dcm")

# Hounsfield units of the written DICOM: 0 -> air (-1000 HU), the body (~0.6) -> soft tissue.
_HU_PER_UNIT = 1700.0
_HU_AIR = -1000.0
_RESCALE_INTERCEPT = -1024.0


@dataclass(frozen=True)
class Nodule:
    """Where the nodule was drawn, in pixels of the phantom image."""

    row: float
    col: float
    radius: float


@dataclass(frozen=True)
class Phantom:
    """A phantom image (float32 HxW in [0, 1]), its nodule if it has one, and its lung fields (bool HxW)."""

    image: np.ndarray
    nodule: Nodule | None
    lungs: np.ndarray | None = None


def make_phantom(rng: np.random.Generator, size: int, nodule: bool) -> Phantom:
    """Draw one chest phantom, with the nodule's position when ``nodule`` is True.

    Example:
        >>> p = make_phantom(np.random.default_rng(0), 64, nodule=True)
        >>> p.image.shape, p.image.dtype, 2 <= p.nodule.radius <= 5
        ((64, 64), dtype('float32'), True)
    """
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    y = (rows + 0.5) / size * 2 - 1  # -1 (top) .. 1 (bottom)
    x = (cols + 0.5) / size * 2 - 1
    scale = rng.uniform(0.9, 1.08)
    cy, cx = rng.uniform(-0.06, 0.06, size=2)
    y, x = (y - cy) / scale, (x - cx) / scale

    body = _ellipse(y, x, 0.05, 0.0, 0.88, 0.8)
    image = 0.08 + body * rng.uniform(0.52, 0.62)
    lungs = []
    for side in (-1.0, 1.0):
        lung = _ellipse(y, x, -0.02 + rng.normal(0, 0.02), side * 0.4, 0.62 * rng.uniform(0.92, 1.06),
                        0.27 * rng.uniform(0.9, 1.1))
        lungs.append(lung)
        image -= lung * rng.uniform(0.32, 0.4)
    image += _ribs(y, x, rng) * body
    image += _vessels(rng, size, lungs, count=int(rng.integers(2, 6)))
    shading = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), size / 6)
    image += shading / (shading.std() + 1e-9) * rng.uniform(0.02, 0.05)
    found = _place_nodule(rng, size, lungs) if nodule else None
    if found is not None:
        amplitude = rng.uniform(0.25, 0.45)
        image += amplitude * _blob(rows, cols, found.row, found.col, found.radius)
    image += rng.normal(0, 0.035, (size, size))
    return Phantom(np.clip(image, 0.0, 1.0).astype(np.float32), found, (lungs[0] + lungs[1]) > 0.5)


def make_phantom_array(rng: np.random.Generator, size: int, nodule: bool) -> np.ndarray:
    """One phantom image as float32 HxW in [0, 1] (see :func:`make_phantom`)."""
    return make_phantom(rng, size, nodule).image


def make_chest_phantoms(
    out: Path, *, n_per_class: int = 150, size: int = 64, seed: int = 0, fmt: str = "png"
) -> Path:
    """Write a folder-per-class phantom data set ``out/{normal,nodule}/*`` and ``out/regions.csv``.

    ``regions.csv`` has one row per image, ``path,label,nodule_row,nodule_col,radius``
    (paths relative to ``out``; the nodule columns are empty for ``normal``). It is also a
    valid CSV manifest for :func:`medsight.data.layouts.open_dataset`.

    Args:
        out: the folder to write (created if missing).
        n_per_class: images per class.
        size: height and width in pixels (nodule radius 2-5 px at 64, scaled with size).
        seed: the whole data set follows from it.
        fmt: ``"png"`` (8-bit grey) or ``"dcm"`` (CT-like DICOM, int16 with HU rescale,
            patient name ``PHANTOM^SYNTHETIC``).

    Returns:
        ``out``, the data set root.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"fmt={fmt}", "unknown phantom format", f"use one of: {', '.join(FORMATS)}")
    if size < 16 or n_per_class < 1:
        raise ConfigError(
            f"size={size}, n_per_class={n_per_class}", "too small for a phantom data set",
            "use size >= 16 and n_per_class >= 1",
        )
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for label in CLASSES:
        (out / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            phantom = make_phantom(rng, size, nodule=label == "nodule")
            name = f"{label}/{label}_{i:04d}.{fmt}"
            if fmt == "png":
                _write_png(phantom.image, out / name)
            else:
                _write_dicom(phantom.image, out / name, uid_key=f"{seed}/{size}/{name}", number=i)
            spot = phantom.nodule
            rows.append([name, label, *(("", "", "") if spot is None else
                                       (f"{spot.row:.2f}", f"{spot.col:.2f}", f"{spot.radius:.2f}"))])
    with open(out / "regions.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "nodule_row", "nodule_col", "radius"])
        writer.writerows(rows)
    return out


def make_lung_phantoms(out: Path, *, n: int = 40, size: int = 64, seed: int = 0) -> Path:
    """Write a segmentation set of phantoms: ``out/images/case_NNNN.png`` with ``out/masks/`` lung fields.

    Half the phantoms have a nodule (inside a lung: it stays part of the lung field). The mask
    is 255 on both lungs and 0 elsewhere, so the set reads as the image/mask pairs layout.

    Returns:
        ``out``, the data set root.
    """
    if size < 16 or n < 2:
        raise ConfigError(f"size={size}, n={n}", "too small for a segmentation set", "use size >= 16 and n >= 2")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        phantom = make_phantom(rng, size, nodule=i % 2 == 1)
        _write_png(phantom.image, out / "images" / f"case_{i:04d}.png")
        _write_png(phantom.lungs.astype(np.float32), out / "masks" / f"case_{i:04d}.png")
    return out


def _ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """A soft-edged filled ellipse (1 inside, 0 outside) in normalised coordinates."""
    r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    return np.clip((1.0 - r) * 12.0 + 0.5, 0.0, 1.0)


def _ribs(y: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Faint horizontal arcs, bowed downwards towards the sides, like ribs on a radiograph."""
    ribs = np.zeros_like(y)
    bow = rng.uniform(0.25, 0.4)
    for level in np.linspace(-0.6, 0.45, int(rng.integers(5, 8))):
        centre = level + rng.normal(0, 0.02) + bow * x**2
        ribs += np.exp(-(((y - centre) / 0.03) ** 2))
    return ribs * rng.uniform(0.05, 0.09)


def _blob(rows: np.ndarray, cols: np.ndarray, row: float, col: float, radius: float) -> np.ndarray:
    """A round blob, flat inside ``radius`` with a one-pixel soft edge."""
    r = np.hypot(rows - row, cols - col)
    return np.clip(radius + 0.5 - r, 0.0, 1.0)


def _vessels(rng: np.random.Generator, size: int, lungs: list[np.ndarray], count: int) -> np.ndarray:
    """Small faint dots inside the lungs in both classes, so 'a bright spot' alone is not the answer."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    inside = np.argwhere(np.maximum(*lungs) > 0.99)
    dots = np.zeros((size, size))
    for row, col in inside[rng.integers(0, len(inside), size=count)]:
        radius = rng.uniform(0.6, 1.4) * size / 64
        dots += rng.uniform(0.06, 0.14) * _blob(rows, cols, row, col, radius)
    return dots


def _place_nodule(rng: np.random.Generator, size: int, lungs: list[np.ndarray]) -> Nodule:
    """A radius of 2-5 px (at size 64) and a centre well inside a randomly chosen lung."""
    radius = rng.uniform(2.0, 5.0) * size / 64
    lung = lungs[int(rng.integers(0, 2))] > 0.99
    margin = max(1, int(round(radius * 0.6)))
    core = ndimage.binary_erosion(lung, iterations=margin)
    candidates = np.argwhere(core if core.any() else lung)
    row, col = candidates[int(rng.integers(0, len(candidates)))]
    return Nodule(float(row), float(col), float(radius))


def _write_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(path)


def _write_dicom(image: np.ndarray, path: Path, *, uid_key: str, number: int) -> None:
    """A chest phantom (``image`` in [0, 1]) as a CT slice: air 0 -> -1000 HU, 1700 HU per unit."""
    hu = np.round(_HU_AIR + image * _HU_PER_UNIT)
    write_ct_slice(hu, path, uid_key=uid_key, number=number, patient_id="PHANTOM",
                   description="synthetic chest phantom", window=(-600, 1500))


def write_ct_slice(
    hu: np.ndarray, path: Path, *, uid_key: str, number: int, patient_id: str, description: str,
    window: tuple[float, float], spacing: float = 1.0,
) -> None:
    """Write HU values (whole numbers, HxW) as a minimal CT Image Storage DICOM file.

    int16 stored values with RescaleSlope 1 and RescaleIntercept -1024 (HU = stored - 1024),
    UIDs derived from ``uid_key`` so the same call writes the same bytes, a synthetic patient
    (``PHANTOM^SYNTHETIC``, ``patient_id``), ``spacing`` mm pixels, ``window`` as
    (WindowCenter, WindowWidth).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    def uid(part: str) -> str:
        return generate_uid(entropy_srcs=[uid_key, part])

    stored = (hu - _RESCALE_INTERCEPT).astype(np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.FrameOfReferenceUID = uid("frame")
    ds.Modality = "CT"
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = patient_id
    ds.SeriesDescription = description
    ds.InstanceNumber = number + 1
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _RESCALE_INTERCEPT
    ds.RescaleSlope = 1.0
    ds.RescaleType = "HU"
    ds.WindowCenter = window[0]
    ds.WindowWidth = window[1]
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
