"""The fingerprint of a detection data set: what the detection plan (:mod:`medsight.detection.plan`) is
derived from.

:func:`fingerprint_detection` takes the images of every split but an official test split (a seeded subset of
``max_images`` when there are more; their sizes from the headers the reader checked, the pixels of
``COLOUR_IMAGES`` of them decoded for channels, colour, intensities and DICOM tags) and summarises them with their
ground-truth boxes: images per split; image sizes; channels and colour; the intensity percentiles in the files' own
units and the DICOM Modality and BodyPartExamined (the bundle's domain record); boxes per image and the negatives
(images without a box); each class's box sizes per axis in pixels and as a share of their image's extent along
that axis (the share is what a box keeps when the image is fitted into the network's input); and what the reader
dropped or could not read (:attr:`~medsight.data.det_layouts.DetectionSet.dropped`, ``problems``). A file that
cannot be read is listed under ``unreadable`` with its reason, and the rest go on.

Example:
    >>> fp = fingerprint_detection(open_detection_set("data/fractures"), progress=False)
    >>> fp["n_images"]["train"], fp["boxes"]["all"]["median_px"]
    (574, [31.0, 29.0])
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from medsight.data.file_errors import one_line
from medsight.data.pixel_values import draw_values, is_colour, value_summary
from medsight.errors import DatasetError, MedsightError
from medsight.progress import track

SEED = 1234
FINGERPRINT = "fingerprint.json"
#: images read at most (a seeded subset beyond this): sizes and box shares are summarised from them
MAX_IMAGES = 1000
#: images decoded for the channels and colour (the sizes come from the headers the reader checked)
COLOUR_IMAGES = 64
#: quantiles kept of each axis of the box sizes (the plan's anchors and smallest boxes are read from them)
QUANTILES = tuple(round(q, 2) for q in np.linspace(0.0, 1.0, 21))


def fingerprint_detection(dataset, *, max_images: int = MAX_IMAGES, progress: bool = True) -> dict:
    """Summarise a :class:`~medsight.data.det_layouts.DetectionSet` for the plan (see the module).

    Raises:
        DatasetError: no image outside an official test split, no box in any of them, or no image readable.
    """
    cases = [case for case in dataset.cases if case.split != "test"]
    if not cases:
        raise DatasetError(dataset.root, "has no images outside its test split", "add training images")
    if not any(len(case.boxes) for case in cases):
        raise DatasetError(dataset.root, f"has no boxes in any of its {len(cases)} training images (every image "
                           "is a negative), so there is nothing to learn to detect",
                           "check the annotations (layout, label names, box columns) with medsight data inspect")
    chosen = _subset(cases, max_images)
    colour_cases = {id(case) for case in _subset(chosen, COLOUR_IMAGES)}
    shapes, channels, colour, shares, unreadable = [], Counter(), [], [], []
    values, tags = [], {"modality": Counter(), "BodyPartExamined": Counter()}
    for k, case in enumerate(track(chosen, description="fingerprinting", enabled=progress)):
        shape = tuple(case.shape)
        if not shape or id(case) in colour_cases:  # the header gave the size; pixels only for the colour
            try:
                sample = dataset.read(case)
            except MedsightError as err:
                unreadable.append({"path": str(case.path), "reason": one_line(err)})
                continue
            array = sample.array
            shape = array.shape[1:]
            channels[str(array.shape[0])] += 1
            colour.append(is_colour(array))
            values.append(draw_values(np.asarray(array).reshape(-1), np.random.default_rng([SEED, k])))
            for key, counts in tags.items():
                if str(sample.meta.get(key) or "").strip():
                    counts[str(sample.meta[key]).strip().upper()] += 1
        shapes.append(shape)
        if len(case.boxes):
            shares.append((case.boxes.labels, case.boxes.extents() / np.asarray(shape, dtype=float)))
    if not shapes:
        raise DatasetError(dataset.root, f"none of the {len(chosen)} images could be read "
                           f"(first: {unreadable[0]['reason']})", "check the image files")
    sizes = np.asarray(shapes, dtype=float)
    return {
        "layout": dataset.layout, "spatial_dims": int(dataset.spatial_dims), "class_names": list(dataset.class_names),
        "n_images": _split_counts(dataset.cases), "n_read": len(shapes), "n_considered": len(cases),
        "sizes": {"median": np.median(sizes, axis=0).tolist(), "min": sizes.min(axis=0).tolist(),
                  "max": sizes.max(axis=0).tolist(),
                  "counts": dict(Counter("x".join(str(int(v)) for v in s) for s in shapes).most_common(10))},
        "channels": dict(channels), "colour": bool(colour) and bool(np.mean(colour) > 0.5),
        "n_pixels_read": len(colour),
        "intensity": value_summary(np.concatenate(values), region="every pixel",
                                   unit="HU" if set(tags["modality"]) == {"CT"} else "stored value")
        if values else None,
        "dicom_modalities": dict(tags["modality"].most_common()),
        "body_parts": dict(tags["BodyPartExamined"].most_common()),
        "boxes_per_image": _per_image(cases),
        "negatives": sum(1 for case in cases if not len(case.boxes)),
        "boxes": _box_sizes(cases, shares, dataset.class_names),
        "dropped": dict(dataset.dropped), "problems": len(dataset.problems),
        "problem_examples": list(dataset.problems[:5]), "unreadable": unreadable,
    }


def write_fingerprint(fingerprint: dict, out: Path) -> None:
    """``out/fingerprint.json``, whole or not at all."""
    from medsight.atomic_write import atomic_write_text

    atomic_write_text(Path(out) / FINGERPRINT, json.dumps(fingerprint, indent=2) + "\n")


def run_fingerprint(dataset, out: Path, *, progress: bool = True) -> dict:
    """The run's ``out/fingerprint.json`` (the plan wrote it), else the data's fingerprint, written there now."""
    path = Path(out) / FINGERPRINT
    if path.is_file():
        return json.loads(path.read_text())
    fingerprint = fingerprint_detection(dataset, progress=progress)
    write_fingerprint(fingerprint, out)
    return fingerprint


def _subset(cases: list, limit: int) -> list:
    """``cases``, or a seeded subset of ``limit`` of them in their order."""
    if len(cases) <= limit:
        return cases
    keep = np.sort(np.random.default_rng(SEED).permutation(len(cases))[:limit])
    return [cases[i] for i in keep]


def _split_counts(cases) -> dict[str, int]:
    counts = Counter(case.split or "unassigned" for case in cases)
    return {name: counts.get(name, 0) for name in ("train", "val", "test", "unassigned")}


def _per_image(cases) -> dict:
    counts = np.array([len(case.boxes) for case in cases])
    return {"mean": float(counts.mean()), "median": float(np.median(counts)), "max": int(counts.max()),
            "histogram": {str(k): int(v) for k, v in sorted(Counter(counts.tolist()).items())}}


def _box_sizes(cases, shares: list[tuple[np.ndarray, np.ndarray]], class_names: list[str]) -> dict:
    """Per class and for all boxes: pixel extents per axis (every box) and shares of the image (boxes of the
    images read), as counts, medians and quantiles."""
    labels = np.concatenate([case.boxes.labels for case in cases if len(case.boxes)])
    extents = np.concatenate([case.boxes.extents() for case in cases if len(case.boxes)])
    share_labels = np.concatenate([s[0] for s in shares]) if shares else np.zeros(0, np.int64)
    share_values = np.concatenate([s[1] for s in shares]) if shares else np.zeros((0, extents.shape[1]))
    out = {"all": _summary(extents, share_values)}
    for k, name in enumerate(class_names):
        if np.any(labels == k):
            out[name] = _summary(extents[labels == k], share_values[share_labels == k])
    return out


def _summary(extents: np.ndarray, shares: np.ndarray) -> dict:
    """``n``, per-axis median and quantiles in pixels and as shares of the image (``QUANTILES``)."""
    summary = {"n": int(len(extents)), "median_px": np.median(extents, axis=0).tolist(),
               "min_px": extents.min(axis=0).tolist(), "max_px": extents.max(axis=0).tolist(),
               "quantiles": list(QUANTILES),
               "quantiles_px": np.quantile(extents, QUANTILES, axis=0).T.tolist()}
    if len(shares):
        summary["n_share"] = int(len(shares))
        summary["quantiles_share"] = np.quantile(shares, QUANTILES, axis=0).T.tolist()
        summary["smallest_side_share"] = np.quantile(shares.min(axis=1), QUANTILES).tolist()
    return summary
