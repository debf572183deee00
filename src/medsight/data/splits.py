"""Train / validation / test splits: stratified by label, grouped by patient, reproducible.

One splitter serves every task. Groups (patients, or single items when there are no patient
ids) are shuffled by the seed, and no patient is ever in two parts; the same seed gives the same
arrays. With labels (classification) the split is stratified: the shuffled groups are taken
largest first and each is put in the part that brings the per-class counts closest to their
targets, so the classes keep their proportions in every part. Without labels (``labels=None``,
segmentation cases) the shuffled groups fill the parts one after another (validation first, then
test, then train; fold 0, 1, ... in k-fold), each part taking groups until it holds its share of
the items; every part gets at least one group. With one item per group this is the seeded
permutation cut into consecutive pieces.

Example:
    >>> labels = np.array([0] * 70 + [1] * 30)
    >>> parts = split_indices(labels, val_fraction=0.2, test_fraction=0.1, seed=0)
    >>> [len(parts[k]) for k in ("train", "val", "test")], labels[parts["val"]].mean()
    ([70, 20, 10], 0.3)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medsight.config import DataConfig
from medsight.data.layouts import LabelledSet
from medsight.errors import ConfigError, DatasetError
from medsight.hashing import file_sha256

SPLITS = ("train", "val", "test")


def split_indices(
    labels: np.ndarray | None,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Stratified (and, given ``groups``, grouped) train/val/test index arrays.

    Args:
        labels: one integer label per item; None for an unstratified split (then ``groups``
            gives the items, and a non-zero fraction is at least one item).
        val_fraction, test_fraction: shares of the items for validation and test (0 gives
            an empty split).
        seed: the split is a function of the seed.
        groups: one id per item (e.g. the patient id); items with the same id stay together.

    Returns:
        ``{"train", "val", "test"}`` -> sorted int64 index arrays that cover every item once.

    Raises:
        ConfigError: fractions that leave no training data; without labels, fewer groups than
            the parts asked for.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction={val_fraction}, test_fraction={test_fraction}",
            "the fractions must be >= 0 and leave some data for training",
            "make val_fraction + test_fraction less than 1",
        )
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    if labels is None:
        group_of = _groups_in_order(groups)
        n = len(group_of)
        counts = {k: max(1, round(f * n)) for k, f in ((1, val_fraction), (2, test_fraction)) if f > 0}
        part = _fill_in_order(group_of, [*counts, 0], [*counts.values(), n], seed, "parts (train, val, test)")
        return {name: np.flatnonzero(part == k) for k, name in enumerate(SPLITS)}
    part = _assign(np.asarray(labels), groups, fractions, seed)
    _warn_missing_classes(np.asarray(labels), part, fractions, SPLITS)
    return {name: np.flatnonzero(part == k) for k, name in enumerate(SPLITS)}


def kfold_indices(
    labels: np.ndarray | None, *, folds: int, seed: int, groups: np.ndarray | None = None
) -> list[dict[str, np.ndarray]]:
    """Stratified (and grouped) k-fold: fold ``k`` validates on part ``k`` and trains on the rest.

    Without labels (``None``; ``groups`` gives the items) the folds are not stratified: the
    shuffled groups fill fold 0, 1, ... in turn, each up to ``1/folds`` of the items.

    Returns:
        ``folds`` dicts ``{"train", "val"}`` of sorted index arrays; the val parts are disjoint
        and together cover every item.

    Raises:
        ConfigError: fewer than 2 folds, or more folds than items (or patients).
    """
    n_items = len(_groups_in_order(groups)) if labels is None else len(labels)
    n_groups = n_items if groups is None else len(np.unique(np.asarray(groups)))
    if folds < 2 or folds > n_groups:
        raise ConfigError(
            f"data.folds={folds}",
            f"k-fold needs between 2 and {n_groups} folds for {n_groups} "
            f"{'patients' if groups is not None else 'items'}",
            "choose a number of folds in that range",
        )
    if labels is None:
        sizes = [len(chunk) for chunk in np.array_split(np.arange(n_items), folds)]
        part = _fill_in_order(_groups_in_order(groups), list(range(folds)), sizes, seed, "folds")
    else:
        labels = np.asarray(labels)
        part = _assign(labels, groups, np.full(folds, 1.0 / folds), seed)
        _warn_missing_classes(labels, part, np.full(folds, 1.0 / folds), [f"fold {k}" for k in range(folds)])
    return [{"train": np.flatnonzero(part != k), "val": np.flatnonzero(part == k)} for k in range(folds)]


def resolve_splits(ds: LabelledSet, cfg: DataConfig, *, seed: int = 0) -> dict[str, np.ndarray]:
    """The train/val/test indices into ``ds.items`` for a run.

    The data set's own splits are kept (an npz's train/val, a manifest's split column, a
    ``train/ val/ test/`` folder); only the missing ones are carved out of ``train``, taking
    ``cfg.val_fraction`` / ``cfg.test_fraction`` of it (0 leaves that split empty). Without
    defined splits the whole set is split. With ``cfg.folds > 1`` the result is fold
    ``cfg.fold`` (0 when unset) of a k-fold over everything that is not test. Items are grouped by
    ``patient_id`` where the data set gives one, and byte-identical files always share a
    split, so a copied image can never leak from train into test. The seed defaults to a fixed 0 so that
    evaluation recreates the split a model was trained on.

    Raises:
        ConfigError: ``cfg.fold`` outside ``0 .. folds-1``.
        DatasetError: defined splits without a train split.
    """
    if (cfg.fold or 0) >= cfg.folds:
        raise ConfigError(f"data.fold={cfg.fold}", f"there are only {cfg.folds} folds", f"use 0..{cfg.folds - 1}")
    labels = ds.labels()
    groups = _split_groups(ds)
    defined = ds.defined_splits()
    if defined is None:
        splits = {"train": np.arange(len(ds.items))}
    elif "train" not in defined:
        raise DatasetError(
            ds.root, f"defines the splits {sorted(defined)} but no train split", "add a train split"
        )
    else:
        splits = {name: np.asarray(idx, dtype=np.int64) for name, idx in defined.items()}
    missing = {"val": cfg.val_fraction, "test": cfg.test_fraction}
    missing = {name: f for name, f in missing.items() if name not in splits}
    if cfg.folds > 1:
        missing.pop("val", None)
    if missing:
        train = splits["train"]
        sub = split_indices(
            labels[train],
            val_fraction=missing.get("val", 0.0),
            test_fraction=missing.get("test", 0.0),
            seed=seed,
            groups=None if groups is None else groups[train],
        )
        splits["train"] = train[sub["train"]]
        for name in missing:
            splits[name] = train[sub[name]]
    test = splits.get("test", np.array([], dtype=np.int64))
    if cfg.folds > 1:
        rest = np.sort(np.concatenate([splits["train"], splits.get("val", np.array([], dtype=np.int64))]))
        fold = kfold_indices(
            labels[rest], folds=cfg.folds, seed=seed, groups=None if groups is None else groups[rest]
        )[cfg.fold or 0]
        return {"train": rest[fold["train"]], "val": rest[fold["val"]], "test": test}
    return {name: np.sort(splits.get(name, np.array([], dtype=np.int64))) for name in SPLITS}


def _split_groups(ds: LabelledSet) -> np.ndarray | None:
    """Group ids that must stay in one split: the patient, merged across exact file copies.

    An item without a patient id is its own group. None when there is nothing to group.
    """
    groups = patient_groups([it.patient_id for it in ds.items]).tolist()
    merged = _merge_exact_copies(ds, groups)
    if merged == [f"item:{i}" for i in range(len(ds.items))]:
        return None
    return np.array(merged)


def patient_groups(patient_ids: Sequence[str | None]) -> np.ndarray:
    """The group id of each item for the splitter: ``patient:<id>``, or ``item:<i>`` (its own group)
    for an item without a patient id.

    Example:
        >>> patient_groups(["p1", None, "p1"]).tolist()
        ['patient:p1', 'item:1', 'patient:p1']
    """
    return np.array([f"patient:{pid}" if pid is not None else f"item:{i}" for i, pid in enumerate(patient_ids)])


def _merge_exact_copies(ds: LabelledSet, groups: list[str]) -> list[str]:
    """Join the groups of files with identical bytes (union-find), so copies share a split."""
    parent: dict[str, str] = {g: g for g in groups}

    def root(group: str) -> str:
        while parent[group] != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    first_by_digest: dict[str, str] = {}
    for i, item in enumerate(ds.items):
        path = Path(item.source)
        if item.index is not None or not path.is_file():
            continue
        digest = file_sha256(path)
        a, b = root(first_by_digest.setdefault(digest, groups[i])), root(groups[i])
        if a != b:
            parent[b] = a
    return [root(g) for g in groups]


def _assign(labels: np.ndarray, groups: np.ndarray | None, fractions: np.ndarray, seed: int) -> np.ndarray:
    """Put each group in one part so that every class is shared out by ``fractions``.

    Returns:
        The part number of every item.
    """
    classes, y = np.unique(labels, return_inverse=True)
    if groups is None:
        group_of = np.arange(len(labels))
    else:
        _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group_of.max()) + 1 if len(labels) else 0
    counts = np.zeros((n_groups, len(classes)))
    np.add.at(counts, (group_of, y), 1)
    order = np.random.default_rng(seed).permutation(n_groups)
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    target = fractions[:, None] * counts.sum(axis=0)[None, :]
    have = np.zeros_like(target)
    allowed = fractions > 0
    part_of_group = np.empty(n_groups, dtype=np.int64)
    for g in order:
        # Change in the squared distance to the targets if group g joins each part.
        cost = (2 * (have - target) * counts[g] + counts[g] ** 2).sum(axis=1)
        cost[~allowed] = np.inf
        best = int(np.argmin(cost))
        part_of_group[g] = best
        have[best] += counts[g]
    return part_of_group[group_of]


def _groups_in_order(groups: np.ndarray | None) -> np.ndarray:
    """The group number of each item, numbered in order of first appearance (one item per group:
    the item's own index), so that the seeded shuffle of the groups does not depend on their names."""
    if groups is None:
        raise ValueError("an unstratified split (labels=None) needs groups: one id per item")
    _, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _fill_in_order(group_of: np.ndarray, parts: list[int], sizes: list[int], seed: int, what: str) -> np.ndarray:
    """Shuffle the groups by the seed and let them fill ``parts`` one after another.

    Part ``parts[j]`` takes the next groups until it holds ``sizes[j]`` items (the last part takes
    the rest); it also stops when the groups left are only enough to give every later part one.

    Returns:
        The part number of every item.

    Raises:
        ConfigError: fewer groups than parts.
    """
    n_groups = int(group_of.max()) + 1 if len(group_of) else 0
    if n_groups < len(parts):
        unit = "patients" if n_groups < len(group_of) else "items"
        raise ConfigError(
            f"{len(parts)} {what}", f"there are only {n_groups} {unit} to share out",
            "add data (from other patients) or ask for fewer parts",
        )
    group_sizes = np.bincount(group_of, minlength=n_groups)
    part_of_group = np.empty(n_groups, dtype=np.int64)
    j, have = 0, 0
    for taken, group in enumerate(np.random.default_rng(seed).permutation(n_groups)):
        if j < len(parts) - 1 and have and (have >= sizes[j] or n_groups - taken <= len(parts) - 1 - j):
            j, have = j + 1, 0
        part_of_group[group] = parts[j]
        have += int(group_sizes[group])
    return part_of_group[group_of]


def _warn_missing_classes(labels: np.ndarray, part: np.ndarray, fractions: np.ndarray, names) -> None:
    """Warn when a class has too few members (or patients) to appear in every requested part."""
    for k, name in enumerate(names):
        if fractions[k] <= 0:
            continue
        absent = sorted(set(labels.tolist()) - set(labels[part == k].tolist()))
        if absent:
            warnings.warn(
                f"{name} has no item of class(es) {absent}: too few members to share out; "
                "its metrics for those classes are undefined (add data or lower the number of splits)",
                stacklevel=3,
            )
