"""The training loop: in-memory batches -> model -> loss -> optimizer, validated every epoch.

One small loop whose behaviour changes through :class:`~medsight.config.TrainConfig`,
never through subclasses. Each epoch draws all its randomness (shuffling, balanced
sampling, augmentation, dropout) from seeds derived from ``(cfg.seed, epoch)``, and a
checkpoint is written after every epoch, so a run stopped after epoch k and resumed
ends with exactly the weights of an uninterrupted run. ``train.time_limit_min`` is read between
steps: a run it cuts inside an epoch validates, checkpoints and ships what it has, and a resumed
run finishes that epoch from the step where it stopped, with the same random streams.

Example:
    >>> result = fit(model, train, val, cfg=TrainConfig(epochs=5), head="softmax", num_classes=2,
    ...              run_dir=Path("runs/demo"))
    >>> model.load_state_dict(result.best_state)
    >>> probs = predict_probs(model, val, head="softmax")     # (N, 2)
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsight.classification.batches import TensorSet, inverse_frequency_weights, iterate_batches
from medsight.classification.fit_checks import check_inputs, check_outputs
from medsight.classification.predict import batched_logits
from medsight.config import TrainConfig
from medsight.models.freezing import parameter_groups
from medsight.models.heads import logits_to_probs
from medsight.runtime import distributed
from medsight.runtime.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from medsight.runtime.device import autocast, grad_scaler, pick_device, set_threads, to_device
from medsight.training.callbacks import (
    Callback,
    EarlyStopping,
    ProgressDisplay,
    TimeLimit,
    open_run_log,
    time_limit_reason,
)
from medsight.training.optim import TimeBudget, build_optimizer, build_scheduler, current_lr, step_scheduler

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        best_state: CPU copy of the weights at the best epoch (by ``metric_name``).
        best_epoch: 1-based epoch of ``best_state``.
        best_metric: the monitored metric at ``best_epoch``.
        metric_name: the monitored ``metrics.csv`` column.
        history: one dict per epoch, the rows of ``metrics.csv``.
        stopped_early: training ended before ``cfg.epochs`` (patience or time limit).
        epochs_run: epochs completed by the whole run (resumed parts included).
        seconds: training + validation time of those epochs.
        stop_reason: why it stopped early ("" when it did not).
    """

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_metric: float
    metric_name: str
    history: list[dict[str, float]]
    stopped_early: bool
    epochs_run: int
    seconds: float
    stop_reason: str = ""


