"""A segmentation data set read for training: every case decoded once, then put on the training grid.

:func:`read_cases` decodes each case (through the sample cache with ``data.cache``) and applies the
bundle's intensity steps (channels, denoise, CLAHE); :func:`at_target_spacing` resamples the
images, label maps and regions of interest to the plan's spacing and normalises the images.
Bad data stops here with an error that names the case: a data set of one case, a case without a
mask, every mask empty.

Example:
    >>> dataset = open_training_set(cfg)
    >>> cases, stepped = read_cases(dataset, cfg, progress=False)
    >>> images, labels, rois = at_target_spacing(stepped, cases, plan["target_spacing"], plan["normalization"])
"""

from __future__ import annotations

import dataclasses

import numpy as np

from medsight.config import RunConfig
from medsight.data.sample import Sample
from medsight.data.seg_layouts import SegSet, open_seg_dataset
from medsight.errors import DatasetError
from medsight.transforms.preprocess import intensity_steps, plan_normalize


def open_training_set(cfg: RunConfig) -> SegSet:
    """The data set at ``data.path``, with ``data.class_names`` as its label names when given."""
    names = dict(enumerate(cfg.data.class_names)) if cfg.data.class_names else None
    return open_seg_dataset(cfg.data.path, label_names=names)


def read_cases(dataset: SegSet, cfg: RunConfig, progress: bool) -> tuple[list[tuple], list[Sample]]:
    """Decode every case once: ``(cases, stepped)``.

    ``cases`` hold the decoded samples as read (the final evaluation replays the bundle's
    preprocessing on them, as ``medsight evaluate`` does); ``stepped`` the same samples after
    the bundle's intensity steps (channels, denoise, CLAHE), which training normalises and uses.
    """
    from medsight.progress import track

    if len(dataset.items) < 2:
        raise DatasetError(dataset.root, f"has {len(dataset.items)} case(s)", "add cases: training and validation "
                           "need 2+")
    from medsight.data.cache import cache_from_config

    cache = cache_from_config(cfg.data)
    cases, stepped = [], []
    for item in track(dataset.items, description="reading cases", enabled=progress):
        if cache is None:
            sample, labels, roi, steps_array = _read_case(dataset, item, cfg)
        else:
            sample, labels, roi, steps_array = _cached_case(cache, dataset, item, cfg)
        stepped.append(dataclasses.replace(sample, array=steps_array))
        cases.append((item.case_id, sample, labels, roi))
    if not any(labels.any() for _, _, labels, _ in cases):
        raise DatasetError(dataset.root, f"every one of the {len(cases)} masks is empty (no foreground voxel)",
                           "check that the masks hold the labels (PNG masks: 0 and 255 or label values)")
    return cases, stepped


def _read_case(dataset: SegSet, item, cfg: RunConfig) -> tuple[Sample, np.ndarray, np.ndarray | None, np.ndarray]:
    """One case decoded: ``(sample, labels, roi, the sample's array after the intensity steps)``."""
    sample, labels, roi = dataset.read(item)
    if labels is None:
        raise DatasetError(item.case_id, "has no mask", "add its mask or remove the image")
    return sample, labels, roi, intensity_steps(sample, _steps_config(cfg, sample.spatial_dims))


def _cached_case(cache, dataset: SegSet, item, cfg: RunConfig):
    """:func:`_read_case` through a :class:`~medsight.data.cache.SampleCache` (``data.cache``)."""
    sources = [path for path in (item.image, item.mask, item.roi) if path is not None]
    part = f"{dataset.kind}:{item.case_id}:mask={item.mask is not None}:roi={item.roi is not None}"
    config = {"preprocess": cfg.preprocess.model_dump(mode="json"), "patch": cfg.segment.patch_size,
              "labels": dataset.label_names}

    def build():
        sample, labels, roi, steps_array = _read_case(dataset, item, cfg)
        arrays = {"image": sample.array, "labels": labels, "stepped": steps_array}
        if roi is not None:
            arrays["roi"] = roi
        meta = {"spacing": list(sample.spacing), "affine": np.asarray(sample.affine).tolist(), "meta": sample.meta}
        return arrays, meta

    entry = cache.get_or_build(cache.key(sources, config, kind="seg-case", part=part), build)
    sample = Sample(entry.arrays["image"], tuple(entry.meta["spacing"]), np.asarray(entry.meta["affine"]),
                    dict(entry.meta["meta"]))
    return sample, entry.arrays["labels"], entry.arrays.get("roi"), entry.arrays["stepped"]


def at_target_spacing(stepped: list[Sample], cases: list[tuple], target, normalization: dict):
    """Normalised images, label maps and ROIs on the training grid (the target spacing, if any)."""
    from medsight.transforms.preprocess import resize, spacing_shape

    images, labels, rois = [], [], []
    for sample, (_, _, label, roi) in zip(stepped, cases, strict=True):
        shape = spacing_shape(sample.spatial_shape, sample.spacing, target)
        images.append(plan_normalize(resize(sample.array, shape), normalization))
        labels.append(resize(label[None], shape, nearest=True)[0])
        rois.append(None if roi is None else resize(roi[None].astype(np.uint8), shape, nearest=True)[0] > 0)
    return images, labels, rois


def _steps_config(cfg: RunConfig, spatial_dims: int):
    """``cfg.preprocess`` with a size of the data's dimensionality (only the intensity steps are used)."""
    size = cfg.segment.patch_size or [64] * spatial_dims
    return cfg.preprocess.model_copy(update={"size": list(size)})
