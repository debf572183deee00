"""Parts of ``bench/classification.py``: the plain MONAI ResNet-18 reference, the out-of-fold estimate
both arms are scored with, and the small subsets of ``--quick``.

The reference trains on exactly the folds medsight's cross-validation used: the run's saved ``data``
settings (folds, test_fraction) through :func:`medsight.data.splits.resolve_splits` (stratified
:func:`~medsight.data.splits.kfold_indices`, the fixed split seed 0, patients and byte-identical files
kept in one fold, a held-out test split left out), so the two out-of-fold estimates score the same
cases, each predicted by the one fold model that never trained on it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from medsight.classification.metrics import bootstrap_cis, choose_threshold, classification_metrics
from medsight.classification.prepare import load_tensors
from medsight.config import DataConfig, PreprocessConfig
from medsight.data.layouts import LabelledSet, open_dataset
from medsight.data.splits import resolve_splits


def cv_folds(ds: LabelledSet, split: dict) -> list[dict[str, np.ndarray]]:
    """The ``{"train", "val", "test"}`` item indices of each fold, as ``medsight train`` splits ``ds`` under
    the ``data`` settings ``split`` (``folds`` > 1, ``test_fraction``, ...)."""
    return [resolve_splits(ds, DataConfig(**{**split, "fold": k})) for k in range(split["folds"])]


def oof_estimate(y: np.ndarray, probs: np.ndarray, *, n_boot: int = 1000) -> dict:
    """Accuracy and AUC of pooled out-of-fold probabilities with percentile-bootstrap 95% CIs.

    Binary: the threshold is Youden's J on these same out-of-fold probabilities (so ACC is slightly
    optimistic, as medsight's out-of-fold threshold is); multi-class: the argmax.
    """
    threshold = choose_threshold(y, probs) if probs.shape[1] == 2 else None
    point = classification_metrics(y, probs, threshold)
    cis = bootstrap_cis(y, probs, threshold=threshold, n_boot=n_boot)
    return {
        "n": int(len(y)),
        "accuracy": point["accuracy"], "accuracy_ci": list(cis["accuracy"]),
        "auc": point["auc"], "auc_ci": list(cis["auc"]),
        "threshold": threshold,
        "threshold_note": "Youden's J on the pooled out-of-fold probabilities" if threshold is not None else "argmax",
    }


def reference_cv(data: Path, *, split: dict, size: list[int], channels: int, epochs: int,
                 batch_size: int = 128, lr: float = 1e-3) -> dict:
    """Out-of-fold estimate of a plain MONAI ResNet-18 + PyTorch loop over the folds of ``data`` that the
    ``data`` settings ``split`` make (:func:`cv_folds`; a held-out test split is left out, as medsight does).

    Each image is read by medsight's reader, resized to ``size`` (squashed, as the old default did) and
    min-max scaled to [0, 1] per image; each fold trains a fresh ``resnet18(spatial_dims=2)`` with Adam
    (``lr``, batch ``batch_size``, cross-entropy, no augmentation, no validation, no early stopping) for
    ``epochs`` epochs and predicts its held-out fold with the last weights.

    Returns:
        :func:`oof_estimate` plus ``wall_seconds`` (reading included), the settings used and the
        ``case_ids`` scored.
    """
    start = time.perf_counter()
    ds = open_dataset(data)
    parts = cv_folds(ds, split)
    pool = np.sort(np.concatenate([part["val"] for part in parts]))
    prep = PreprocessConfig(size=list(size), channels=channels, normalize="minmax")
    tensors, _ = load_tensors(ds, pool, prep, progress=False, desc="reference")
    row = {int(item): i for i, item in enumerate(pool)}
    probs = np.zeros((len(pool), len(ds.class_names)))
    for k, part in enumerate(parts):
        train = torch.as_tensor([row[int(i)] for i in part["train"]])
        val = torch.as_tensor([row[int(i)] for i in part["val"]])
        net = _train_resnet18(tensors.images[train], tensors.labels[train], classes=len(ds.class_names),
                              epochs=epochs, batch_size=batch_size, lr=lr, seed=k)
        probs[val.numpy()] = _probabilities(net, tensors.images[val])
    estimate = oof_estimate(tensors.labels.numpy(), probs)
    return {**estimate, "wall_seconds": round(time.perf_counter() - start, 1), "split": split, "size": list(size),
            "channels": channels, "epochs": epochs, "batch_size": batch_size, "lr": lr, "case_ids": tensors.ids}


def _train_resnet18(x: torch.Tensor, y: torch.Tensor, *, classes: int, epochs: int, batch_size: int, lr: float,
                    seed: int) -> torch.nn.Module:
    from monai.networks.nets import resnet18

    torch.manual_seed(seed)
    net = resnet18(spatial_dims=2, n_input_channels=x.shape[1], num_classes=classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:  # batch norm cannot train on one image
                continue
            opt.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
    return net


@torch.no_grad()
def _probabilities(net: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    net.eval()
    return torch.cat([torch.softmax(net(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]).numpy()


def quick_subset(data: Path, out: Path, *, n: int, seed: int = 0) -> Path:
    """A stratified, seeded subset of ``n`` images of ``data`` under ``out`` for a smoke run.

    An ``.npz`` becomes a smaller ``.npz`` of the same name (its train and val arrays only, each cut in
    proportion); a class folder becomes class folders of symbolic links to the chosen files.
    """
    ds = open_dataset(data)
    labels = ds.labels()
    rng = np.random.default_rng(seed)
    share = min(1.0, n / len(labels))
    chosen = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(labels == c), size=max(2, round(share * np.sum(labels == c))), replace=False)
        for c in np.unique(labels)
    ]))
    out.mkdir(parents=True, exist_ok=True)
    if ds.kind == "npz":
        arrays = ds.arrays()
        keep: dict[str, np.ndarray] = {}
        for split in ("train", "val"):
            rows = [ds.items[i].index for i in chosen if ds.items[i].split == split]
            images, split_labels = arrays[split]
            keep[f"{split}_images"], keep[f"{split}_labels"] = images[rows], split_labels[rows][:, None]
        target = out / data.name
        np.savez(target, **keep)
        return target
    target = out / data.name
    for i in chosen:
        source = Path(ds.items[i].source)
        link = target / ds.class_names[labels[i]] / source.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(source.resolve())
    return target
