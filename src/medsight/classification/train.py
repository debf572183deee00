"""Train one classifier: its splits as tensors -> fit -> kept validation logits -> TTA decision -> calibrated
bundle -> evaluation of the held-out split.

``medsight train`` reaches :func:`train_classifier` through :func:`medsight.workflows.train.run_training`,
once per run or once per fold.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from medsight.bundle import Bundle, build_bundle, provenance
from medsight.bundle_fields import DataSettings, ThresholdChoice
from medsight.classification.domain import single_run_domain
from medsight.classification.operating_point import OperatingPoint, choose_operating_point
from medsight.classification.score import calibration_kwargs, score
from medsight.classification.tta import (
    VAL_LOGITS,
    KeptLogits,
    TtaDecision,
    candidate_flips,
    decide_tta,
    kept_views,
    record_decision,
)
from medsight.config import RunConfig, save_config
from medsight.data.file_errors import write_skipped_files
from medsight.data.splits import resolve_splits
from medsight.errors import ConfigError
from medsight.inference.classifier import CalibratedClassifier
from medsight.training.folds import ensemble_model, member_weights

#: the summary line and report row of a run that ended before ``train.epochs``; its reason follows
STOPPED_EARLY = "stopped early"


def train_classifier(cfg: RunConfig, ds, *, out: Path, resume: bool, progress: bool, cv_fold: bool = False,
                     fingerprint: dict | None = None) -> dict:
    """Train one classifier in ``out`` and report on its held-out split (test, else validation).

    Every run keeps its validation logits (``out/val_logits.npz``, with the flipped views ``eval.tta`` and
    the flip uncertainty may need). A single run decides ``eval.tta`` on its validation split and, where
    flips are kept, ships a one-member ``fold_ensemble`` that averages them. ``cv_fold``: one fold of a
    cross-validation, a member of the fold ensemble: no TTA of its own, and it reports on its validation
    cases (the test split is left to the ensemble). Any other run's bundle gets its domain record
    (:func:`medsight.classification.domain.single_run_domain`, with the data's ``fingerprint``).
    """
    from medsight.runtime.distributed import is_main

    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    tensors, bad, synthetic = _load_splits(cfg, ds, out=out, progress=progress, test=not cv_fold)
    model, result = _fit(cfg, tensors, num_classes=len(ds.class_names), out=out, resume=resume, progress=progress)
    if not is_main():  # under DDP rank 0 alone writes the bundle and report
        return {}
    model.load_state_dict(result.best_state)
    spatial_dims = len(cfg.preprocess.size)
    kept = KeptLogits.compute(model, tensors["val"], views=kept_views(cfg.augment, cfg.eval, spatial_dims))
    kept.save(out / VAL_LOGITS)
    chosen_on = f"the validation split (n={len(kept.ids)})"
    tta = (TtaDecision("none", [], [], "decided by the fold ensemble") if cv_fold else
           decide_tta(cfg.eval.tta, candidate_flips(cfg.augment, spatial_dims), kept, head=cfg.model.head,
                      chosen_on=chosen_on))
    point = choose_operating_point(kept.mean_of(tta.flips), kept.labels, head=cfg.model.head, cfg=cfg.eval,
                                   chosen_on=chosen_on)
    bundle = _calibrated_bundle(cfg, ds, tensors, result, synthetic, point, tta)
    if not cv_fold:
        bundle.domain = single_run_domain(bundle, cfg, tensors, fingerprint)
    bundle.save(out / "model")
    report_split = "test" if "test" in tensors else "val"
    classifier = CalibratedClassifier(bundle.build_model() if tta.flips else model, head=cfg.model.head,
                                      temperature=bundle.temperature)
    metrics = _report(cfg, ds, out, classifier, tensors[report_split], report_split, bundle, {
        "data": str(cfg.data.path),
        "model": cfg.model.name,
        "best epoch": result.best_epoch,
        "epochs run": result.epochs_run,
        "training time (s)": round(result.seconds, 1),
        **({STOPPED_EARLY: result.stop_reason} if result.stop_reason else {}),
        "cases per split": {k: len(v.ids) for k, v in tensors.items()},
        "skipped files": len(bad),
        "test-time augmentation": tta.reason,
    })
    return record_decision(metrics, out, tta)


def _fit(cfg: RunConfig, tensors: dict, *, num_classes: int, out: Path, resume: bool, progress: bool):
    """The network of ``cfg.model``, seeded, trained on ``tensors``: ``(network, fit result)``."""
    import torch

    from medsight.classification.trainer import fit
    from medsight.classification.uncertainty import check_dropout
    from medsight.models import create_model
    from medsight.training.unfreezing import prepare_model
    from medsight.transforms import BatchAugment

    if cfg.model.head == "sigmoid" and num_classes != 2:
        raise ConfigError("model.head=sigmoid", f"needs 2 classes, the data has {num_classes}", "use head: softmax")
    spatial_dims = len(cfg.preprocess.size)
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of what the seed reproduces
    model = create_model(
        cfg.model.name,
        in_channels=cfg.preprocess.channels,
        num_outputs=1 if cfg.model.head == "sigmoid" else num_classes,
        spatial_dims=spatial_dims,
        **cfg.model.kwargs,
    )
    callbacks = prepare_model(model, cfg, out=out, resume=resume)  # pretrained weights, freezing
    if cfg.eval.uncertainty == "mc_dropout":
        check_dropout(model)  # before training, not after it
    augment = BatchAugment(cfg.augment, spatial_dims)
    result = fit(
        model,
        tensors["train"],
        tensors["val"],
        cfg=cfg.train,
        head=cfg.model.head,
        num_classes=num_classes,
        run_dir=out,
        augment=augment if augment.enabled else None,
        resume=resume,
        callbacks=callbacks,
        progress=progress,
    )
    return model, result


def _report(cfg: RunConfig, ds, out: Path, classifier: CalibratedClassifier, tensors, split: str, bundle,
            extra: dict) -> dict:
    """Score ``classifier`` on ``tensors`` (the ``split``) and write the run's metrics.json and report."""
    from medsight.classification.evaluate import evaluate_predictions

    scored = score(classifier, tensors, cfg=cfg.eval)
    return evaluate_predictions(
        tensors.labels.numpy(),
        scored["probs"],
        label_names=ds.class_names,
        case_ids=tensors.ids,
        threshold=bundle.threshold,
        threshold_note=bundle.threshold_choice.note,
        cfg=cfg.eval,
        **calibration_kwargs(scored, bundle.temperature, bundle.threshold_choice.calibration),
        out=out,
        title=f"{cfg.name}: {split} split",
        split=split,
        history_csv=out / "metrics.csv",
        extra=extra,
    )


def _load_splits(cfg: RunConfig, ds, *, out: Path, progress: bool, test: bool = True) -> tuple[dict, list, dict | None]:
    """The non-empty splits as tensors (the test split only with ``test``), the files skipped (listed in
    ``out``), and what ``train.synthetic`` mixed into the training split (None without it).

    Raises:
        ConfigError: no validation split.
    """
    from medsight.classification.prepare import load_tensors
    from medsight.data.cache import cache_from_config

    splits = {name: idx for name, idx in resolve_splits(ds, cfg.data).items()
              if len(idx) and (test or name != "test")}
    if "val" not in splits:
        raise ConfigError("data.val_fraction", "there is no validation split", "set data.val_fraction above 0")
    tensors, bad = {}, list(ds.problems)
    cache = cache_from_config(cfg.data)
    for name, idx in splits.items():
        tensors[name], skipped = load_tensors(
            ds, idx, cfg.preprocess, on_bad_file=cfg.data.on_bad_file, progress=progress, desc=name, cache=cache
        )
        bad += skipped
    write_skipped_files(out, bad)
    synthetic = None
    if cfg.train.synthetic:  # generated samples join the training split only; val and test stay real
        from medsight.classification.synthetic import mix_synthetic

        tensors["train"], synthetic = mix_synthetic(tensors["train"], cfg, class_names=ds.class_names)
    return tensors, bad, synthetic


def _calibrated_bundle(cfg: RunConfig, ds, tensors: dict, result, synthetic: dict | None, point: OperatingPoint,
                       tta: TtaDecision) -> Bundle:
    """The trained model as a Bundle with its operating ``point`` (temperature and threshold, chosen on the
    validation split) and validation metrics; with ``tta.flips``, a one-member ``fold_ensemble`` that
    averages the image and its flips."""
    from medsight.classification.metrics import classification_metrics, expected_calibration_error

    y_val = tensors["val"].labels.numpy()
    val_metrics = classification_metrics(y_val, point.probs, point.threshold)
    val_metrics["ece"] = expected_calibration_error(y_val, point.probs)
    bundle = build_bundle(
        task=cfg.task,
        model=cfg.model,
        preprocess=cfg.preprocess,
        label_names=ds.class_names,
        threshold=point.threshold,
        temperature=point.temperature,
        metrics={f"val_{k}": float(v) for k, v in val_metrics.items() if np.isscalar(v)},
        provenance=provenance(
            run=cfg.name,
            best_epoch=result.best_epoch,
            epochs_run=result.epochs_run,
            train_seconds=round(result.seconds, 1),
            stop_reason=result.stop_reason,
            n_train=len(tensors["train"].ids),
            synthetic=synthetic,
            tta=tta.as_dict(),
        ),
        state_dict=result.best_state,
        data=DataSettings.of(cfg.data, hash=data_hash(tensors["train"].ids, tensors["train"].labels.tolist())),
        threshold_choice=ThresholdChoice(note=point.note, evaluation=cfg.eval, calibration=point.calibration.as_dict()),
    )
    if tta.flips:
        return replace(bundle, model=ensemble_model([bundle], tta.flips), state_dict=member_weights([bundle]))
    return bundle


def data_hash(ids: list[str], labels: list[int]) -> str:
    digest = hashlib.sha256()
    for case, label in sorted(zip(ids, labels, strict=True)):
        digest.update(f"{case}\t{label}\n".encode())
    return digest.hexdigest()[:16]
