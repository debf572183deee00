"""The domain record a classification run ships in its bundle (issue 33: the bundle knows its domain).

:func:`training_fingerprint` is the data's fingerprint (``RUN/fingerprint.json``: the one the plan wrote, or
read now for a run that was not planned). :func:`single_run_domain` and :func:`ensemble_domain` build the
bundle's :class:`~medsight.bundle_fields.DomainRecord` with
:func:`medsight.inference.domain.domain_record`: the fingerprint's modalities, channels, sizes and
intensities, and a feature reference calibrated on cases the network never trained on: the validation split
of a single run; for a fold ensemble, member 0 alone (fold 0's first member, seed ``train.seed``, also when each
fold has several seeded members), with its fold's training images as the reference and its fold's validation
cases (out of fold for that member) as calibration.

Example:
    >>> fingerprint = training_fingerprint(cfg, ds, Path("runs/chest"), progress=False)
    >>> bundle.domain = single_run_domain(bundle, cfg, tensors, fingerprint)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medsight.bundle import Bundle
from medsight.bundle_fields import DomainRecord
from medsight.config import RunConfig

FINGERPRINT = "fingerprint.json"
#: the most images of a fold read back for the ensemble's feature reference, and for its calibration
MAX_DOMAIN_IMAGES = 2000


def training_fingerprint(cfg: RunConfig, ds, out: Path, *, progress: bool) -> dict:
    """``out/fingerprint.json`` when the plan (or an earlier start of this run) wrote it; else the data is
    fingerprinted now and the file written."""
    from medsight.atomic_write import atomic_write_text
    from medsight.classification.fingerprint import fingerprint_images

    path = Path(out) / FINGERPRINT
    if path.is_file():
        return json.loads(path.read_text())
    fingerprint = fingerprint_images(ds, modality=cfg.data.modality, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(fingerprint, indent=2) + "\n")
    return fingerprint


def single_run_domain(bundle: Bundle, cfg: RunConfig, tensors: dict, fingerprint: dict | None) -> DomainRecord:
    """The record of one run's bundle: its training images as the reference, its validation split as calibration."""
    from medsight.inference.domain import domain_record

    return domain_record(bundle.build_model(), tensors["train"].images, tensors["val"].images, fingerprint,
                         action=cfg.predict.out_of_domain, seed=cfg.train.seed)


def ensemble_domain(bundle: Bundle, fold0: RunConfig, ds, fingerprint: dict | None, *,
                    progress: bool) -> DomainRecord:
    """The fold ensemble's record, from member 0 (fold 0's model; with several members per fold, fold 0's first,
    trained with ``fold0.train.seed``): its training images (a seeded subsample of at
    most :data:`MAX_DOMAIN_IMAGES`) as the reference and its validation cases as calibration, read again with the
    bundle's preprocessing."""
    from medsight.classification.prepare import load_tensors
    from medsight.data.splits import resolve_splits
    from medsight.inference.domain import domain_record

    rng = np.random.default_rng(fold0.train.seed)
    parts = resolve_splits(ds, fold0.data)
    images = {}
    for name in ("train", "val"):
        indices = np.sort(rng.permutation(parts[name])[:MAX_DOMAIN_IMAGES])
        images[name], _ = load_tensors(ds, indices, bundle.preprocess, on_bad_file="skip", progress=progress,
                                       desc=f"domain ({name} of fold 0)")
    return domain_record(bundle.build_model(), images["train"].images, images["val"].images, fingerprint,
                         action=fold0.predict.out_of_domain, seed=fold0.train.seed, member=0)
