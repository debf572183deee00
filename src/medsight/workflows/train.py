"""``medsight train``: a classifier or a segmenter, one run or a k-fold cross-validation.

The task's own training is :func:`medsight.classification.train.train_classifier` and
:mod:`medsight.workflows.segmentation`; this module dispatches, and runs a classifier's folds (each with
``train.members_per_fold`` seeded members) through the task-neutral
:func:`medsight.training.folds.cross_validate`, then builds their fold ensemble
(:func:`medsight.classification.ensemble.ensemble_classifier_folds`): ``RUN/model`` and the out-of-fold
estimate in ``RUN/metrics.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsight.classification.domain import training_fingerprint
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
    _check_members(cfg)
    if cfg.task == "segmentation":
        from medsight.workflows.segmentation import train_segmentation

        return train_segmentation(cfg, out=Path(out), resume=resume, progress=progress)
    if cfg.task == "detection":
        from medsight.workflows.detection import train_detection

        return train_detection(cfg, out=Path(out), resume=resume, progress=progress)
    set_threads(cfg.train.num_threads)
    out = Path(out)
    ds = open_dataset(cfg.data.path, series_uid=cfg.data.series_uid, class_names=cfg.data.class_names,
                      strict=cfg.data.on_bad_file == "error")  # skip: bad manifest rows are skipped files too
    check_classes(ds, folds=cfg.data.folds)
    check_one_modality(ds)
    fingerprint = training_fingerprint(cfg, ds, out, progress=progress) if is_main() else None  # for the domain
    if cfg.data.folds == 1 or cfg.data.fold is not None:  # one run (one fold of k when data.fold is set)
        metrics = train_classifier(cfg, ds, out=out, resume=resume, progress=progress, fingerprint=fingerprint)
        return _summary(out, metrics) if is_main() else ""  # under DDP only rank 0 reports
    from medsight.classification.ensemble import ensemble_classifier_folds
    from medsight.classification.evaluate import aggregate_folds
    from medsight.training.folds import cross_validate

    def train_member(run) -> dict:  # one member of one fold
        return train_classifier(run.config, ds, out=run.folder, resume=run.resume, progress=progress, cv_fold=True)

    fold_metrics, folders = cross_validate(cfg, out, resume=resume, train_fold=train_member,
                                           members=cfg.train.members_per_fold)
    if not is_main():
        return ""
    members = "" if cfg.train.members_per_fold == 1 else (
        f" (member 0 of each fold, seed {cfg.train.seed}; the other members' in fold*-member*/metrics.json)")
    aggregate_folds(fold_metrics[:cfg.data.folds], out, title=f"{cfg.name}: {cfg.data.folds}-fold cross-validation, "
                    f"each fold on its validation cases{members}")
    result = ensemble_classifier_folds(cfg, ds, out, folders, progress=progress, fingerprint=fingerprint)
    return _cv_summary(out, result)


def _check_members(cfg: RunConfig) -> None:
    """Several members per fold (``train.members_per_fold``) need a classifier's cross-validation.

    Raises:
        ConfigError: members per fold for another task, or without folds to put them in.
    """
    if cfg.train.members_per_fold == 1:
        return
    where = f"train.members_per_fold={cfg.train.members_per_fold}"
    if cfg.task != "classification":
        raise ConfigError(where, f"seeded members per fold are for classification; a {cfg.task} cross-validation "
                          "trains one model per fold", "leave train.members_per_fold at 1")
    if cfg.data.folds == 1:
        raise ConfigError(where, "needs a cross-validation to put the members in (data.folds is 1)",
                          "set data.folds to 2 or more (--folds K), or train.members_per_fold to 1")


def _cv_summary(out: Path, result) -> str:
    """The out-of-fold estimate first, then the ensemble on the test split (where there is one) and the files."""
    oof, test = result.oof, result.test
    extra = oof["extra"]
    members = extra["members per fold"]
    lines = [f"{oof['split']} ({extra['folds']} folds x {members} member{'s' if members > 1 else ''}, n={oof['n']}): "
             f"{_scores(oof)}"]
    if test is not None:
        lines.append(f"test (the fold ensemble, n={test['n']}): {_scores(test)}")
    choice = oof["calibration"].get("temperature_choice")
    lines += [f"test-time augmentation: {result.tta.reason}", f"threshold: {oof['threshold_note']}"]
    lines += [f"temperature scaling: {choice['reason']}"] if choice else []
    lines += [f"bundle:  {out / 'model'}  (the fold ensemble)", f"report:  {out / 'report.html'}",
              f"metrics: {out / 'metrics.json'}", f"folds:   {out / 'cv_report.html'}"]
    lines += [f"test:    {result.test_folder / 'report.html'}"] if test is not None else []
    return "\n".join(lines)


def _scores(metrics: dict) -> str:
    """``accuracy=… [95% CI …] auc=… [95% CI …]`` and the rest of the headline of one metrics.json."""
    level = round(100 * metrics["ci_level"])
    parts = []
    for key in ("accuracy", "auc"):
        entry = metrics["metrics"][key]
        ci = (f" [{level}% CI {entry['ci_low']:.4f}-{entry['ci_high']:.4f}]"
              if entry["ci_low"] is not None and np.isfinite(entry["ci_low"]) else "")
        parts.append(f"{key}={metrics[key]:.4f}{ci}")
    threshold = "argmax" if metrics["threshold"] is None else f"{metrics['threshold']:.4f}"
    return " ".join([*parts, f"sensitivity={metrics['sensitivity']:.4f}", f"specificity={metrics['specificity']:.4f}",
                     f"threshold={threshold}"])


def _summary(out: Path, metrics: dict) -> str:
    threshold = "argmax" if metrics["threshold"] is None else f"{metrics['threshold']:.4f}"
    choice = metrics["calibration"].get("temperature_choice")
    stopped = metrics["extra"].get(STOPPED_EARLY)
    tta = metrics.get("tta")
    return (
        f"{metrics['split']}: n={metrics['n']} accuracy={metrics['accuracy']:.4f} auc={metrics['auc']:.4f} "
        f"sensitivity={metrics['sensitivity']:.4f} specificity={metrics['specificity']:.4f} threshold={threshold}\n"
        + (f"{STOPPED_EARLY}: {stopped}\n" if stopped else "")
        + (f"temperature scaling: {choice['reason']}\n" if choice else "")
        + (f"test-time augmentation: {tta['reason']}\n" if tta and tta["mode"] != "none" else "")
        + f"bundle:  {out / 'model'}\nreport:  {out / 'report.html'}\nmetrics: {out / 'metrics.json'}"
    )
