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
