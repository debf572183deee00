"""The fingerprint of a labelled classification data set: what the plan (:mod:`medsight.classification.plan`)
is derived from, and what a bundle's domain check compares new inputs with.

:func:`fingerprint_images` reads the images once (a seeded, class-stratified subset of ``max_images`` when
there are more) and summarises them: images per class; sizes, aspect ratios and spacing; channels, colour and
bit depth; the modality (the configured one, else the DICOM Modality tag, else a stated guess); intensity
statistics in the file's own units (for CT: Hounsfield units over the body, HU > -500); and the duplicates
and leakage ``medsight data inspect`` finds (:func:`medsight.data.inspect.find_duplicates`) among the images
read. A file that cannot be read is listed under ``unreadable`` with its reason, and the rest go on.

Example:
    >>> fp = fingerprint_images(open_dataset("brain_mri_tumor"), progress=False)
    >>> fp["class_counts"], fp["modality"]["value"], fp["modality"]["source"]
    ({'no': 98, 'yes': 155}, 'XR', 'guess')
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from medsight.data import duplicates
from medsight.data.file_errors import file_error, one_line
from medsight.data.inspect import find_duplicates, item_digest
from medsight.data.layouts import LabelledSet, item_id
from medsight.data.modalities import dicom_modalities
from medsight.data.pixel_values import draw_values, is_colour, value_summary
from medsight.errors import DatasetError

SEED = 1234
#: CT: the body is what reads above this many HU (air is -1000, lung about -800 .. -500)
BODY_HU = -500.0
#: pixel formats (Pillow modes) by bit depth; the others are judged by their values
_MODE_DEPTH = {"1": "bool", "I;16": "uint16", "I;16L": "uint16", "I;16B": "uint16", "I;16N": "uint16",
               "I": "int32", "F": "float32"}
_MODE_CHANNELS = {"RGBA": 4, "LA": 2, "PA": 4, "CMYK": 4}
_PICTURE_FORMATS = ("png", "jpeg", "jpg", "tiff", "gif", "bmp", "npz", "mpo", "webp")


@dataclass
class _Reads:
    """What the summary needs from each image read."""

    index: list[int] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    spacings: list[tuple[float, ...]] = field(default_factory=list)
    channels: Counter = field(default_factory=Counter)
    colour: list[bool] = field(default_factory=list)
    bit_depth: Counter = field(default_factory=Counter)
    body_parts: Counter = field(default_factory=Counter)
    formats: list[str] = field(default_factory=list)
    whole: list[np.ndarray] = field(default_factory=list)
    body: list[np.ndarray] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)


def fingerprint_images(ds: LabelledSet, *, modality: str | None = None, progress: bool = True,
                       max_images: int = 2000) -> dict:
    """Read the images of ``ds`` (all, or a seeded class-stratified subset of ``max_images``) and summarise them.

    An official test split (a manifest's split column, an npz's test arrays, a ``test/`` folder) is left out:
    the plan and the domain record are made from the data training may see, never from the test cases.

    Args:
        ds: the data set (:func:`medsight.data.layouts.open_dataset`).
        modality: the configured modality (``data.modality``); it wins over the DICOM tags.
        progress: show a progress bar while reading.
        max_images: the most images read for the statistics; ``n_read`` says how many were.

    Returns:
        The JSON-able fingerprint: ``task``, ``n_images``, ``n_read``, ``class_counts``, ``spatial_dims``,
        ``sizes`` (``median``, ``min``, ``max``, ``p10``, ``p90`` of the spatial shape, rows first),
        ``aspect_ratio`` (width / height: ``median``, ``min``, ``max``), ``spacing`` (``{"median"}``, or None
        when no file states one), ``channels`` (``{"1": n, "3": n}``, the files' own counts), ``colour``,
        ``bit_depth``, ``modality`` (``value``, ``source``: config, dicom or guess, ``reason``),
        ``dicom_modalities``, ``body_parts``, ``intensity`` (``unit``, ``region``, ``min``, ``max``, ``mean``,
        ``std``, ``median``, ``p00_5``, ``p99_5``), ``duplicates`` (``exact_groups``, ``redundant_copies``,
        ``near_groups``, ``cross_split``, ``conflicting_labels``, among the images read) and ``unreadable``
        (``{"path", "reason"}`` of each file that could not be read).

    Raises:
        DatasetError: no image could be read.
    """
    from medsight.progress import track

    pool = np.array([i for i, item in enumerate(ds.items) if item.split != "test"], dtype=np.int64)
    chosen = _stratified_subset(ds, pool, max_images)
    reads = _Reads()
    for i in track(chosen, description="fingerprinting", enabled=progress):
        try:
            _read_one(ds, int(i), reads)
        except Exception as exc:  # one file's failure, whatever raised it, is listed; the rest go on
            reads.unreadable.append({"path": item_id(ds.items[int(i)]),
                                     "reason": one_line(file_error(ds.items[int(i)].source, exc))})
    if not reads.index:
        raise DatasetError(ds.root, f"none of the {len(chosen)} images read could be decoded "
                           f"({reads.unreadable[0]['reason'] if reads.unreadable else 'no images'})",
                           "run medsight data inspect on it to see every file's reason")
    dicom = dicom_modalities(ds)
    colour = sum(reads.colour) * 2 > len(reads.colour)
    whole = np.concatenate(reads.whole)
    found = _modality(modality, dicom, colour, reads, whole)
    return {
        "task": "classification",
        "n_images": len(pool),
        "n_read": len(reads.index),
        "class_counts": {name: int(np.sum(ds.labels()[pool] == k)) for k, name in enumerate(ds.class_names)},
        "spatial_dims": len(reads.shapes[0]),
        "sizes": _sizes(reads.shapes),
        "aspect_ratio": _aspect(reads.shapes),
        "spacing": _spacing(reads),
        "channels": {str(k): n for k, n in sorted(reads.channels.items())},
        "colour": bool(colour),
        "bit_depth": dict(reads.bit_depth.most_common()),
        "modality": found,
        "dicom_modalities": dict(dicom.most_common()),
        "body_parts": dict(reads.body_parts.most_common()),
        "intensity": _intensity(found["value"], reads, whole),
        "duplicates": _duplicates(ds, reads),
        "unreadable": reads.unreadable,
    }


def _stratified_subset(ds: LabelledSet, pool: np.ndarray, max_images: int) -> list[int]:
    """Every item of ``pool`` when there are at most ``max_images``; else a seeded draw keeping each class's share
    (at least one image of every class)."""
    n = len(pool)
    if n <= max_images:
        return pool.tolist()
    rng = np.random.default_rng(SEED)
    labels = np.full(len(ds.items), -1)
    labels[pool] = ds.labels()[pool]
    chosen: list[int] = []
    for label in np.unique(labels[pool]):
        members = np.flatnonzero(labels == label)
        take = max(1, round(max_images * len(members) / n))
        chosen += rng.choice(members, size=min(take, len(members)), replace=False).tolist()
    return sorted(chosen)


def _read_one(ds: LabelledSet, i: int, reads: _Reads) -> None:
    """Read item ``i`` and add what the summary needs; everything that can fail comes first."""
    item = ds.items[i]
    sample = ds.read(item)
    array = np.asarray(sample.array)
    digest = item_digest(item, sample)
    features = duplicates.low_frequencies(duplicates.grey_plane(array))
    rng = np.random.default_rng([SEED, i])
    flat = array.reshape(-1)
    body = flat[flat > BODY_HU]
    reads.index.append(i)
    reads.shapes.append(tuple(int(n) for n in sample.spatial_shape))
    reads.spacings.append(tuple(float(s) for s in sample.spacing))
    mode = str(sample.meta.get("mode") or "")
    reads.channels[_MODE_CHANNELS.get(mode, sample.channels)] += 1
    reads.colour.append(is_colour(array))
    reads.bit_depth[_bit_depth(ds, item, mode, array)] += 1
    if sample.meta.get("BodyPartExamined"):
        reads.body_parts[str(sample.meta["BodyPartExamined"]).upper()] += 1
    reads.formats.append(str(sample.meta.get("format") or "").lower())
    reads.whole.append(draw_values(flat, rng))
    reads.body.append(draw_values(body, rng))
    reads.digests.append(digest)
    reads.features.append(features)


def _bit_depth(ds: LabelledSet, item, mode: str, array: np.ndarray) -> str:
    """The stored sample type: from the pixel format of a picture or the array of an npz; for the other
    files (DICOM after its rescale, NIfTI, NRRD) the smallest type that holds the values."""
    if item.index is not None:
        return str(ds.arrays()[item.split or "train"][0].dtype)
    if mode:
        return _MODE_DEPTH.get(mode, "uint8")
    if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
        return "float32"
    low, high = float(array.min()), float(array.max())
    for name in ("uint8", "uint16", "int16", "int32"):
        info = np.iinfo(name)
        if info.min <= low and high <= info.max:
            return name
    return "float32"


def _modality(configured: str | None, dicom: Counter, colour: bool, reads: _Reads, whole: np.ndarray) -> dict:
    """The configured modality, else the DICOM tags' most common one, else a stated guess."""
    if configured:
        value = "photo" if configured.lower() == "photo" else configured.upper()
        return {"value": value, "source": "config", "reason": f"data.modality is {configured!r}"}
    if dicom:
        value, n = dicom.most_common(1)[0]
        counts = ", ".join(f"{k}: {v}" for k, v in dicom.most_common())
        reason = (f"the DICOM Modality tag of {n} images" if len(dicom) == 1
                  else f"the most common DICOM Modality tag ({counts} images)")
        return {"value": value, "source": "dicom", "reason": reason}
    depth = "/".join(sorted(reads.bit_depth))
    if colour:
        return {"value": "photo", "source": "guess",
                "reason": "colour images without DICOM tags: treated as photographs"}
    low = float(np.percentile(whole, 0.5))
    if low <= -900.0:
        return {"value": "CT", "source": "guess", "reason": f"grey images without DICOM tags whose values reach "
                f"{low:.0f} (air in Hounsfield units): treated as CT"}
    if len(reads.shapes[0]) == 3:
        return {"value": "MR", "source": "guess", "reason": "grey volumes without DICOM tags and without "
                "Hounsfield-like values: treated as MR (each image by its own statistics)"}
    return {"value": "XR", "source": "guess", "reason": f"grey {depth} images without DICOM tags: treated as a "
            "radiograph-like grey image"}


def _intensity(modality: str, reads: _Reads, whole: np.ndarray) -> dict:
    """Statistics in the file's own units; CT in HU (files that are not 8-bit pictures) over the body."""
    hu = modality.upper() == "CT" and set(reads.bit_depth) != {"uint8"}
    values = (np.concatenate(reads.body) if hu else whole).astype(np.float64)
    region = f"the body (HU > {BODY_HU:g})" if hu else "every pixel"
    if hu and values.size == 0:
        values, region = whole.astype(np.float64), f"every pixel (no value above {BODY_HU:g} HU)"
    return value_summary(values, unit="HU" if hu else "stored value", region=region)


def _sizes(shapes: list[tuple[int, ...]]) -> dict[str, list[float]]:
    grid = np.asarray(shapes, dtype=np.float64)
    return {
        "median": np.median(grid, axis=0).tolist(),
        "min": grid.min(axis=0).tolist(),
        "max": grid.max(axis=0).tolist(),
        "p10": np.percentile(grid, 10, axis=0).tolist(),
        "p90": np.percentile(grid, 90, axis=0).tolist(),
    }


def _aspect(shapes: list[tuple[int, ...]]) -> dict[str, float]:
    ratios = np.array([shape[-1] / shape[-2] for shape in shapes])
    return {"median": float(np.median(ratios)), "min": float(ratios.min()), "max": float(ratios.max())}


def _spacing(reads: _Reads) -> dict[str, list[float]] | None:
    """The median spacing of the files that state one (DICOM, NIfTI, NRRD); None when only pictures were read."""
    stated = [s for s, fmt in zip(reads.spacings, reads.formats, strict=True) if fmt not in _PICTURE_FORMATS]
    if not stated or len({len(s) for s in stated}) > 1:
        return None
    return {"median": np.median(np.asarray(stated), axis=0).tolist()}


def _duplicates(ds: LabelledSet, reads: _Reads) -> dict[str, int]:
    found = find_duplicates(ds, reads.index, reads.digests, reads.features)
    return {
        "exact_groups": len(found["exact"]),
        "redundant_copies": sum(len(g) - 1 for g in found["exact"]),
        "near_groups": len(found["near"]),
        "cross_split": len(found["cross_split"]),
        "conflicting_labels": len(found["conflicting_labels"]),
    }

