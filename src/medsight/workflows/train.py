"""The classification workflow: data set -> splits -> tensors -> fit -> bundle -> report.

Segmentation runs the same entry points and continues in :mod:`medsight.workflows.segmentation`.

``run_training`` and ``run_evaluation`` are what ``medsight train`` and ``medsight evaluate``
call; tests call them directly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from medsight.atomic_write import atomic_write_text
from medsight.config import DataConfig, EvalConfig, RunConfig, save_config
from medsight.errors import ConfigError, DatasetError

#: the summary line and report row of a run that ended before ``train.epochs``; its reason follows
STOPPED_EARLY = "stopped early"


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
    if cfg.data.folds == 1 or cfg.data.fold is not None:  # one run (one fold of k when data.fold is set)
        metrics = _train_one(cfg, ds, out=out, resume=resume, progress=progress)
        return _summary(out, metrics) if is_main() else ""  # under DDP only rank 0 reports
    from medsight.classification.evaluate import aggregate_folds

    fold_metrics = [_train_one(fold_cfg, ds, out=fold_out, resume=fold_resume, progress=progress)
                    for fold_cfg, fold_out, fold_resume in fold_runs(cfg, out, resume)]
    if not is_main():
        return ""
    aggregate_folds(fold_metrics, out, title=f"{cfg.name}: {cfg.data.folds}-fold cross-validation")
    return f"cross-validation of {cfg.data.folds} folds written to {out}/cv_report.html"


def fold_runs(cfg: RunConfig, out: Path, resume: bool):
    """``(config, run folder, resume?)`` of each fold of a cross-validation: fold k has ``data.fold``
    set and its name suffixed, trains in ``out/fold{k}``, and resumes when ``resume`` is asked and
    the fold has a checkpoint (a fold the interrupted run never reached starts afresh)."""
    from medsight.runtime.checkpoint import CHECKPOINT

    for fold in range(cfg.data.folds):
        fold_cfg = cfg.model_copy(deep=True)
        fold_cfg.data.fold = fold
        fold_cfg.name = f"{cfg.name}-fold{fold}"
        fold_out = out / f"fold{fold}"
        yield fold_cfg, fold_out, resume and (fold_out / CHECKPOINT).exists()


def run_evaluation(*, bundle: Path, data: str, split: str | None = None, out: Path, progress: bool = True) -> dict:
    """Evaluate a bundle on one split of a data set; writes metrics.json, per_case.csv, report.html.

    ``split``: ``train``, ``val``, ``test`` or ``all``; default ``test`` for classifiers and
    ``all`` for segmenters (a segmentation run keeps no test split: evaluate on a held-out folder).
    """
    from medsight.bundle import load_bundle
    from medsight.classification.evaluate import evaluate_predictions
    from medsight.classification.prepare import load_tensors

    model_bundle = load_bundle(bundle)
    if model_bundle.task == "segmentation":
        from medsight.workflows.segmentation import evaluate_segmenter

        return evaluate_segmenter(model_bundle, bundle=bundle, data=data, split=split or "all", out=Path(out),
                                  progress=progress)
    split = split or "test"
    ds, data_cfg, indices = bundle_split(model_bundle, data, split)
    tensors, bad = load_tensors(
        ds, indices, model_bundle.preprocess, on_bad_file=data_cfg.on_bad_file, progress=progress, desc=split
    )
    _write_bad_files(out, bad)
    eval_cfg = EvalConfig.model_validate(model_bundle.provenance.get("eval_config", {}))
    scored = _score(model_bundle.build_model(), tensors, head=model_bundle.model.head,
                    temperature=model_bundle.temperature, cfg=eval_cfg)
    return evaluate_predictions(
        tensors.labels.numpy(),
        scored["probs"],
        label_names=model_bundle.label_names,
        case_ids=tensors.ids,
        threshold=model_bundle.threshold,
        threshold_note=model_bundle.provenance.get("threshold_note", "stored in the bundle"),
        cfg=eval_cfg,
        **_calibration_kwargs(scored, model_bundle.temperature, model_bundle.provenance.get("calibration")),
        out=Path(out),
        title=f"{Path(bundle).resolve().parent.name}: {split} split of {Path(data).name}",
        split=split,
        extra={"bundle": str(bundle), "data": str(data), "skipped files": len(bad)},
    )


def bundle_split(model_bundle, data: str | Path, split: str):
    """A classification data set read with the bundle's data settings and classes: ``(ds, data_cfg, indices)``.

    ``split`` is ``train``, ``val``, ``test`` (rebuilt from the seed stored in the bundle) or ``all``.
    Evaluation, export parity, explanations and robustness all pick their cases here.

    Raises:
        DatasetError: the data's classes differ from the model's, or it has no such split.
    """
    from medsight.data.layouts import open_dataset

    data_cfg = DataConfig.model_validate({**model_bundle.provenance.get("data_config", {}), "path": str(data)})
    ds = open_dataset(data, series_uid=data_cfg.series_uid, class_names=model_bundle.label_names)
    if ds.class_names != model_bundle.label_names:
        raise DatasetError(
            data,
            f"its classes {ds.class_names} differ from the model's {model_bundle.label_names}",
            "use data with the same classes the model was trained on",
        )
    indices = np.arange(len(ds.items)) if split == "all" else _split_indices(ds, data_cfg, split)
    return ds, data_cfg, indices


def _train_one(cfg: RunConfig, ds, *, out: Path, resume: bool, progress: bool) -> dict:
    import torch

    from medsight.classification.evaluate import evaluate_predictions
    from medsight.classification.trainer import fit
    from medsight.classification.uncertainty import check_dropout
    from medsight.models import create_model
    from medsight.models.freezing import prepare_model
    from medsight.runtime.distributed import is_main
    from medsight.transforms import BatchAugment

    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    tensors, bad, synthetic = _load_splits(cfg, ds, out=out, progress=progress)
    num_classes = len(ds.class_names)
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
    if not is_main():  # under DDP rank 0 alone writes the bundle and report
        return {}
    model.load_state_dict(result.best_state)
    bundle = _calibrated_bundle(cfg, ds, model, tensors, result, synthetic)
    bundle.save(out / "model")
    report_split = "test" if "test" in tensors else "val"
    scored = _score(model, tensors[report_split], head=cfg.model.head, temperature=bundle.temperature, cfg=cfg.eval)
    return evaluate_predictions(
        tensors[report_split].labels.numpy(),
        scored["probs"],
        label_names=ds.class_names,
        case_ids=tensors[report_split].ids,
        threshold=bundle.threshold,
        threshold_note=bundle.provenance["threshold_note"],
        cfg=cfg.eval,
        **_calibration_kwargs(scored, bundle.temperature, bundle.provenance.get("calibration")),
        out=out,
        title=f"{cfg.name}: {report_split} split",
        split=report_split,
        history_csv=out / "metrics.csv",
        extra={
            "data": str(cfg.data.path),
            "model": cfg.model.name,
            "best epoch": result.best_epoch,
            "epochs run": result.epochs_run,
            "training time (s)": round(result.seconds, 1),
            **({STOPPED_EARLY: result.stop_reason} if result.stop_reason else {}),
            "cases per split": {k: len(v.ids) for k, v in tensors.items()},
            "skipped files": len(bad),
        },
    )


def _load_splits(cfg: RunConfig, ds, *, out: Path, progress: bool) -> tuple[dict, list, dict | None]:
    """The non-empty splits as tensors, the files skipped (listed in ``out``), and what
    ``train.synthetic`` mixed into the training split (None without it).

    Raises:
        ConfigError: no validation split.
    """
    from medsight.classification.prepare import load_tensors
    from medsight.data.cache import cache_from_config

    splits = {name: idx for name, idx in _resolve(ds, cfg.data).items() if len(idx)}
    if "val" not in splits:
        raise ConfigError("data.val_fraction", "there is no validation split", "set data.val_fraction above 0")
    tensors, bad = {}, list(ds.problems)
    cache = cache_from_config(cfg.data)
    for name, idx in splits.items():
        tensors[name], skipped = load_tensors(
            ds, idx, cfg.preprocess, on_bad_file=cfg.data.on_bad_file, progress=progress, desc=name, cache=cache
        )
        bad += skipped
    _write_bad_files(out, bad)
    synthetic = None
    if cfg.train.synthetic:  # generated samples join the training split only; val and test stay real
        from medsight.classification.synthetic import mix_synthetic

        tensors["train"], synthetic = mix_synthetic(tensors["train"], cfg, class_names=ds.class_names)
    return tensors, bad, synthetic


def _calibrated_bundle(cfg: RunConfig, ds, model, tensors: dict, result, synthetic: dict | None):
    """The trained model as a Bundle, with the temperature (``eval.calibration``) and the operating
    threshold (``eval.threshold``) chosen on the validation split, and its validation metrics."""
    from medsight.bundle import Bundle, provenance
    from medsight.classification.metrics import classification_metrics, expected_calibration_error
    from medsight.classification.trainer import predict_logits, probs_from_logits

    y_val = tensors["val"].labels.numpy()
    val_logits = predict_logits(model, tensors["val"])
    calibration = _choose_temperature(val_logits, y_val, head=cfg.model.head, cfg=cfg.eval)
    temperature = calibration.temperature
    val_probs = probs_from_logits(val_logits, cfg.model.head, temperature)
    threshold, note = _operating_threshold(y_val, val_probs, cfg.eval)
    if temperature is not None:
        note += f", on probabilities calibrated by temperature scaling (T = {temperature:.3f})"
    val_metrics = classification_metrics(y_val, val_probs, threshold)
    val_metrics["ece"] = expected_calibration_error(y_val, val_probs)
    return Bundle(
        task=cfg.task,
        model=cfg.model,
        preprocess=cfg.preprocess,
        label_names=ds.class_names,
        threshold=threshold,
        temperature=temperature,
        metrics={f"val_{k}": float(v) for k, v in val_metrics.items() if np.isscalar(v)},
        provenance=provenance(
            run=cfg.name,
            data=str(cfg.data.path),
            data_hash=data_hash(tensors["train"].ids, tensors["train"].labels.tolist()),
            data_config=cfg.data.model_dump(mode="json", exclude={"path", "class_names"}),
            eval_config=cfg.eval.model_dump(mode="json"),
            threshold_note=note,
            calibration=calibration.as_dict(),
            best_epoch=result.best_epoch,
            epochs_run=result.epochs_run,
            train_seconds=round(result.seconds, 1),
            stop_reason=result.stop_reason,
            n_train=len(tensors["train"].ids),
            synthetic=synthetic,
        ),
        state_dict=result.best_state,
    )


def _resolve(ds, data_cfg: DataConfig) -> dict[str, np.ndarray]:
    from medsight.data.splits import resolve_splits

    return resolve_splits(ds, data_cfg)


def _split_indices(ds, data_cfg: DataConfig, split: str) -> np.ndarray:
    splits = _resolve(ds, data_cfg)
    if split not in splits or not len(splits[split]):
        available = [k for k, v in splits.items() if len(v)]
        raise DatasetError(ds.root, f"has no '{split}' split", f"use --split with one of {available + ['all']}")
    return splits[split]


def _choose_temperature(val_logits, y_val: np.ndarray, *, head: str, cfg: EvalConfig):
    """Temperature scaling on the validation logits (``eval.calibration``), where the split supports it."""
    from medsight.classification.calibration import TemperatureChoice, choose_temperature

    if cfg.calibration == "none":
        return TemperatureChoice("off", "switched off (eval.calibration: none)")
    return choose_temperature(val_logits.numpy(), y_val, head=head)


def _score(model, tensors, *, head: str, temperature: float | None, cfg: EvalConfig) -> dict:
    """Calibrated and raw probabilities plus per-case entropy: the same for training and evaluation."""
    from medsight.classification.trainer import predict_logits, probs_from_logits
    from medsight.classification.uncertainty import case_entropy

    logits = predict_logits(model, tensors)
    entropy, info = case_entropy(model, tensors.images, head=head, temperature=temperature,
                                 method=cfg.uncertainty, passes=cfg.uncertainty_passes)
    return {
        "probs": probs_from_logits(logits, head, temperature),
        "uncalibrated": probs_from_logits(logits, head, None),
        "entropy": entropy,
        "uncertainty": info,
    }


def _calibration_kwargs(scored: dict, temperature: float | None, choice: dict | None) -> dict:
    """What :func:`evaluate_predictions` needs on calibration; the probabilities before scaling only when
    a temperature was applied (else they are the same probabilities, and a before/after plot would mislead)."""
    return {"uncalibrated": scored["uncalibrated"] if temperature is not None else None,
            "temperature": temperature, "temperature_choice": choice, "entropy": scored["entropy"],
            "uncertainty": scored["uncertainty"]}


def _operating_threshold(y_val: np.ndarray, val_probs: np.ndarray, cfg: EvalConfig) -> tuple[float | None, str]:
    """The binary operating point, chosen on validation and stated; None for multi-class (argmax)."""
    from medsight.classification.metrics import choose_threshold

    if val_probs.shape[1] != 2:
        return None, "multi-class: the predicted class is the most probable one"
    threshold = choose_threshold(
        y_val, val_probs, method=cfg.threshold, target_sensitivity=cfg.target_sensitivity, fixed=cfg.fixed_threshold
    )
    how = {
        "youden": "maximises Youden's J (sensitivity + specificity - 1)",
        "sensitivity": f"the highest threshold reaching sensitivity >= {cfg.target_sensitivity}",
        "fixed": "fixed in the config",
    }[cfg.threshold]
    return float(threshold), f"{how}, chosen on the validation split (n={len(y_val)})"


def data_hash(ids: list[str], labels: list[int]) -> str:
    digest = hashlib.sha256()
    for case, label in sorted(zip(ids, labels, strict=True)):
        digest.update(f"{case}\t{label}\n".encode())
    return digest.hexdigest()[:16]


def _write_bad_files(out: Path, bad: list[dict[str, str]]) -> None:
    if not bad:
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "skipped_files.json", json.dumps(bad, indent=2))
    from rich.console import Console

    Console(stderr=True).print(
        f"[yellow]skipped {len(bad)} unreadable file(s); listed in {out / 'skipped_files.json'}[/yellow]"
    )


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