def fit(
    model: nn.Module,
    train: TensorSet,
    val: TensorSet,
    *,
    cfg: TrainConfig,
    head: str,
    num_classes: int,
    run_dir: Path,
    augment: Callable | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> FitResult:
    """Train ``model`` on ``train``, validate on ``val`` every epoch, keep the best weights.

    Writes ``run_dir/checkpoints/last.safetensors`` (every epoch), ``run_dir/metrics.csv``
    and ``run_dir/tensorboard/``, each whole or not at all (:mod:`medsight.atomic_write`). Under
    ``torchrun`` (see :mod:`medsight.runtime.distributed`) the model trains as DDP, each rank on its
    share of every global batch; rank 0 validates and alone writes those files; every rank resumes
    from the same checkpoint.

    Args:
        model: maps ``(N, C, *spatial)`` to logits ``(N, num_classes)`` (softmax head) or
            ``(N, 1)`` (sigmoid head).
        train: the training tensors.
        val: the validation tensors (loss and metrics every epoch; the best epoch is chosen on them).
        cfg: optimizer, schedule, loss options, early stopping, seed, threads, AMP, time limit.
        head: ``"softmax"`` (cross-entropy) or ``"sigmoid"`` (binary, BCE on one logit).
        num_classes: number of classes (2 for the sigmoid head).
        run_dir: the run folder.
        augment: ``augment(images, None, generator=g) -> (images, None)``, applied to each training
            batch on the CPU before it moves to the device; ``g`` is the epoch's generator.
        resume: continue from the checkpoint in ``run_dir``; False starts over, removing an
            earlier run's checkpoint, ``metrics.csv`` and TensorBoard events there.
        callbacks: ``on_epoch_end(epoch, row)`` after each epoch's checkpoint; raising stops the run.
        progress: live bar on a terminal; otherwise one line per epoch and a progress line every
            30 s during an epoch; False prints nothing.

    Raises:
        ConfigError: a head/metric/model output that does not fit the task, or settings DDP cannot honour.
        DatasetError: empty splits, labels outside ``0..num_classes-1``, a class with no training case.
        MedsightError: ``resume=True`` without a usable checkpoint.
        OutputWriteError: the disk is full (or the folder not writable); the last checkpoint is kept.
    """
    run_dir = Path(run_dir)
    check_inputs(train, val, cfg=cfg, head=head, num_classes=num_classes)
    distributed.check_config(cfg, distributed.world_size())
    main = distributed.is_main()  # only rank 0 writes the checkpoint, metrics.csv, TensorBoard, progress
    set_threads(distributed.threads_per_process(cfg.num_threads))
    device = pick_device(cfg.device)
    model.to(device)
    if train.images.ndim == 4:  # channels-last convolutions are ~1.5-2x faster on CPU
        model.to(memory_format=torch.channels_last)
    check_outputs(model, train.images[:2], head=head, num_classes=num_classes, device=device)
    optimizer = build_optimizer(parameter_groups(model, cfg), cfg)
    budget = TimeBudget(cfg)
    scheduler = build_scheduler(optimizer, cfg, budget)
    scaler = grad_scaler(device, cfg.amp)
    weights = inverse_frequency_weights(train.labels, num_classes)
    class_weights = weights.to(device) if cfg.class_weights == "balanced" else None
    train_loss = make_loss(head, cfg.label_smoothing, class_weights)
    val_loss = make_loss(head, 0.0, None)
    sample_weights = weights[train.labels] if cfg.balanced_sampling else None
    metric = cfg.early_stopping_metric
    stopper = EarlyStopping(metric, cfg.patience)
    run = _Run()
    checkpoint = run_dir / CHECKPOINT
    if resume:
        run = _resume(checkpoint, cfg, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                      stopper=stopper)
    elif main:
        _clear_run(run_dir)
    history, best_state, stop_reason = run.history, run.best_state, run.stop_reason
    net = distributed.wrap(model, device)  # DDP over the processes of a torchrun launch, else model
    limit = TimeLimit(cfg.time_limit_min, run.seconds, clock=time.perf_counter)
    steps = _num_batches(len(train), cfg.batch_size)
    with open_run_log(run_dir, write=main) as log, ProgressDisplay(progress and main, cfg.epochs, metric) as display:
        log.write_csv(history)
        for epoch in range(len(history) + 1, cfg.epochs + 1):
            if stop_reason:
                break
            epoch_start = time.perf_counter()
            cut, run.cut = run.cut, None  # a cut epoch is continued where it stopped, with its random streams
            generator = _seed_epoch(cfg.seed, epoch, seed_global=cut is None)
            display.start_epoch(epoch, steps, cfg.batch_size, cut["steps"] if cut else 0)
            net.train()
            row = {"epoch": epoch, "lr": current_lr(optimizer)}
            row["train_loss"], done = _train_epoch(
                net, train, cfg=cfg, loss_fn=train_loss, optimizer=optimizer, scaler=scaler,
                generator=generator, sample_weights=sample_weights, augment=augment, device=device,
                display=display, limit=limit, cut=cut,
            )
            if main:  # rank 0 validates; every rank takes its row, so all stop together
                row.update(_validate(model, val, cfg, head=head, loss_fn=val_loss, device=device))
            row = distributed.broadcast(row)
            before = {"early_stopping": stopper.state_dict(), "best_state": best_state}
            if stopper.update(epoch, row[metric]):
                best_state = _cpu_state(model)
            # rank 0's clock decides the time limit and the time-following rate, for every rank
            elapsed = distributed.broadcast(limit.elapsed())
            budget.update(elapsed)
            if done == steps:  # a cut epoch keeps its rate: a resumed run finishes it at that rate
                step_scheduler(scheduler, row[metric])
            row["seconds"] = time.perf_counter() - epoch_start
            history.append(row)
            state = {
                "epoch": epoch, "history": history, "early_stopping": stopper.state_dict(),
                "scaler": scaler.state_dict(), "seconds": elapsed,
            }
            prior_best = None
            if done < steps:
                stop_reason = time_limit_reason(cfg.time_limit_min, (done, steps, epoch))
                best_changed = best_state is not before["best_state"]
                state["cut"] = {"steps": done, "train_loss": row["train_loss"], "best_changed": best_changed,
                                "early_stopping": before["early_stopping"]}
                prior_best = before["best_state"] if best_changed else None
            else:
                stop_reason = _stop_reason(stopper, cfg, epoch, elapsed)  # broadcast inputs: the same on all ranks
            state["stop_reason"] = stop_reason
            if main:
                save_checkpoint(
                    checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, state=state,
                    best_state=best_state, prior_best=prior_best,
                )
            log.write(history)
            display.end_epoch(row, f"; stopping: {stop_reason}" if stop_reason else "")
            if stop_reason:
                log.note(f"stopped after epoch {epoch}: {stop_reason}")
            for callback in callbacks:
                callback.on_epoch_end(epoch, row)
    model.to(memory_format=torch.contiguous_format)  # hand back a plain model (export, bundles)
    return FitResult(
        best_state=best_state or _cpu_state(model),
        best_epoch=stopper.best_epoch,
        best_metric=float("nan") if stopper.best is None else float(stopper.best),
        metric_name=metric,
        history=history,
        stopped_early=bool(stop_reason),
        epochs_run=len(history),
        seconds=sum(row["seconds"] for row in history),
        stop_reason=stop_reason,
    )


def make_loss(head: str, label_smoothing: float, class_weights: torch.Tensor | None) -> Loss:
    """The training (or, with no smoothing and no weights, validation) loss for ``head``.

    ``softmax``: cross-entropy with label smoothing and optional per-class weights.
    ``sigmoid``: BCE-with-logits on one logit, targets smoothed towards 0.5, and
    ``pos_weight = w[1] / w[0]`` (negatives per positive) when class weights are given.
    """
    if head == "softmax":
        return lambda logits, labels: F.cross_entropy(
            logits.float(), labels, weight=class_weights, label_smoothing=label_smoothing
        )
    pos_weight = None if class_weights is None else class_weights[1:2] / class_weights[0]

    def binary(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = labels.float() * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits.float().reshape(-1), target, pos_weight=pos_weight)

    return binary


def _train_epoch(
    model: nn.Module,
    data: TensorSet,
    *,
    cfg: TrainConfig,
    loss_fn: Loss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
    sample_weights: torch.Tensor | None,
    augment: Callable | None,
    device: torch.device,
    display: ProgressDisplay,
    limit: TimeLimit,
    cut: dict[str, Any] | None = None,
) -> tuple[float, int]:
    """One pass over ``data``, or less when the time limit is reached between two steps.

    Returns ``(mean training loss, steps done)`` with one device sync per epoch. ``cut`` (a resumed
    run's ``{"steps", "train_loss"}`` of the epoch its time limit cut) skips the steps already
    trained, drawing their augmentations again so that the epoch's generator goes on where it was.
    Under DDP every rank draws and augments the same global batch and trains on its shard of it.
    """
    total = torch.zeros((), device=device)
    seen = skip = 0
    if cut is not None:
        skip = cut["steps"]
        if distributed.is_main():  # the ranks' sums are added up: rank 0 carries the steps already done
            seen = skip * cfg.batch_size
            total += cut["train_loss"] * seen
    steps = _num_batches(len(data), cfg.batch_size)
    batches = iterate_batches(
        data, cfg.batch_size, shuffle=True, generator=generator, sampler_weights=sample_weights,
        drop_last=len(data) > cfg.batch_size,
    )
    for step, (images, labels) in enumerate(batches, 1):
        if augment is not None:
            images, _ = augment(images, None, generator=generator)
        if step <= skip:
            continue
        images, labels = distributed.shard(images, labels)
        images, labels = to_device(images, device), labels.to(device, non_blocking=True)
        with autocast(device, cfg.amp, cpu_bf16=cfg.cpu_amp):
            logits = model(images)
        loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach() * len(labels)
        seen += len(labels)
        display.advance(1, lambda total=total, seen=seen: float(total) / seen)
        if step < steps and limit.reached():
            return distributed.mean_over_ranks(total, seen), step
    return distributed.mean_over_ranks(total, seen), steps


@dataclass
class _Run:
    """Where a run stands: what a fresh run starts from, or what :func:`_resume` read."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0  # trained before (the time limit counts it)
    stop_reason: str = ""  # non-empty: the run has nothing more to train
    cut: dict[str, Any] | None = None  # the epoch the time limit cut, to continue: {"steps", "train_loss"}


def _resume(checkpoint: Path, cfg: TrainConfig, *, model: nn.Module, optimizer, scheduler, scaler,
            stopper: EarlyStopping) -> _Run:
    """Load the checkpoint into the model, optimizer, scheduler, scaler and early stopping.

    The stop reason is non-empty when the run had already finished by early stopping or is past the
    time limit given now. A run its time limit cut inside an epoch, with time left now, goes back to
    the history, early stopping and best weights from before that epoch, and continues it.
    """
    saved = load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler)
    history, best_state, cut = saved["history"], saved["best_state"], saved.get("cut")
    stopper.load_state_dict(saved["early_stopping"])
    if saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    seconds = saved.get("seconds", sum(row["seconds"] for row in history))  # older checkpoints: summed epochs
    if stopper.should_stop:
        return _Run(history, best_state, seconds, saved["stop_reason"])
    reason = _time_up(cfg, seconds)
    if reason or cut is None:
        return _Run(history, best_state, seconds, reason)
    stopper.load_state_dict(cut["early_stopping"])
    return _Run(history[:-1], saved["prior_best"] if cut["best_changed"] else best_state, seconds, "", cut)


def _validate(model: nn.Module, val: TensorSet, cfg: TrainConfig, *, head: str, loss_fn: Loss,
              device: torch.device) -> dict[str, float]:
    """The validation loss and every scalar classification metric, for the epoch's row."""
    from medsight.classification.metrics import classification_metrics

    logits = batched_logits(model, val.images, batch_size=max(cfg.batch_size, 256), device=device, amp=cfg.amp)
    scores = classification_metrics(val.labels.numpy(), logits_to_probs(logits, head).numpy())
    return {"val_loss": float(loss_fn(logits, val.labels)),
            **{k: float(v) for k, v in scores.items() if isinstance(v, numbers.Real)}}


def _seed_epoch(seed: int, epoch: int, *, seed_global: bool = True) -> torch.Generator:
    """Seed the global torch RNG (dropout) and return the epoch's generator, both from (seed, epoch).

    ``seed_global=False`` (a cut epoch continued) leaves the global RNG as the checkpoint restored it.
    """
    data_seed, global_seed = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(2, dtype=np.uint64)
    if seed_global:
        torch.manual_seed(int(global_seed))
    return torch.Generator().manual_seed(int(data_seed))


def _num_batches(n: int, batch_size: int) -> int:
    return n // batch_size if n > batch_size else 1


def _stop_reason(stopper: EarlyStopping, cfg: TrainConfig, epoch: int, elapsed: float) -> str:
    if epoch >= cfg.epochs:
        return ""
    if stopper.should_stop:
        return f"early stopping: no better {stopper.metric} for {stopper.patience} epochs"
    return _time_up(cfg, elapsed)


def _time_up(cfg: TrainConfig, elapsed: float) -> str:
    if cfg.time_limit_min is not None and elapsed > cfg.time_limit_min * 60:
        return time_limit_reason(cfg.time_limit_min)
    return ""


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _clear_run(run_dir: Path) -> None:
    """Starting over: drop an earlier run's checkpoint, metrics.csv and TensorBoard events."""
    events = (run_dir / "tensorboard").glob("events.out.tfevents.*")
    for path in (run_dir / CHECKPOINT, run_dir / "metrics.csv", *events):
        path.unlink(missing_ok=True)
