"""Splits: stratified, grouped by patient, reproducible, disjoint and covering; and resolve_splits."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from medsight.config import DataConfig
from medsight.data.layouts import Item, LabelledSet
from medsight.data.splits import kfold_indices, resolve_splits, split_indices
from medsight.errors import ConfigError, DatasetError

LABELS = np.array([0] * 140 + [1] * 60)


def _covers_once(parts, n):
    joined = np.concatenate(list(parts))
    assert len(joined) == n and len(np.unique(joined)) == n


def test_stratified_proportions_sizes_and_coverage():
    parts = split_indices(LABELS, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [140, 40, 20]
    for idx in parts.values():
        assert LABELS[idx].mean() == pytest.approx(0.3)
    _covers_once(parts.values(), len(LABELS))


def test_same_seed_same_arrays_other_seed_differs():
    a = split_indices(LABELS, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = split_indices(LABELS, val_fraction=0.2, test_fraction=0.1, seed=3)
    c = split_indices(LABELS, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["val"], c["val"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_split_keeps_each_patient_in_one_split(seed):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 60, len(LABELS))  # about 3 images per patient
    parts = split_indices(LABELS, val_fraction=0.2, test_fraction=0.2, seed=seed, groups=groups)
    patients = [set(groups[idx]) for idx in parts.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    _covers_once(parts.values(), len(LABELS))
    assert len(parts["val"]) == pytest.approx(40, abs=8)
    assert LABELS[parts["val"]].mean() == pytest.approx(0.3, abs=0.1)


def test_kfold_val_parts_partition_the_data_and_are_stratified():
    folds = kfold_indices(LABELS, folds=5, seed=0)
    assert len(folds) == 5
    _covers_once([f["val"] for f in folds], len(LABELS))
    for fold in folds:
        assert len(fold["val"]) == 40 and LABELS[fold["val"]].mean() == pytest.approx(0.3)
        assert not set(fold["train"]) & set(fold["val"])


def test_kfold_grouped_and_too_many_folds():
    groups = np.arange(len(LABELS)) // 4
    for fold in kfold_indices(LABELS, folds=4, seed=0, groups=groups):
        assert not set(groups[fold["train"]]) & set(groups[fold["val"]])
    with pytest.raises(ConfigError, match="lower|choose"):
        kfold_indices(np.array([0, 1, 0]), folds=5, seed=0)


def test_tiny_class_warns_instead_of_crashing():
    labels = np.array([0] * 30 + [1])
    with pytest.warns(UserWarning, match=r"class\(es\) \[1\]"):
        parts = split_indices(labels, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert 30 in parts["train"]
    _covers_once(parts.values(), len(labels))


def test_zero_fraction_gives_an_empty_split_and_bad_fractions_fail():
    parts = split_indices(LABELS, val_fraction=0.25, test_fraction=0.0, seed=0)
    assert len(parts["test"]) == 0 and len(parts["val"]) == 50
    with pytest.raises(ConfigError, match="less than 1"):
        split_indices(LABELS, val_fraction=0.6, test_fraction=0.5, seed=0)


def _set(splits=None, patients=None, n=100):
    labels = np.arange(n) % 4 == 0
    items = [
        Item(f"{i}.png", int(labels[i]), patient_id=None if patients is None else patients[i],
             split=None if splits is None else splits[i])
        for i in range(n)
    ]
    return LabelledSet("csv", Path("m.csv"), ["a", "b"], items)


def test_resolve_without_defined_splits_splits_everything():
    out = resolve_splits(_set(), DataConfig(val_fraction=0.2, test_fraction=0.2))
    assert [len(out[k]) for k in ("train", "val", "test")] == [60, 20, 20]


def test_resolve_keeps_defined_splits_and_carves_only_test_from_train():
    splits = ["train"] * 80 + ["val"] * 20
    out = resolve_splits(_set(splits), DataConfig(test_fraction=0.25))
    assert np.array_equal(out["val"], np.arange(80, 100))
    assert len(out["test"]) == 20 and set(out["test"]) <= set(range(80))
    assert len(out["train"]) == 60
    none = resolve_splits(_set(splits), DataConfig(test_fraction=0.0))
    assert len(none["test"]) == 0 and len(none["train"]) == 80


def test_resolve_groups_by_patient_and_kfold_over_non_test():
    patients = [f"p{i // 2}" for i in range(100)]
    ds = _set(patients=patients)
    cfg = DataConfig(val_fraction=0.2, test_fraction=0.2)
    out = resolve_splits(ds, cfg)
    sets = {k: {patients[i] for i in v} for k, v in out.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    folds = [resolve_splits(ds, DataConfig(test_fraction=0.2, folds=4, fold=k)) for k in range(4)]
    assert all(np.array_equal(f["test"], folds[0]["test"]) for f in folds)
    vals = np.concatenate([f["val"] for f in folds])
    assert sorted(vals.tolist()) == sorted(set(range(100)) - set(folds[0]["test"].tolist()))
    with pytest.raises(ConfigError, match="only 4 folds"):
        resolve_splits(ds, DataConfig(folds=4, fold=4))
    with pytest.raises(ConfigError, match=r"data.fold=1: there are only 1 folds"):  # a fold without --folds
        resolve_splits(ds, DataConfig(fold=1))


def test_resolve_refuses_splits_without_train():
    with pytest.raises(DatasetError, match="no train split"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resolve_splits(_set(["val"] * 50 + ["test"] * 50), DataConfig())


def test_exact_copies_never_straddle_splits(tmp_path) -> None:
    """A file copied under another name (as in the brain MRI set) stays in one split with its twin."""
    from PIL import Image

    from medsight.config import DataConfig
    from medsight.data.layouts import open_dataset
    from medsight.data.splits import resolve_splits

    rng = np.random.default_rng(0)
    for cls in ("no", "yes"):
        (tmp_path / cls).mkdir()
        for i in range(30):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
        for i in range(10):  # ten copies per class under new names
            (tmp_path / cls / f"copy{i}.png").write_bytes((tmp_path / cls / f"{i}.png").read_bytes())
    ds = open_dataset(tmp_path)
    for seed_split in range(5):
        cfg = DataConfig(val_fraction=0.3, test_fraction=0.3)
        splits = resolve_splits(ds, cfg, seed=seed_split)
        where = {ds.items[i].source: name for name, idx in splits.items() for i in idx}
        for cls in ("no", "yes"):
            for i in range(10):
                assert where[str(tmp_path / cls / f"{i}.png")] == where[str(tmp_path / cls / f"copy{i}.png")]
        assert sum(len(v) for v in splits.values()) == 80
