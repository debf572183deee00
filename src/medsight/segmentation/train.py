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
validates, checkpoints and writes the files above. ``train.compile`` and ``train.cpu_amp``
speed up the training step (:class:`~medsight.segmentation.step.PatchStep`). With ``train.ema``
the moving average of the weights (:mod:`medsight.training.weight_average`) is what is validated,
kept as best and shipped.

Example:
    >>> cfg = load_config(recipe="drive", overrides={"data.path": "data/drive/training"})
    >>> result = train_segmenter(cfg, out=Path("runs/drive"))
    >>> result["metrics"]["dice"], result["metrics"]["auc"]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsight.bundle import Bundle, provenance
from medsight.config import ModelConfig, RunConfig
from medsight.errors import ConfigError, MedsightError
from medsight.inference.postprocess import probs_to_labels
from medsight.inference.segment import sliding_window_probs
from medsight.models import create_model, list_models
from medsight.runtime import distributed
from medsight.runtime.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from medsight.runtime.device import pick_device, set_threads
from medsight.segmentation.cases import TrainingSet, training_set
from medsight.segmentation.losses import make_seg_loss
from medsight.segmentation.metrics import segmentation_case_metrics
from medsight.segmentation.patches import sample_patches
from medsight.segmentation.step import PatchStep
from medsight.segmentation.thresholds import centring_level, choose_thresholds
from medsight.training.callbacks import ProgressDisplay, TimeLimit, open_run_log, time_limit_reason
from medsight.training.optim import TimeBudget, build_optimizer, build_scheduler, current_lr
from medsight.training.weight_average import WeightAverage

#: a cross-validation fold keeps its validation cases' probabilities here, for the fold ensemble's threshold
VAL_PROBABILITIES = "val_probabilities"


