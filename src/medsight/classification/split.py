"""The cases of a classification bundle's split: the data set read with the bundle's data settings and classes.

Evaluation, export parity, explanations, robustness, the promotion gate, retraining and triage all pick
their cases here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsight.config import DataConfig
from medsight.errors import DatasetError


def bundle_split(model_bundle, data: str | Path, split: str):
    """A classification data set read with the bundle's data settings and classes: ``(ds, data_cfg, indices)``.

    ``split`` is ``train``, ``val``, ``test`` (rebuilt from the seed stored in the bundle) or ``all``.
    Evaluation, export parity, explanations and robustness all pick their cases here.

    Raises:
        DatasetError: the data's classes differ from the model's, or it has no such split.
    """
    from medsight.data.layouts import open_dataset

    data_cfg = model_bundle.data.split_config(data)
    ds = open_dataset(data, series_uid=data_cfg.series_uid, class_names=model_bundle.label_names)
    if ds.class_names != model_bundle.label_names:
        raise DatasetError(
            data,
            f"its classes {ds.class_names} differ from the model's {model_bundle.label_names}",
            "use data with the same classes the model was trained on",
        )
    indices = np.arange(len(ds.items)) if split == "all" else _split_indices(ds, data_cfg, split)
    return ds, data_cfg, indices


def _resolve(ds, data_cfg: DataConfig) -> dict[str, np.ndarray]:
    from medsight.data.splits import resolve_splits

    return resolve_splits(ds, data_cfg)


def _split_indices(ds, data_cfg: DataConfig, split: str) -> np.ndarray:
    splits = _resolve(ds, data_cfg)
    if split not in splits or not len(splits[split]):
        available = [k for k, v in splits.items() if len(v)]
        raise DatasetError(ds.root, f"has no '{split}' split", f"use --split with one of {available + ['all']}")
    return splits[split]


def check_classes(ds, *, folds: int) -> None:
    """Refuse, before anything is trained or written, a data set a classifier cannot learn from.

    Every class needs an image, at least two classes are needed, and with ``folds`` > 1 every class
    needs at least ``folds`` patients (images, where no patient ids are given) outside an official test
    split, so that each fold's validation split holds one of each.

    Raises:
        DatasetError: naming the class and the count, and what to do.
    """
    counts = {name: set() for name in ds.class_names}
    for item in ds.items:
        if item.label is not None and item.split != "test":
            counts[ds.class_names[item.label]].add(item.patient_id or item.source + f"#{item.index}")
    if len(counts) < 2:
        raise DatasetError(ds.root, f"has one class ({', '.join(map(repr, counts)) or 'none'})",
                           "a classifier needs at least two: add a folder (or manifest label) per class")
    empty = [name for name, members in counts.items() if not members]
    if empty:
        raise DatasetError(ds.root, f"class(es) {empty} have no image to train on",
                           "add images of every class, or leave the empty class out of data.class_names")
    short = {name: len(members) for name, members in counts.items() if len(members) < folds}
    if folds > 1 and short:
        what = ", ".join(f"'{name}' has {n}" for name, n in short.items())
        unit = "patients" if any(item.patient_id for item in ds.items) else "images"
        raise DatasetError(ds.root, f"{what} {unit}, fewer than the {folds} folds: some fold would validate "
                                    "without that class",
                           f"use --folds {min(short.values())} or fewer (at least 2), or add {unit} of that class")
