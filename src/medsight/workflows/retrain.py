"""Safe retraining: fine-tune production on feedback + the original data, gate it, promote only if it is no worse.

``retrain`` takes the registry's production bundle, exports the feedback store as class folders,
fine-tunes the production weights for a few epochs at a lower learning rate on the original
training split plus the feedback cases, and registers the result as a candidate whose parent is
production. The promotion gate (:func:`medsight.registry.gate.compare_bundles`) then scores both
on the original data's validation split, which the production bundle's stored split settings
freeze; the candidate is promoted only when it passes. The gate's numbers are recorded on the
candidate's registry entry either way.

A fold ensemble in production (``medsight train --folds K``) is fine-tuned member by member: member k
starts from its own weights and trains on its own fold's training split plus the feedback cases, its
best epoch chosen on its own fold's validation split (cases it never trained on), so each member stays
the out-of-fold model it was; the fine-tuned members are put back together as the same ensemble (the
same members, flipped views, temperature and threshold). The gate then compares the two ensembles.

Classification only for now: a segmentation production model is refused with a clear error.

Example:
    >>> result = retrain(registry="registry", feedback="feedback", data="data/chest", out="runs/retrain-1")
    >>> print(result["table"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

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
    from medsight.config import TrainConfig
    from medsight.registry import ModelRegistry
    from medsight.registry.gate import compare_bundles

    out = Path(out)
    reg = ModelRegistry(registry)
    parent_path, parent = reg.production_bundle(), reg.production()
    prod = _classifier(parent_path, parent["version"])
    extra, feedback_cases = _feedback_set(prod, feedback=feedback, out=out, progress=progress)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, warmup_epochs=0, schedule="none",
                      num_threads=1)
    tuned = _fine_tune(prod, data=data, extra=extra, cfg=cfg, out=out, progress=progress)
    candidate, train_hash = _candidate_bundle(prod, parent, tuned, cfg=cfg, feedback_cases=feedback_cases)
    candidate = candidate.save(out / "model")
    version = reg.register(candidate, data_hash=train_hash, parent=parent["version"])
    gate = compare_bundles(candidate, parent_path, data=data, split="val", n_boot=n_boot, margin=margin, seed=seed)
    reg.annotate(version, gate=gate.as_dict(), retrain={"feedback_cases": feedback_cases, "epochs": epochs,
                                                       "lr": lr, "run": str(out), "members": len(tuned.fits)})
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


class _Tuned(NamedTuple):
    """What fine-tuning gave: the weights (an ensemble's members under ``members.{k}.``), each member's fit
    (one for a single model), the training sets they used, production's own validation split and the device
    they trained on."""

    state: dict[str, Any]
    fits: list[Any]
    train_sets: list[Any]
    val: Any
    device: str


def _fine_tune(prod, *, data: str | Path, extra, cfg, out: Path, progress: bool) -> _Tuned:
    """Fine-tune production, or each member of a fold ensemble on its own fold (the module doc), in ``out``
    (a member in ``out/member{k}``)."""
    from medsight.classification.trainer import fit

    members = _members(prod)
    fits, train_sets, vals = [], [], []
    for k, member in enumerate(members):
        train, val = _training_sets(member, data=data, extra=extra, progress=progress)
        model = member.build_model()
        fits.append(fit(model, train, val, cfg=cfg, head=prod.model.head, num_classes=len(prod.label_names),
                        run_dir=out if member is prod else out / f"member{k}", progress=progress))
        train_sets.append(train)
        vals.append(val)
    device = str(next(model.parameters()).device)
    if not _is_ensemble(prod):
        return _Tuned(fits[0].best_state, fits, train_sets, vals[0], device)
    state = {f"members.{k}.{key}": value for k, result in enumerate(fits) for key, value in result.best_state.items()}
    return _Tuned(state, fits, train_sets, vals[_own_fold(prod, len(members))], device)


def _is_ensemble(bundle) -> bool:
    from medsight.training.folds import FOLD_ENSEMBLE

    return bundle.model.name == FOLD_ENSEMBLE


def _members(prod) -> list:
    """A fold ensemble's members as bundles of their own (member k's weights, network and its fold's split
    settings, :func:`_member_folds`); any other bundle: itself."""
    from dataclasses import replace

    from medsight.config import ModelConfig

    if not _is_ensemble(prod):
        return [prod]
    kwargs = prod.model.kwargs
    model = ModelConfig(name=kwargs["member"], kwargs=kwargs.get("member_kwargs") or {}, head=prod.model.head)
    count, config = int(kwargs["members"]), prod.data.config
    folds = _member_folds(prod, count)
    members = []
    for k in range(count):
        prefix = f"members.{k}."
        state = {key[len(prefix):]: value for key, value in prod.state_dict.items() if key.startswith(prefix)}
        data = (prod.data.model_copy(update={"config": config.model_copy(update={"fold": folds[k]})}) if folds
                else prod.data)
        members.append(replace(prod, model=model, state_dict=state, data=data, temperature=None))
    return members


def _member_folds(prod, count: int) -> list[int] | None:
    """The fold each of the ``count`` members validated on: the ensemble's provenance records of a k-fold split
    (k folds x n members), else member k is fold k where the split has ``count`` folds; None: no such split."""
    config = prod.data.config
    if config is None:
        return None
    records = prod.provenance.get("folds") or []
    if config.folds > 1 and len(records) == count and all(isinstance(r, dict) and isinstance(r.get("fold"), int)
                                                          for r in records):
        return [r["fold"] for r in records]
    return list(range(count)) if config.folds == count else None


def _own_fold(prod, members: int) -> int:
    """The member whose validation split is production's own (the split the gate scores)."""
    config = prod.data.config
    return (config.fold or 0) if config is not None and config.folds == members else 0


