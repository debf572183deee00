"""After the epochs: the detection bundle, its score threshold chosen on validation, and the validation scores.

:func:`ship_detector` saves the best weights as a bundle (``out/model``), predicts the validation images with the
bundle's own :class:`~medsight.inference.detector.Detector` in each image's pixel space (what ``medsight predict``
will do), sets the shipped score threshold to the validation FROC point at ``detect.operating_fp_per_image`` false
positives per image (:func:`~medsight.detection.metrics.score_at_fp_rate`, IoU 0.1), and scores those predictions
(:func:`~medsight.detection.evaluate.evaluate_boxes`: ``metrics.json`` with bootstrap CIs, ``per_image.csv``,
``report.html``). The bundle's domain record holds the input rules of
:func:`~medsight.inference.domain.input_domain_record` from the data's fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medsight.config import RunConfig
from medsight.training.loop import FitResult

#: the domain record's note on what a detection bundle does not check
NO_FEATURES = ("a detector keeps no feature reference: the feature distance is not checked, only the input rules "
               "(modality, body part, channels, size, intensity, blank)")


def ship_detector(cfg: RunConfig, dataset, detector, net: torch.nn.Module, fitted: FitResult, sets, device,
                  out: Path, *, fingerprint: dict | None, progress: bool) -> dict[str, Any]:
    """Write ``out/model``, ``out/metrics.json``, ``per_image.csv`` and ``report.html`` (see the module);
    ``fingerprint`` (the data's, :func:`~medsight.detection.fingerprint.fingerprint_detection`) gives the bundle its
    domain record.

    Returns:
        ``{"threshold", "bundle", "metrics"}``.
    """
    from medsight.detection.evaluate import evaluate_boxes, predict_cases
    from medsight.detection.metrics import score_at_fp_rate
    from medsight.inference.detector import Detector
    from medsight.inference.domain import input_domain_record

    train_set, val_set = sets
    prefix = "network."
    state = {k[len(prefix):]: v for k, v in net.state_dict().items() if k.startswith(prefix)}
    bundle = _bundle(cfg, detector, state, fitted, train_set, val_set)
    bundle.domain = input_domain_record(fingerprint, action=cfg.predict.out_of_domain, no_features=NO_FEATURES)
    kept, truth, predicted, errors = predict_cases(Detector.from_bundle(bundle), dataset,
                                                   val_set.cases, progress=progress, desc="scoring val")
    rate = cfg.detect.operating_fp_per_image
    threshold = min(1.0, float(score_at_fp_rate(truth, predicted, rate)))
    note = (f"{threshold:.4g}: the validation FROC point at {rate:g} false positive(s) per image (a box found at IoU "
            f"0.1), on the {len(kept)} validation images")
    bundle.detection = detector.spec.settings(cfg.detect, score_threshold=threshold, threshold_note=note)
    bundle_path = bundle.save(out / "model")
    extra = {"split": "val", "data": str(cfg.data.path), "model": cfg.model.name, "best_epoch": fitted.best_epoch,
             "best_epoch_metric": fitted.metric_name, "epochs_run": fitted.epochs_run,
             "training_seconds": round(fitted.elapsed, 1), "stopped_early": fitted.stop_reason,
             "threshold_note": note, "operating_fp_per_image": rate, "input_size": list(cfg.preprocess.size),
             "images_per_split": {"train": len(train_set), "val": len(val_set)}}
    metrics = evaluate_boxes(truth, predicted, cases=kept, class_names=list(dataset.class_names),
                             threshold=threshold, out=out, title=f"{cfg.name}: detection, validation images",
                             extra=extra, bootstrap=cfg.eval.bootstrap, ci=cfg.eval.ci, errors=errors,
                             reader=dataset.read, progress=progress)
    return {"threshold": threshold, "bundle": str(bundle_path), "metrics": metrics}


def _bundle(cfg: RunConfig, detector, state: dict[str, torch.Tensor], fitted: FitResult, train_set, val_set):
    from medsight.bundle import build_bundle, provenance
    from medsight.bundle_fields import DataSettings, SplitRecord, ThresholdChoice

    spec = detector.spec
    best = fitted.history[fitted.best_epoch - 1] if fitted.best_epoch else {}
    return build_bundle(
        task="detection",
        model=spec.model_config(),
        preprocess=cfg.preprocess.model_copy(update={"keep_aspect": cfg.preprocess.keep_aspect}),
        label_names=list(spec.class_names),
        metrics={key: float(best[key]) for key in ("ap50", "map", "froc_mean") if key in best},
        provenance=provenance(run=cfg.name, best_epoch=fitted.best_epoch, epochs_run=fitted.epochs_run,
                              train_seconds=round(fitted.elapsed, 1), seed=cfg.train.seed,
                              stop_reason=fitted.stop_reason,
                              operating_fp_per_image=cfg.detect.operating_fp_per_image),
        state_dict=state,
        detection=spec.settings(cfg.detect),
        data=DataSettings.of(cfg.data),
        split=SplitRecord(cases={"train": list(train_set.ids), "val": list(val_set.ids)}),
        threshold_choice=ThresholdChoice(evaluation=cfg.eval),
    )