def train_segmenter(cfg: RunConfig, *, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Train a segmenter as ``cfg`` says and write its run folder ``out``.

    ``cfg.model.name`` must be a segmentation model (``unet``, ``classic_unet``, ``dynunet``);
    ``unet`` and ``dynunet`` get their depth (and width) from the plan unless
    ``model.kwargs`` sets them. ``train.*`` gives the optimiser, schedule, epochs, patience
    (on val Dice), seed and time limit; ``segment.*`` the patches, loss and inference.

    Returns:
        ``{"best_epoch", "best_val_dice", "epochs_run", "stop_reason", "bundle", "metrics"}``; the stop
        reason is empty when the run trained all its epochs.

    Raises:
        DatasetError: fewer than 2 cases, or a case without a mask.
        ConfigError: a model that is not a segmenter, a patch of the wrong dimensionality.
        MedsightError: unreadable files or checkpoint.
    """
    started = time.perf_counter()
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
    state, best_state = _fit(cfg, data, net, device, out=out, resume=resume, progress=progress and main,
                             started=started)
    net.load_state_dict(best_state)
    result = {"best_epoch": state["best_epoch"], "best_val_dice": state["best_dice"], "epochs_run": state["epoch"],
              "stop_reason": state.get("stop_reason", "")}
    if not main:
        return {**result, "bundle": "", "metrics": {}}
    return {**result, **_ship(cfg, data, net, kwargs, state, best_state, device, out)}


def _fit(cfg: RunConfig, data: TrainingSet, net: torch.nn.Module, device: torch.device, *, out: Path,
         resume: bool, progress: bool, started: float) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The epochs: train on patches, validate, keep the best weights, checkpoint, log, stop on patience
    or the time limit. Returns the run's state (best epoch and Dice, epochs, seconds, history) and the
    best weights."""
    main = distributed.is_main()
    optimizer = build_optimizer(net.parameters(), cfg.train)
    budget = TimeBudget(cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, budget)
    loss_fn = _loss(cfg, data.n_classes)
    augment = _augmenter(cfg, len(data.patch))
    rng = np.random.default_rng(cfg.train.seed)  # the same on every rank: all draw the same global batch
    state: dict[str, Any] = {"epoch": 0, "best_dice": -1.0, "best_epoch": 0, "history": [], "seconds": 0.0}
    best_state: dict[str, torch.Tensor] = {}
    average = WeightAverage(net, cfg.train.ema) if cfg.train.ema else None
    epochs, patience, limit_min = cfg.train.epochs, cfg.train.patience, cfg.train.time_limit_min
    cut = None  # the epoch the time limit cut, continued where it stopped: {"steps", "train_loss", ...}
    if resume:  # a missing checkpoint is a clear error from load_checkpoint
        state = load_checkpoint(out / CHECKPOINT, model=net, optimizer=optimizer, scheduler=scheduler)
        best_state, prior_best = state.pop("best_state"), state.pop("prior_best")
        rng.bit_generator.state = state.pop("numpy_rng")
        _resume_average(average, state.pop("averaged"), out / CHECKPOINT)
        cut = state.pop("cut", None)
        if limit_min and state["seconds"] > limit_min * 60:
            epochs, cut = state["epoch"], None  # resumed past the time limit given now: nothing more to train
        elif cut is not None:  # back to before the cut epoch, which is trained to its end
            best_state = prior_best if cut["best_changed"] else best_state
            state.update(epoch=state["epoch"] - 1, history=state["history"][:-1], best_dice=cut["best_dice"],
                         best_epoch=cut["best_epoch"])
    validated = average.network if average else net  # what is validated, kept as best and shipped
    train_set = ([data.images[i] for i in data.train_idx], [data.labels[i] for i in data.train_idx])
    steps = cfg.segment.steps_per_epoch
    limit = TimeLimit(limit_min, state["seconds"], clock=time.perf_counter, started=started)
    with open_run_log(out, write=main) as run_log, \
            ProgressDisplay(progress, epochs, "val_dice", unit="patches") as display:
        step = PatchStep(net, optimizer, loss_fn, cfg, device, run_log, average)
        for epoch in range(state["epoch"] + 1, epochs + 1):
            display.start_epoch(epoch, steps, data.batch, cut["steps"] if cut else 0)
            lr = current_lr(optimizer)  # the rate this epoch trains at
            loss, done, seconds = _train_epoch(cfg, step, augment, rng, train_set, data.patch, data.batch, display,
                                               limit, cut)
            trained_now = done - (cut["steps"] if cut else 0)
            cut = None
            # rank 0's clock decides the time limit and the time-following learning rate on every rank
            seconds_so_far = distributed.broadcast(limit.elapsed())
            budget.update(seconds_so_far)
            if done == steps:  # a cut epoch keeps its rate: a resumed run finishes it at that rate
                scheduler.step()
            time_up = done < steps or limit.passed(seconds_so_far)
            validate = main and (epoch % cfg.segment.val_every == 0 or epoch == epochs or time_up)
            row = distributed.broadcast({
                "epoch": epoch, "train_loss": loss,
                "val_dice": _val_dice(cfg, validated, data, device) if validate else float("nan"), "lr": lr,
                "patches_per_s": round(trained_now * data.batch / seconds, 1),
            })
            before = {"best_dice": state["best_dice"], "best_epoch": state["best_epoch"]}
            prior_best = best_state
            if row["val_dice"] > state["best_dice"]:
                state.update(best_dice=row["val_dice"], best_epoch=epoch)
                best_state = {k: v.detach().cpu().clone() for k, v in validated.state_dict().items()}
            state["epoch"] = epoch
            state["seconds"] = limit.elapsed()
            state["history"].append({**row, "seconds": round(state["seconds"], 1)})
            stop = ""
            if patience and epoch - state["best_epoch"] >= patience:
                stop = f"no better val Dice for {patience} epochs"
            elif time_up:  # both tests read broadcast values, so every rank stops together
                stop = time_limit_reason(limit_min, (done, steps, epoch) if done < steps else None)
            state["stop_reason"] = stop
            saved = {**state, "numpy_rng": rng.bit_generator.state}
            best_changed = best_state is not prior_best
            if done < steps:
                saved["cut"] = {"steps": done, "train_loss": loss, "best_changed": best_changed, **before}
            if main:
                save_checkpoint(out / CHECKPOINT, model=net, optimizer=optimizer, scheduler=scheduler,
                                state=saved, best_state=best_state,
                                averaged=average.state_dict() if average else None,
                                prior_best=prior_best if done < steps and best_changed else None)
            run_log.write(state["history"])
            best = "  (best)" if state["best_epoch"] == epoch else ""
            display.end_epoch(state["history"][-1], best + (f"; stopping: {stop}" if stop else ""))
            if stop:
                run_log.note(f"stopped after epoch {epoch}: {stop}")
                break
    return state, best_state


def _ship(cfg: RunConfig, data: TrainingSet, net: torch.nn.Module, kwargs: dict[str, Any], state: dict[str, Any],
          best_state: dict[str, torch.Tensor], device: torch.device, out: Path) -> dict[str, Any]:
    """Choose the thresholds on the validation cases, save the bundle in ``out/model`` and score the
    validation cases with it (``out/metrics.json``, the report; a fold's probabilities).
    Returns ``{"bundle", "metrics"}``."""
    from medsight.inference.segmenter import Segmenter
    from medsight.segmentation.evaluate import evaluate_segmentation

    thresholds, note, level = _thresholds(cfg, net, data.validation(), data.patch, device, data.n_classes)
    bundle = _bundle(cfg, data, kwargs, thresholds, note, state, best_state, level)
    bundle_path = bundle.save(out / "model")
    metrics = evaluate_segmentation(
        Segmenter(bundle, device=str(device)), [data.cases[i] for i in data.val_idx], out=out,
        title=f"{cfg.name}: segmentation, validation cases",
        extra={"split": "val", "data": str(cfg.data.path), "model": cfg.model.name, "best_epoch": state["best_epoch"],
               "epochs_run": state["epoch"], "training_seconds": round(state["seconds"], 1),
               "threshold_note": note,
               "cases_per_split": {"train": len(data.train_idx), "val": len(data.val_idx)}},
        save_probabilities=out / VAL_PROBABILITIES if cfg.data.folds > 1 else None,
    )
    return {"bundle": str(bundle_path), "metrics": metrics}


def _resume_average(average: WeightAverage | None, saved: dict[str, torch.Tensor], checkpoint: Path) -> None:
    """Restore the weight average from the checkpoint; a checkpoint and a config that disagree about
    ``train.ema`` is a clear error (the average cannot be rebuilt from the saved weights)."""
    if average is None and not saved:
        return
    if average is None or not saved:
        problem = ("has a weight average but train.ema is 0" if saved
                   else f"has no weight average but train.ema is {average.decay}")
        raise MedsightError(checkpoint, problem, "resume with the train.ema the run started with")
    average.load_state_dict(saved)


def _loss(cfg: RunConfig, n_classes: int):
    """The configured training loss; bad ``segment.loss_kwargs`` are a ConfigError naming them."""
    seg = cfg.segment
    try:
        return make_seg_loss(seg.loss, num_classes=n_classes, deep_supervision=seg.deep_supervision,
                             cldice=seg.cldice, compile=cfg.train.compile, **seg.loss_kwargs)
    except ConfigError as exc:
        if not seg.loss_kwargs or exc.fix != "check the loss kwargs":
            raise
        raise ConfigError(f"segment.loss_kwargs={seg.loss_kwargs}", exc.problem,
                          f"give only options of the {seg.loss} loss") from exc


def _model_kwargs(cfg: RunConfig, plan: dict, patch: list[int]) -> dict[str, Any]:
    """Plan-derived defaults for the built-in segmenters, overridden by ``model.kwargs``.

    The plan's ``depth`` counts poolings; the networks' ``depth`` counts resolution levels (one more).
    """
    given = dict(cfg.model.kwargs)
    levels = plan["depth"] + 1
    if cfg.model.name == "unet":
        return {"base_features": plan["base_features"], "depth": levels, **given}
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


def _train_epoch(cfg: RunConfig, step: PatchStep, augment, rng, train_set, patch, batch, display,
                 limit: TimeLimit, cut: dict[str, Any] | None) -> tuple[float, int, float]:
    """One epoch of ``segment.steps_per_epoch`` patch batches, or fewer when the time limit is reached
    between two steps: ``(mean loss, steps done, seconds)``. ``cut`` (a resumed run's
    ``{"steps", "train_loss"}`` of the epoch its time limit cut) goes on after the steps already done.

    Every rank draws and augments the same global batch from the shared generator and trains
    on its share of it; the mean loss is over all ranks.
    """
    step.eager.train()
    steps, done = cfg.segment.steps_per_epoch, cut["steps"] if cut else 0
    total, start = torch.zeros(()), time.perf_counter()
    if cut is not None and distributed.is_main():  # the ranks' sums are added up: rank 0 carries the steps done
        total += cut["train_loss"] * done * distributed.world_size()
    while done < steps:
        x, y = sample_patches(*train_set, patch_size=patch, batch_size=batch,
                              foreground_fraction=cfg.segment.foreground_fraction, generator=rng)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if augment is not None:
            x, y = augment(x, y, generator=torch.Generator().manual_seed(int(rng.integers(2**31))))
        total += step(x, y).cpu()
        done += 1
        display.advance(1, lambda total=total, done=done: float(total) / done)
        if done < steps and limit.reached():
            break
    return distributed.mean_over_ranks(total, done), done, time.perf_counter() - start


def _val_dice(cfg: RunConfig, net: torch.nn.Module, data: TrainingSet, device: torch.device) -> float:
    """Mean over the validation cases of their mean foreground Dice at argmax, inside the ROI, on the
    training grid (early stopping's score)."""
    foreground = list(range(1, data.n_classes))
    per_case = []
    for i in data.val_idx:
        probs = sliding_window_probs(net, data.images[i], patch_size=data.patch, overlap=cfg.segment.overlap,
                                     device=device)
        scores = segmentation_case_metrics(probs_to_labels(probs), data.labels[i],
                                           spacing=data.target or data.cases[i][1].spacing,
                                           labels=foreground, roi=data.rois[i])
        per_case.append(np.nanmean([scores[k]["dice"] for k in foreground]))
    return float(np.nanmean(per_case))


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
    return Bundle(
        task="segmentation",
        model=ModelConfig(name=cfg.model.name, kwargs=kwargs),
        preprocess=cfg.preprocess.model_copy(update={
            "size": data.patch, "channels": data.images[0].shape[0],
            "normalize": "ct_window" if cfg.preprocess.normalize == "ct_window" else "none",
        }),
        label_names=[names[k] for k in range(data.n_classes)],
        metrics={"val_dice": state["best_dice"]},
        provenance=provenance(
            run=cfg.name, data=str(cfg.data.path), plan=data.plan, best_epoch=state["best_epoch"],
            epochs_run=state["epoch"], train_seconds=round(state["seconds"], 1), seed=cfg.train.seed,
            stop_reason=state.get("stop_reason", ""),
            threshold_note=note, data_config=cfg.data.model_dump(mode="json", exclude={"path", "class_names"}),
            split={split: [data.cases[i][0] for i in idx]
                   for split, idx in (("train", data.train_idx), ("val", data.val_idx))},
        ),
        state_dict=best_state,
        segmentation={
            "normalization": data.plan["normalization"],
            "overlap": cfg.segment.overlap,
            "mirror_tta": cfg.segment.mirror_tta,
            "transpose_tta": cfg.segment.transpose_tta,
            "largest_component": cfg.segment.largest_component,
            "target_spacing": data.target,
            "thresholds": {str(k): float(v) for k, v in thresholds.items()},
            "logit_median": level,
        },
    )