def _feedback_set(prod, *, feedback: str | Path, out: Path, progress: bool):
    """The feedback cases (exported to ``out/feedback_data``, read with ``prod``'s preprocessing) and their number."""
    from medsight.classification.prepare import load_tensors
    from medsight.data.layouts import open_dataset
    from medsight.feedback import export_dataset

    manifest = export_dataset(feedback, out / "feedback_data")
    fb_ds = open_dataset(out / "feedback_data", class_names=prod.label_names)
    extra, _ = load_tensors(fb_ds, np.arange(len(fb_ds.items)), prod.preprocess, desc="feedback", progress=progress)
    return extra, manifest["n_cases"]


def _training_sets(bundle, *, data: str | Path, extra, progress: bool):
    """``bundle``'s training split of ``data`` plus the ``extra`` (feedback) cases, and its validation split."""
    import torch

    from medsight.classification.batches import TensorSet
    from medsight.classification.prepare import load_tensors
    from medsight.classification.split import bundle_split

    ds, data_cfg, train_idx = bundle_split(bundle, data, "train")
    _, _, val_idx = bundle_split(bundle, data, "val")
    load = {"on_bad_file": data_cfg.on_bad_file, "progress": progress}
    original, _ = load_tensors(ds, train_idx, bundle.preprocess, desc="train", **load)
    val, _ = load_tensors(ds, val_idx, bundle.preprocess, desc="val", **load)
    train = TensorSet(torch.cat([original.images, extra.images]), torch.cat([original.labels, extra.labels]),
                      original.ids + [f"feedback:{Path(i).stem}" for i in extra.ids])
    return train, val


def _candidate_bundle(prod, parent: dict, tuned: _Tuned, *, cfg, feedback_cases: int):
    """The fine-tuned weights as a bundle with production's settings, its validation metrics (from the
    :class:`~medsight.inference.predictor.Predictor`, at production's threshold and temperature, on production's
    validation split) and its provenance; with the hash of its training data (every member's)."""
    from dataclasses import replace

    from medsight.bundle import build_bundle, provenance
    from medsight.bundle_fields import ThresholdChoice
    from medsight.classification.metrics import classification_metrics
    from medsight.classification.train import data_hash
    from medsight.inference.predictor import Predictor

    val_probs = Predictor(replace(prod, state_dict=tuned.state), device=tuned.device).predict_tensors(tuned.val.images)
    val_metrics = classification_metrics(tuned.val.labels.numpy(), val_probs, prod.threshold)
    train_hash = data_hash([i for t in tuned.train_sets for i in t.ids],
                           [label for t in tuned.train_sets for label in t.labels.tolist()])
    per_member = _is_ensemble(prod)  # an ensemble's figures are lists, member by member

    def figure(values: list) -> Any:
        return values if per_member else values[0]

    candidate = build_bundle(
        task=prod.task, model=prod.model, preprocess=prod.preprocess, label_names=prod.label_names,
        threshold=prod.threshold, temperature=prod.temperature,
        metrics={f"val_{k}": float(v) for k, v in val_metrics.items() if np.isscalar(v)},
        provenance=provenance(
            run=f"retrain of registry version {parent['version']}",
            parent_version=parent["version"], parent_hash=parent["hash"],
            feedback_cases=feedback_cases, n_train=figure([len(t.ids) for t in tuned.train_sets]),
            best_epoch=figure([f.best_epoch for f in tuned.fits]),
            epochs_run=figure([f.epochs_run for f in tuned.fits]), train_config=cfg.model_dump(mode="json"),
        ),
        state_dict=tuned.state,
        data=prod.data.model_copy(update={"hash": train_hash}),
        threshold_choice=ThresholdChoice(note=f"kept from the parent model ({prod.threshold_choice.note_or('stored')})",
                                         evaluation=prod.threshold_choice.evaluation),
    )
    return candidate, train_hash
