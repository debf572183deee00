"""A segmentation data set read for training: every case decoded once, planned, put on the training
grid and split.

:func:`training_set` does it all and returns a :class:`TrainingSet`: :func:`read_cases` decodes
each case (through the sample cache with ``data.cache``) and applies the bundle's intensity steps
(channels, denoise, CLAHE); :func:`plan_cases` fingerprints those stepped cases and plans them
(``segment.*`` overrides) -- ``medsight plan`` plans through the same function, so the plan a user
sees is the plan trained; :func:`at_target_spacing` resamples the images, label maps and regions of
interest to the plan's spacing and normalises the images; :func:`split_cases` splits the cases with
the one splitter of :mod:`medsight.data.splits` (a validation fraction, or ``data.folds`` folds),
keeping each patient's cases in one part. Bad data stops here, before any training, with an
error that names the case or the setting: a data set of one case, a case without a mask, every
mask empty, a patch of the wrong dimensionality, more folds than cases (or patients).

Example:
    >>> data = training_set(cfg, plan_dir=Path("runs/drive"), progress=False)
    >>> data.plan.patch_size, len(data.train_idx), len(data.val_idx)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from medsight.config import RunConfig
from medsight.data.fingerprint import fingerprint
from medsight.data.seg_layouts import SegItem, SegSet, open_seg_dataset
from medsight.data.splits import kfold_indices, patient_groups, split_indices
from medsight.errors import ConfigError, DatasetError
from medsight.inference.postprocess import require_binary
from medsight.runtime import distributed
from medsight.sample import Sample
from medsight.segmentation.plan import Plan, make_plan, write_plan
from medsight.transforms.preprocess import intensity_steps, plan_normalize


@dataclasses.dataclass
class TrainingSet:
    """The cases on the training grid, their split, and what the plan decided for them."""

    dataset: SegSet
    cases: list[tuple]
    plan: Plan
    patch: list[int]
    batch: int
    target: list[float] | None  # the training grid's spacing; None keeps each case's own
    images: list[np.ndarray]
    labels: list[np.ndarray]
    rois: list[np.ndarray | None]
    train_idx: list[int]
    val_idx: list[int]
    n_classes: int

    def validation(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """``(image, labels, roi)`` of each validation case, on the training grid."""
        return [(self.images[i], self.labels[i], self.rois[i]) for i in self.val_idx]


def training_set(cfg: RunConfig, *, plan_dir: Path | None, progress: bool) -> TrainingSet:
    """Open and read the data set, plan it (written to ``plan_dir/plan.json`` unless None), put it on
    the training grid and split it; patch, batch and label settings that cannot work are errors here,
    before any training."""
    dataset = open_training_set(cfg)
    if len(dataset.items) < 2:
        raise DatasetError(dataset.root, f"has {len(dataset.items)} case(s)", "add cases: training and validation "
                           "need 2+")
    cases, stepped = read_cases(dataset, cfg, progress)
    _, plan = plan_cases(dataset, ((s, case[2]) for s, case in zip(stepped, cases, strict=True)), cfg)
    if plan_dir is not None:
        write_plan(plan, plan_dir / "plan.json")
    patch = [int(p) for p in (cfg.segment.patch_size or plan.patch_size)]
    if len(patch) != cases[0][1].spatial_dims:
        raise ConfigError(
            f"segment.patch_size={patch}", f"the images are {cases[0][1].spatial_dims}D",
            f"give {cases[0][1].spatial_dims} sizes",
        )
    batch = int(cfg.segment.batch_size or plan.batch_size)
    distributed.check_batch(batch, distributed.world_size(), "segment.batch_size")
    target = plan.target_spacing if cfg.segment.resample else None
    images, labels, rois = at_target_spacing(stepped, cases, target, plan.normalization)
    train_idx, val_idx = split_cases(dataset.items, cfg)
    n_classes = max(max(dataset.label_names), int(max(lab.max() for lab in labels))) + 1
    if cfg.segment.centre_logits:
        require_binary(n_classes, "these masks have")  # before training, not after it
    return TrainingSet(dataset, cases, plan, patch, batch, target, images, labels, rois, train_idx, val_idx,
                        n_classes)


def plan_cases(dataset: SegSet, cases: Iterable[tuple[Sample, np.ndarray]], cfg: RunConfig, *,
               spatial_dims: int | None = None) -> tuple[dict, Plan]:
    """``(fingerprint, plan)`` of ``(stepped sample, label map)`` cases: the samples after the bundle's
    intensity steps, as training sees them, planned with ``segment.memory_budget_mb`` and the
    ``segment.plan`` overrides. Training and ``medsight plan`` both plan here, so they agree."""
    fp = fingerprint(cases, modality=dataset.modality)
    plan = make_plan(fp, memory_budget_mb=cfg.segment.memory_budget_mb, spatial_dims=spatial_dims,
                     overrides=cfg.segment.plan or None, label_names=dataset.label_names)
    return fp, plan


def split_cases(items: list[SegItem], cfg: RunConfig) -> tuple[list[int], list[int]]:
    """``(train, val)`` case indices from :mod:`medsight.data.splits` (not stratified), seeded by ``train.seed``.

    The cases of one patient (``SegItem.patient_id``) stay together; a case without one is its own
    patient. ``round(val_fraction * n)`` cases validate (at least 1, at most all but one patient); with
    ``data.folds`` k > 1 the shuffled patients fill k near-equal parts and fold ``data.fold``
    validates on its part (k-fold cross-validation: every case is validated once). With one case
    per patient this is the seeded permutation of the cases, cut in order.

    Raises:
        ConfigError: more folds than cases (patients), or a fold number outside ``0 .. folds - 1``.
    """
    folds, fold = cfg.data.folds, cfg.data.fold or 0
    groups = patient_groups([item.patient_id for item in items])
    n_groups = len(set(groups.tolist()))
    unit = "patients" if n_groups < len(items) else "cases"
    if folds > 1 and folds > n_groups:
        raise ConfigError(f"data.folds={folds}", f"there are only {n_groups} {unit}", f"use at most {n_groups} folds")
    if fold >= folds:
        raise ConfigError(f"data.fold={fold}", f"there are {folds} folds (numbered 0 to {folds - 1})",
                          f"choose a fold below {folds}")
    if folds > 1:
        part = kfold_indices(None, folds=folds, seed=cfg.train.seed, groups=groups)[fold]
    else:  # segmentation validates on at least one case, also with val_fraction 0
        part = split_indices(None, val_fraction=cfg.data.val_fraction or 1 / len(items), test_fraction=0.0,
                             seed=cfg.train.seed, groups=groups)
    return part["train"].tolist(), part["val"].tolist()


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
    cases, stepped = [], []
    for item, sample, labels, roi, steps_sample in stepped_cases(dataset, cfg, progress):
        stepped.append(steps_sample)
        cases.append((item.case_id, sample, labels, roi))
    if not any(labels.any() for _, _, labels, _ in cases):
        raise DatasetError(dataset.root, f"every one of the {len(cases)} masks is empty (no foreground voxel)",
                           "check that the masks hold the labels (PNG masks: 0 and 255 or label values)")
    return cases, stepped


def stepped_cases(dataset: SegSet, cfg: RunConfig, progress: bool,
                  description: str = "reading cases") -> Iterator[tuple[SegItem, Sample, np.ndarray, np.ndarray | None,
                                                                       Sample]]:
    """Decode the cases one at a time (through the sample cache with ``data.cache``):
    ``(item, sample as read, labels, roi, sample after the intensity steps)``."""
    from medsight.data.cache import cache_from_config
    from medsight.progress import track

    cache = cache_from_config(cfg.data)
    for item in track(dataset.items, description=description, enabled=progress):
        if cache is None:
            sample, labels, roi, steps_array = _read_case(dataset, item, cfg)
        else:
            sample, labels, roi, steps_array = _cached_case(cache, dataset, item, cfg)
        yield item, sample, labels, roi, dataclasses.replace(sample, array=steps_array)


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
