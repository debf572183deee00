"""Safe retraining: fine-tune production on feedback + the original data, gate it, promote only if it is no worse.

``retrain`` takes the registry's production bundle, exports the feedback store as class folders,
fine-tunes the production weights for a few epochs at a lower learning rate on the original
training split plus the feedback cases, and registers the result as a candidate whose parent is
production. The promotion gate (:func:`medsight.registry.gate.compare_bundles`) then scores both
on the original data's validation split, which the production bundle's stored split settings
freeze; the candidate is promoted only when it passes. The gate's numbers are recorded on the
candidate's registry entry either way.

Classification only for now: a segmentation production model is refused with a clear error.

Example:
    >>> result = retrain(registry="registry", feedback="feedback", data="data/chest", out="runs/retrain-1")
    >>> print(result["table"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import ConfigError


def retrain(
    *,
    registry: str | Path,
    feedback: str | Path,
    data: str | Path,
    out: str | Path,
    epochs: int = 3,
    lr: float = 1e-4,
    batch_size: int = 32,
    margin: float = 0.0,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune, register, gate and (when it passes) promote; returns what happened.

    Returns:
        ``{"version", "parent", "promoted", "gate" (the numbers), "table" (printable), "bundle"}``.

    Raises:
        RegistryError: the registry has no production version.
        FeedbackError: the feedback store is empty.
        ConfigError: the production model is a segmenter.
        DatasetError: the feedback labels are not among the model's classes.
    """
    from medsight.classification.trainer import fit
    from medsight.config import TrainConfig
    from medsight.registry import ModelRegistry
    from medsight.registry.gate import compare_bundles

    out = Path(out)
    reg = ModelRegistry(registry)
    parent_path, parent = reg.production_bundle(), reg.production()
    prod = _classifier(parent_path, parent["version"])
    train, val, feedback_cases = _training_sets(prod, data=data, feedback=feedback, out=out, progress=progress)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, warmup_epochs=0, schedule="none",
                      num_threads=1)
    model = prod.build_model()
    result = fit(model, train, val, cfg=cfg, head=prod.model.head, num_classes=len(prod.label_names),
                 run_dir=out, progress=progress)
    candidate, train_hash = _candidate_bundle(prod, parent, result, train=train, val=val, cfg=cfg,
                                              device=next(model.parameters()).device,
                                              feedback_cases=feedback_cases)
    candidate = candidate.save(out / "model")
    version = reg.register(candidate, data_hash=train_hash, parent=parent["version"])
    gate = compare_bundles(candidate, parent_path, data=data, split="val", n_boot=n_boot, margin=margin, seed=seed)
    reg.annotate(version, gate=gate.as_dict(), retrain={"feedback_cases": feedback_cases, "epochs": epochs,
                                                       "lr": lr, "run": str(out)})
    if gate.passed:
        reg.promote(version)
    return {"version": version, "parent": parent["version"], "promoted": gate.passed, "gate": gate.as_dict(),
            "table": gate.table(), "bundle": str(candidate)}


def _classifier(path: Path, version: str):
    """The production bundle at ``path``, refused unless it is a classifier.

    Raises:
        ConfigError: the production model is a segmenter.
    """
    from medsight.bundle import load_bundle

    prod = load_bundle(path)
    if prod.task != "classification":
        raise ConfigError(f"registry version {version}", f"is a {prod.task} model; retrain fine-tunes "
                          "classifiers only", "train a new segmenter with medsight train on the exported feedback")
    return prod


def _training_sets(prod, *, data: str | Path, feedback: str | Path, out: Path, progress: bool):
    """The original training split plus the feedback cases (exported to ``out/feedback_data``), the
    original validation split, and the number of feedback cases; read with ``prod``'s preprocessing."""
    import torch

    from medsight.classification.batches import TensorSet
    from medsight.classification.prepare import load_tensors
    from medsight.classification.split import bundle_split
    from medsight.data.layouts import open_dataset
    from medsight.feedback import export_dataset

    manifest = export_dataset(feedback, out / "feedback_data")
    fb_ds = open_dataset(out / "feedback_data", class_names=prod.label_names)
    ds, data_cfg, train_idx = bundle_split(prod, data, "train")
    _, _, val_idx = bundle_split(prod, data, "val")
    load = {"on_bad_file": data_cfg.on_bad_file, "progress": progress}
    original, _ = load_tensors(ds, train_idx, prod.preprocess, desc="train", **load)
    extra, _ = load_tensors(fb_ds, np.arange(len(fb_ds.items)), prod.preprocess, desc="feedback", **load)
    val, _ = load_tensors(ds, val_idx, prod.preprocess, desc="val", **load)
    train = TensorSet(torch.cat([original.images, extra.images]), torch.cat([original.labels, extra.labels]),
                      original.ids + [f"feedback:{Path(i).stem}" for i in extra.ids])
    return train, val, manifest["n_cases"]


def _candidate_bundle(prod, parent: dict, result, *, train, val, cfg, device, feedback_cases: int):
    """The fine-tuned weights as a bundle with production's settings, its validation metrics (from the
    :class:`~medsight.inference.predictor.Predictor`, at production's threshold and temperature) and
    its provenance; with the hash of its training data."""
    from dataclasses import replace

    from medsight.bundle import build_bundle, provenance
    from medsight.bundle_fields import ThresholdChoice
    from medsight.classification.metrics import classification_metrics
    from medsight.classification.train import data_hash
    from medsight.inference.predictor import Predictor

    val_probs = Predictor(replace(prod, state_dict=result.best_state), device=str(device)).predict_tensors(val.images)
    val_metrics = classification_metrics(val.labels.numpy(), val_probs, prod.threshold)
    train_hash = data_hash(train.ids, train.labels.tolist())
    candidate = build_bundle(
        task=prod.task, model=prod.model, preprocess=prod.preprocess, label_names=prod.label_names,
        threshold=prod.threshold, temperature=prod.temperature,
        metrics={f"val_{k}": float(v) for k, v in val_metrics.items() if np.isscalar(v)},
        provenance=provenance(
            run=f"retrain of registry version {parent['version']}",
            parent_version=parent["version"], parent_hash=parent["hash"],
            feedback_cases=feedback_cases, n_train=len(train.ids), best_epoch=result.best_epoch,
            epochs_run=result.epochs_run, train_config=cfg.model_dump(mode="json"),
        ),
        state_dict=result.best_state,
        data=prod.data.model_copy(update={"hash": train_hash}),
        threshold_choice=ThresholdChoice(note=f"kept from the parent model ({prod.threshold_choice.note_or('stored')})",
                                         evaluation=prod.threshold_choice.evaluation),
    )
    return candidate, train_hash
