"""Segmentation training end to end: data -> plan -> patch training -> bundle -> evaluation.

``train_segmenter`` opens a segmentation data set, plans it (``medsight plan``; overridden by
``segment.*`` and ``segment.plan``), splits its cases, trains on random patches (foreground
oversampled, augmented by ``augment.*``), validates every ``segment.val_every`` epochs by sliding-window
prediction (mean foreground Dice, inside the region of interest), checkpoints each epoch, and writes:

    out/config.yaml, out/plan.json       what was asked and what was planned
    out/checkpoints/last.safetensors     resumable training state (as classification)
    out/metrics.csv, out/tensorboard/    one row per epoch
    out/model/                           the best model as a Bundle, with its inference settings
    out/metrics.json, per_case.csv, report.html
                                         the validation cases scored by the bundle itself
    out/val_probabilities/<case>.npy     a cross-validation fold's: its validation probabilities
                                         (float16), which the fold ensemble is tuned on

``train.time_limit_min`` is read between steps: a run it cuts inside an epoch validates, checkpoints and
ships the bundle there, and says so (``stop_reason``); ``--resume`` finishes that epoch from the step
where it stopped. A full disk is one :class:`~medsight.errors.OutputWriteError`; the last checkpoint stays.

Binary tasks pick the foreground threshold that maximises the pooled validation Dice (unless
``segment.thresholds`` gives one); the bundle keeps it, and evaluation and prediction use it.

Under ``torchrun`` (``medsight train --nproc N``) every process draws the same seeded global
batch of patches and trains on its share (:mod:`medsight.runtime.distributed`); rank 0 alone
validates, checkpoints and writes the files above. The epochs are the one training loop's
(:func:`medsight.training.loop.fit`): ``train.compile`` and ``train.cpu_amp`` speed up its step, and
with ``train.ema`` the moving average of the weights is what is validated, kept as best and shipped.
The best epoch and early stopping follow ``train.early_stopping_metric`` (``val_dice`` unless set).

Example:
    >>> cfg = load_config(recipe="drive", overrides={"data.path": "data/drive/training"})
    >>> result = train_segmenter(cfg, out=Path("runs/drive"))
    >>> result["metrics"]["dice"], result["metrics"]["auc"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medsight.bundle import Bundle, build_bundle, provenance
from medsight.bundle_fields import DataSettings, SegmentationSettings, SplitRecord, ThresholdChoice
from medsight.config import ModelConfig, RunConfig
from medsight.errors import ConfigError
from medsight.inference.segment import sliding_window_probs
from medsight.models import create_model, list_models
from medsight.runtime import distributed
from medsight.runtime.device import pick_device, set_threads
from medsight.segmentation.cases import TrainingSet, training_set
from medsight.segmentation.losses import make_seg_loss
from medsight.segmentation.plan import Plan
from medsight.segmentation.step import METRICS, PatchBatches, val_dice
from medsight.segmentation.thresholds import centring_level, choose_thresholds
from medsight.training.loop import FitResult, Task, check_metric, fit, now
from medsight.training.optim import build_optimizer

#: a cross-validation fold keeps its validation cases' probabilities here, for the fold ensemble's threshold
VAL_PROBABILITIES = "val_probabilities"


def train_segmenter(cfg: RunConfig, *, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Train a segmenter as ``cfg`` says and write its run folder ``out``.

    ``cfg.model.name`` must be a segmentation model (``unet``, ``classic_unet``, ``dynunet``);
    ``unet`` and ``dynunet`` get their depth (and width) from the plan unless
    ``model.kwargs`` sets them. ``train.*`` gives the optimiser, schedule, epochs, patience
    (on ``train.early_stopping_metric``: val Dice unless set), seed and time limit; ``segment.*`` the
    patches, loss and inference.

    Returns:
        ``{"best_epoch", "best_val_dice", "epochs_run", "stop_reason", "bundle", "metrics"}``
        (``best_val_dice``: the best epoch's val Dice); the stop reason is empty when the run trained
        all its epochs.

    Raises:
        DatasetError: fewer than 2 cases, or a case without a mask.
        ConfigError: a model that is not a segmenter, a patch of the wrong dimensionality.
        MedsightError: unreadable files or checkpoint.
    """
    started = now()
    check_metric(cfg.train.early_stopping_metric, METRICS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()  # under DDP rank 0 alone validates, checkpoints, logs and writes the bundle
    set_threads(distributed.threads_per_process(cfg.train.num_threads))
    torch.manual_seed(cfg.train.seed)
    if cfg.model.name not in list_models("segmentation"):
        raise ConfigError(
            f"model.name={cfg.model.name}", "is not a segmentation model",
            f"choose one of: {', '.join(list_models('segmentation'))}",
        )
    data = training_set(cfg, plan_dir=out if main else None, progress=progress)
    kwargs = _model_kwargs(cfg, data.plan, data.patch)
    net = create_model(
        cfg.model.name, in_channels=data.images[0].shape[0], num_outputs=data.n_classes,
        spatial_dims=len(data.patch), **kwargs,
    )
    device = pick_device(cfg.train.device)
    net.to(device)
    if len(data.patch) == 2:  # channels-last 2D convolutions: a training step 4% faster on a 2-core CPU
        net.to(memory_format=torch.channels_last)
    fitted = _fit(cfg, data, net, device, out=out, resume=resume, progress=progress and main, started=started)
    best_state = fitted.best_state
    net.load_state_dict(best_state)
    best_dice = fitted.history[fitted.best_epoch - 1]["val_dice"] if fitted.best_epoch else float("nan")
    state = {"best_epoch": fitted.best_epoch, "best_dice": best_dice, "epoch": fitted.epochs_run,
             "seconds": fitted.elapsed, "stop_reason": fitted.stop_reason}
    result = {"best_epoch": fitted.best_epoch, "best_val_dice": best_dice, "epochs_run": fitted.epochs_run,
              "stop_reason": fitted.stop_reason}
    if not main:
        return {**result, "bundle": "", "metrics": {}}
    return {**result, **_ship(cfg, data, net, kwargs, state, best_state, device, out)}


def _fit(cfg: RunConfig, data: TrainingSet, net: torch.nn.Module, device: torch.device, *, out: Path,
         resume: bool, progress: bool, started: float) -> FitResult:
    """The epochs (:func:`medsight.training.loop.fit`): train on patches, validate every ``segment.val_every``
    epochs, keep the best weights on ``train.early_stopping_metric``, checkpoint, log, stop on patience
    or the time limit."""
    task = Task(
        net=net,
        optimizer=build_optimizer(net.parameters(), cfg.train),
        loss=_loss(cfg, data.n_classes),
        batches=PatchBatches(cfg, data, _augmenter(cfg, len(data.patch))),
        validate=lambda network: {"val_dice": val_dice(cfg, network, data, device)},
        metrics=METRICS,
        validate_every=cfg.segment.val_every,
        leading_columns=("epoch", "train_loss", "val_dice", "lr"),
    )
    return fit(task, cfg=cfg.train, device=device, run_dir=out, resume=resume, progress=progress, started=started,
               unit="patches", speed_column="patches_per_s")


def _ship(cfg: RunConfig, data: TrainingSet, net: torch.nn.Module, kwargs: dict[str, Any], state: dict[str, Any],
          best_state: dict[str, torch.Tensor], device: torch.device, out: Path) -> dict[str, Any]:
    """Choose the thresholds on the validation cases, measure the inference profiles on them (not for a fold's
    model), save the bundle in ``out/model`` and score the validation cases with it, with its default profile
    (``out/metrics.json``, the report; a fold's probabilities).
    Returns ``{"bundle", "metrics"}``."""
    from medsight.inference.segmenter import Segmenter
    from medsight.segmentation.evaluate import evaluate_segmentation
    from medsight.segmentation.profiles import with_profiles

    thresholds, note, level = _thresholds(cfg, net, data.validation(), data.patch, device, data.n_classes)
    bundle = _bundle(cfg, data, kwargs, thresholds, note, state, best_state, level)
    val_cases = [data.cases[i] for i in data.val_idx]
    if cfg.data.folds == 1:  # a fold's model is measured in its ensemble, out of fold
        segmenter = Segmenter(bundle, device=str(device))
        bundle.segmentation = with_profiles(bundle.segmentation, lambda _: segmenter, val_cases)
    bundle_path = bundle.save(out / "model")
    metrics = evaluate_segmentation(
        Segmenter(bundle, device=str(device)), val_cases, out=out,
        title=f"{cfg.name}: segmentation, validation cases",
        extra={"split": "val", "data": str(cfg.data.path), "model": cfg.model.name, "best_epoch": state["best_epoch"],
               "epochs_run": state["epoch"], "training_seconds": round(state["seconds"], 1),
               "threshold_note": note,
               "cases_per_split": {"train": len(data.train_idx), "val": len(data.val_idx)}},
        save_probabilities=out / VAL_PROBABILITIES if cfg.data.folds > 1 else None,
    )
    return {"bundle": str(bundle_path), "metrics": metrics}


def _loss(cfg: RunConfig, n_classes: int):
    """The configured training loss; bad ``segment.loss_kwargs`` are a ConfigError naming them."""
    seg = cfg.segment
    try:
        return make_seg_loss(seg.loss, num_classes=n_classes, deep_supervision=seg.deep_supervision,
                             cldice=seg.cldice, compile=bool(cfg.train.compile), **seg.loss_kwargs)
    except ConfigError as exc:
        if not seg.loss_kwargs or exc.fix != "check the loss kwargs":
            raise
        raise ConfigError(f"segment.loss_kwargs={seg.loss_kwargs}", exc.problem,
                          f"give only options of the {seg.loss} loss") from exc


def _model_kwargs(cfg: RunConfig, plan: Plan, patch: list[int]) -> dict[str, Any]:
    """Plan-derived defaults for the built-in segmenters, overridden by ``model.kwargs``.

    The plan's ``depth`` counts poolings; the networks' ``depth`` counts resolution levels (one more).
    """
    given = dict(cfg.model.kwargs)
    levels = plan.depth + 1
    if cfg.model.name == "unet":
        return {"base_features": plan.base_features, "depth": levels, **given}
    if cfg.model.name == "dynunet":
        return {"depth": levels, "patch_size": patch, "deep_supervision": cfg.segment.deep_supervision, **given}
    if cfg.segment.deep_supervision:
        raise ConfigError("segment.deep_supervision", f"{cfg.model.name} has no deep supervision heads",
                          "use model.name=dynunet or set segment.deep_supervision=false")
    return given


def _augmenter(cfg: RunConfig, spatial_dims: int):
    from medsight.transforms import BatchAugment

    augment = BatchAugment(cfg.augment, spatial_dims)
    return augment if augment.enabled else None


def _thresholds(cfg: RunConfig, net, val_set, patch, device, n_classes: int):
    """:func:`choose_thresholds` on the validation cases (on the training grid), and with
    ``segment.centre_logits`` the bundle's ``logit_median`` (:func:`centring_level`; else None),
    the thresholds then being chosen on the centred probabilities."""
    def probs():
        for image, labels, roi in val_set:
            yield sliding_window_probs(net, image, patch_size=patch, overlap=cfg.segment.overlap,
                                       mirror_tta=cfg.segment.mirror_tta, transpose_tta=cfg.segment.transpose_tta,
                                       device=device), labels, roi

    level, centred = centring_level(cfg, probs)
    return (*choose_thresholds(cfg, n_classes, centred, f"the {len(val_set)} validation cases"), level)


def _bundle(cfg: RunConfig, data: TrainingSet, kwargs: dict[str, Any], thresholds: dict[int, float], note: str,
            state: dict[str, Any], best_state: dict[str, torch.Tensor], level: float | None) -> Bundle:
    names = {k: data.dataset.label_names.get(k, f"label_{k}") for k in range(data.n_classes)}
    return build_bundle(
        task="segmentation",
        model=ModelConfig(name=cfg.model.name, kwargs=kwargs),
        preprocess=cfg.preprocess.model_copy(update={
            "size": data.patch, "channels": data.images[0].shape[0],
            "normalize": "ct_window" if cfg.preprocess.normalize == "ct_window" else "none",
        }),
        label_names=[names[k] for k in range(data.n_classes)],
        metrics={"val_dice": state["best_dice"]},
        provenance=provenance(
            run=cfg.name, plan=data.plan.to_json(), best_epoch=state["best_epoch"],
            epochs_run=state["epoch"], train_seconds=round(state["seconds"], 1), seed=cfg.train.seed,
            stop_reason=state.get("stop_reason", ""),
        ),
        state_dict=best_state,
        segmentation=SegmentationSettings(
            normalization=data.plan.normalization, overlap=cfg.segment.overlap, mirror_tta=cfg.segment.mirror_tta,
            transpose_tta=cfg.segment.transpose_tta, largest_component=cfg.segment.largest_component,
            target_spacing=data.target, thresholds=thresholds, logit_median=level,
        ),
        data=DataSettings.of(cfg.data),
        split=SplitRecord(cases={split: [data.cases[i][0] for i in idx]
                                 for split, idx in (("train", data.train_idx), ("val", data.val_idx))}),
        threshold_choice=ThresholdChoice(note=note),
    )
