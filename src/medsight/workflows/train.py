"""``medsight train``: a classifier or a segmenter, one run or a k-fold cross-validation.

The task's own training is :func:`medsight.classification.train.train_classifier` and
:mod:`medsight.workflows.segmentation`; this module dispatches, and runs a classifier's folds through
the task-neutral :func:`medsight.training.folds.cross_validate`.
"""

from __future__ import annotations

from pathlib import Path

from medsight.classification.split import check_classes
from medsight.classification.train import STOPPED_EARLY, train_classifier
from medsight.config import RunConfig
from medsight.data.modalities import check_one_modality
from medsight.errors import ConfigError


def run_training(cfg: RunConfig, *, out: Path, resume: bool = False, progress: bool = True) -> str:
    """Train (or cross-validate) a classifier and write the run folder.

    Returns:
        A few lines saying what was written where, for the CLI to print.
    """
    from medsight.data.layouts import open_dataset
    from medsight.runtime.device import set_threads
    from medsight.runtime.distributed import is_main

    if not cfg.data.path:
        raise ConfigError("data.path", "no data set given", "pass --data PATH or set data.path in the config")
    if cfg.task == "segmentation":
        from medsight.workflows.segmentation import train_segmentation

        return train_segmentation(cfg, out=Path(out), resume=resume, progress=progress)
    set_threads(cfg.train.num_threads)
    out = Path(out)
    ds = open_dataset(cfg.data.path, series_uid=cfg.data.series_uid, class_names=cfg.data.class_names,
                      strict=cfg.data.on_bad_file == "error")  # skip: bad manifest rows are skipped files too
    check_classes(ds, folds=cfg.data.folds)
    check_one_modality(ds)
    if cfg.data.folds == 1 or cfg.data.fold is not None:  # one run (one fold of k when data.fold is set)
        metrics = train_classifier(cfg, ds, out=out, resume=resume, progress=progress)
        return _summary(out, metrics) if is_main() else ""  # under DDP only rank 0 reports
    from medsight.classification.evaluate import aggregate_folds
    from medsight.training.folds import cross_validate

    fold_metrics, _ = cross_validate(cfg, out, resume=resume, train_fold=lambda run: train_classifier(
        run.config, ds, out=run.folder, resume=run.resume, progress=progress))
    if not is_main():
        return ""
    aggregate_folds(fold_metrics, out, title=f"{cfg.name}: {cfg.data.folds}-fold cross-validation")
    return f"cross-validation of {cfg.data.folds} folds written to {out}/cv_report.html"


def _summary(out: Path, metrics: dict) -> str:
    threshold = "argmax" if metrics["threshold"] is None else f"{metrics['threshold']:.4f}"
    choice = metrics["calibration"].get("temperature_choice")
    stopped = metrics["extra"].get(STOPPED_EARLY)
    return (
        f"{metrics['split']}: n={metrics['n']} accuracy={metrics['accuracy']:.4f} auc={metrics['auc']:.4f} "
        f"sensitivity={metrics['sensitivity']:.4f} specificity={metrics['specificity']:.4f} threshold={threshold}\n"
        + (f"{STOPPED_EARLY}: {stopped}\n" if stopped else "")
        + (f"temperature scaling: {choice['reason']}\n" if choice else "")
        + f"bundle:  {out / 'model'}\nreport:  {out / 'report.html'}\nmetrics: {out / 'metrics.json'}"
    )
