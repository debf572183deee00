"""Train one classifier: its splits as tensors -> fit -> calibrated bundle -> evaluation of the held-out split.

``medsight train`` reaches :func:`train_classifier` through :func:`medsight.workflows.train.run_training`,
once per run or once per fold.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from medsight.classification.score import calibration_kwargs, score
from medsight.config import EvalConfig, RunConfig, save_config
from medsight.data.file_errors import write_skipped_files
from medsight.data.splits import resolve_splits
from medsight.errors import ConfigError
from medsight.inference.classifier import CalibratedClassifier

#: the summary line and report row of a run that ended before ``train.epochs``; its reason follows
STOPPED_EARLY = "stopped early"


def train_classifier(cfg: RunConfig, ds, *, out: Path, resume: bool, progress: bool) -> dict:
    import torch

    from medsight.classification.evaluate import evaluate_predictions
    from medsight.classification.trainer import fit
    from medsight.classification.uncertainty import check_dropout
    from medsight.models import create_model
    from medsight.runtime.distributed import is_main
    from medsight.training.unfreezing import prepare_model
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
    classifier = CalibratedClassifier(model, head=cfg.model.head, temperature=bundle.temperature)
    scored = score(classifier, tensors[report_split], cfg=cfg.eval)
    return evaluate_predictions(
        tensors[report_split].labels.numpy(),
        scored["probs"],
        label_names=ds.class_names,
        case_ids=tensors[report_split].ids,
        threshold=bundle.threshold,
        threshold_note=bundle.threshold_choice.note,
        cfg=cfg.eval,
        **calibration_kwargs(scored, bundle.temperature, bundle.threshold_choice.calibration),
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

    splits = {name: idx for name, idx in resolve_splits(ds, cfg.data).items() if len(idx)}
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


def _calibrated_bundle(cfg: RunConfig, ds, model, tensors: dict, result, synthetic: dict | None):
    """The trained model as a Bundle, with the temperature (``eval.calibration``) and the operating
    threshold (``eval.threshold``) chosen on the validation split, and its validation metrics."""
    from medsight.bundle import build_bundle, provenance
    from medsight.bundle_fields import DataSettings, ThresholdChoice
    from medsight.classification.metrics import classification_metrics, expected_calibration_error

    y_val = tensors["val"].labels.numpy()
    val_logits = CalibratedClassifier(model, head=cfg.model.head).logits(tensors["val"])
    calibration = _choose_temperature(val_logits, y_val, head=cfg.model.head, cfg=cfg.eval)
    temperature = calibration.temperature
    val_probs = CalibratedClassifier(model, head=cfg.model.head, temperature=temperature).probabilities(val_logits)
    threshold, note = _operating_threshold(y_val, val_probs, cfg.eval)
    if temperature is not None:
        note += f", on probabilities calibrated by temperature scaling (T = {temperature:.3f})"
    val_metrics = classification_metrics(y_val, val_probs, threshold)
    val_metrics["ece"] = expected_calibration_error(y_val, val_probs)
    return build_bundle(
        task=cfg.task,
        model=cfg.model,
        preprocess=cfg.preprocess,
        label_names=ds.class_names,
        threshold=threshold,
        temperature=temperature,
        metrics={f"val_{k}": float(v) for k, v in val_metrics.items() if np.isscalar(v)},
        provenance=provenance(
            run=cfg.name,
            best_epoch=result.best_epoch,
            epochs_run=result.epochs_run,
            train_seconds=round(result.seconds, 1),
            stop_reason=result.stop_reason,
            n_train=len(tensors["train"].ids),
            synthetic=synthetic,
        ),
        state_dict=result.best_state,
        data=DataSettings.of(cfg.data, hash=data_hash(tensors["train"].ids, tensors["train"].labels.tolist())),
        threshold_choice=ThresholdChoice(note=note, evaluation=cfg.eval, calibration=calibration.as_dict()),
    )


def _choose_temperature(val_logits, y_val: np.ndarray, *, head: str, cfg: EvalConfig):
    """Temperature scaling on the validation logits (``eval.calibration``), where the split supports it."""
    from medsight.classification.calibration import TemperatureChoice, choose_temperature

    if cfg.calibration == "none":
        return TemperatureChoice("off", "switched off (eval.calibration: none)")
    return choose_temperature(val_logits.numpy(), y_val, head=head)


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
