"""Segmentation runs: one model, a k-fold cross-validation (and its ensemble), and evaluating a bundle.

``medsight train --task segmentation`` and ``medsight evaluate`` on a segmentation bundle reach these
through :func:`medsight.workflows.train.run_training` and :func:`~medsight.workflows.evaluate.run_evaluation`.
"""

from __future__ import annotations

from pathlib import Path

from medsight.config import ModelConfig, RunConfig, save_config
from medsight.segmentation.evaluate import seg_summary


def train_segmentation(cfg: RunConfig, *, out: Path, resume: bool, progress: bool) -> str:
    """Segmentation: patches from the plan, sliding-window validation, Dice early stopping. The default
    (classification) model name becomes ``unet``; a config that names a classifier is refused later."""
    from medsight.models import list_models
    from medsight.runtime.distributed import is_main
    from medsight.segmentation.train import train_segmenter

    if cfg.model.name not in list_models("segmentation") and cfg.model.name == ModelConfig().name:
        cfg = cfg.model_copy(update={"model": ModelConfig(name="unet", kwargs=cfg.model.kwargs)}, deep=True)
    out.mkdir(parents=True, exist_ok=True)
    if is_main():
        save_config(cfg, out / "config.yaml")
    if cfg.data.folds > 1 and cfg.data.fold is None:
        return cross_validate_segmentation(cfg, out=out, resume=resume, progress=progress)
    result = train_segmenter(cfg, out=out, resume=resume, progress=progress)
    if not is_main():  # under DDP only rank 0 reports
        return ""
    stopped = f"\nstopped early: {result['stop_reason']}" if result["stop_reason"] else ""
    return seg_summary("val", result["metrics"]) + stopped + (
        f"\nbest epoch {result['best_epoch']} of {result['epochs_run']}\n"
        f"bundle:  {out / 'model'}\nreport:  {out / 'report.html'}\nmetrics: {out / 'metrics.json'}"
    )


def cross_validate_segmentation(cfg: RunConfig, *, out: Path, resume: bool, progress: bool) -> str:
    """k-fold segmentation: fold k trains in ``out/fold{k}`` and validates on its own part of the cases;
    ``out/cv_metrics.json`` and ``out/cv_report.html`` give each metric's mean, sd and per-fold values.
    With ``segment.ensemble`` ``out/model`` is the ensemble of the fold models and ``out/metrics.json``
    scores the out-of-fold predictions (:mod:`medsight.segmentation.ensemble`).
    ``--resume`` goes on with the folds that have a checkpoint and starts the ones that have none."""
    from medsight.classification.evaluate import aggregate_folds
    from medsight.runtime.distributed import is_main
    from medsight.segmentation.metrics import SEG_METRIC_KEYS
    from medsight.segmentation.train import train_segmenter
    from medsight.training.folds import cross_validate

    fold_metrics, fold_outs = cross_validate(cfg, out, resume=resume, train_fold=lambda run: train_segmenter(
        run.config, out=run.folder, resume=run.resume, progress=progress)["metrics"])
    if not is_main():
        return ""
    keys = (*SEG_METRIC_KEYS, "auc", "pr_auc", "f1", "accuracy")
    summary = aggregate_folds(fold_metrics, out, title=f"{cfg.name}: {cfg.data.folds}-fold cross-validation",
                              keys=keys)
    means = " ".join(f"{k}={summary[k]:.4f}" for k in ("dice", "auc", "f1") if summary[k] == summary[k])
    text = (f"cross-validation of {cfg.data.folds} folds (mean over folds): {means}\n"
            f"folds:   {out}/fold0 .. fold{cfg.data.folds - 1}\nreport:  {out}/cv_report.html")
    if not cfg.segment.ensemble:
        return text
    from medsight.segmentation.ensemble import ensemble_folds

    metrics = ensemble_folds(cfg, out, fold_outs, progress=progress)
    return (f"{text}\n{seg_summary('out of fold', metrics)}\n"
            f"ensemble of the {cfg.data.folds} folds (threshold chosen out of fold): {out / 'model'}\n"
            f"out-of-fold report: {out / 'report.html'}")
