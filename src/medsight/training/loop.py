"""The training loop every task uses: epochs of steps, validation, best weights, checkpoints, resume.

A task gives :func:`fit` a :class:`Task`: its network and optimiser, its loss, its batches (a
:class:`Batches`: what one epoch draws, from which random streams) and its validation. The loop does
the rest, once for classification, segmentation and SimCLR pretraining:

* the steps (:class:`~medsight.training.step.TrainStep`: DDP share, ``train.compile``, mixed
  precision, the weight average of ``train.ema``, which is what is validated, kept and shipped);
* the learning-rate schedule (:mod:`medsight.training.optim`) and ``train.time_limit_min``, read
  between steps: a run it cuts inside an epoch validates, checkpoints and returns what it has;
* the best epoch on ``train.early_stopping_metric`` (:mod:`medsight.training.tracker`: keep-best and
  early stopping on one tracker);
* a checkpoint after every epoch (:mod:`medsight.runtime.checkpoint`) and exact resume: a run
  killed after epoch k (or cut inside an epoch) and resumed ends with the weights of an unbroken run;
* ``metrics.csv``, TensorBoard and the progress display.

Under ``torchrun`` every rank draws the same global batch and trains on its share; rank 0 validates
and alone writes the files; every value that decides what happens next (the epoch's row, the clock)
is rank 0's, broadcast, so all ranks stop together.

Example:
    >>> task = Task(net, optimizer, loss, batches, validate=lambda network: {"auc": auc(network)},
    ...             metrics=("auc",))
    >>> result = fit(task, cfg=TrainConfig(epochs=5), device=torch.device("cpu"), run_dir=Path("runs/x"))
    >>> net.load_state_dict(result.best_state)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from medsight.config import TrainConfig
from medsight.errors import ConfigError
from medsight.runtime import distributed
from medsight.runtime.checkpoint import CHECKPOINT, save_checkpoint
from medsight.runtime.device import grad_scaler
from medsight.training.callbacks import Callback, ProgressDisplay, TimeLimit, open_run_log, time_limit_reason
from medsight.training.optim import TimeBudget, build_scheduler, current_lr, step_scheduler
from medsight.training.resume import Run, clear_run, resume_run, time_up
from medsight.training.step import Loss, TrainStep
from medsight.training.tracker import BestTracker, EarlyStopping, KeepBest, cpu_state
from medsight.training.weight_average import WeightAverage


def now() -> float:
    """The loop's clock (seconds); a task that starts the clock before calling :func:`fit` reads it here."""
    return time.perf_counter()


class Batches(Protocol):
    """What a task trains on, epoch by epoch.

    Attributes:
        steps: steps in a full epoch.
        items: items (images, patches) in one global step: the speed, and the weight of the steps a
            resumed run does not train again.
    """

    steps: int
    items: int

    def epoch(self, epoch: int, skip: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The global batches of ``epoch`` (1-based) after the first ``skip``, which a run its time
        limit cut has trained already; every rank yields the same batches."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able random state the checkpoint keeps (empty when each epoch seeds its own)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


@dataclass
class Task:
    """One task's part of a training run.

    Attributes:
        net: the network, on its device.
        optimizer: over ``net``'s parameters.
        loss: the training loss on ``(outputs, targets)``.
        batches: the training batches.
        validate: ``validate(network) -> {column: value}`` for the epoch's row, run on rank 0 in the
            epochs that validate; None: no validation (the row has the training loss only).
        metrics: the row's columns ``train.early_stopping_metric`` may name.
        validate_every: validate every N epochs, and always after the last and when the time limit stops.
        leading_columns: the first columns of ``metrics.csv``, in order (the rest follow as they come,
            ``seconds`` last): each task keeps the column order its users' scripts read.
    """

    net: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Loss
    batches: Batches
    validate: Callable[[nn.Module], dict[str, float]] | None
    metrics: Sequence[str]
    validate_every: int = 1
    leading_columns: Sequence[str] = ("epoch", "lr", "train_loss")


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        best_state: CPU copy of the weights (the average with ``train.ema``) at the best epoch.
        best_epoch: 1-based epoch of ``best_state``.
        best_metric: the monitored metric at ``best_epoch``.
        metric_name: the monitored ``metrics.csv`` column.
        history: one dict per epoch, the rows of ``metrics.csv``.
        stopped_early: training ended before ``cfg.epochs`` (patience or time limit).
        epochs_run: epochs completed by the whole run (resumed parts included).
        seconds: training + validation time of those epochs.
        elapsed: the time the run counts against its limit (from its first start, resumes included).
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
    elapsed: float
    stop_reason: str = ""


@dataclass
class _Loop:
    """What every epoch of one :func:`fit` call works with."""

    task: Task
    cfg: TrainConfig
    step: TrainStep
    scheduler: Any
    budget: TimeBudget
    limit: TimeLimit
    keep: KeepBest
    stopper: EarlyStopping
    average: WeightAverage | None
    display: ProgressDisplay
    speed_column: str | None

    @property
    def validated(self) -> nn.Module:
        """What is validated, kept as best and shipped: the weight average, or the trained network."""
        return self.average.network if self.average else self.task.net


def fit(task: Task, *, cfg: TrainConfig, device: torch.device, run_dir: Path, resume: bool = False,
        callbacks: Sequence[Callback] = (), progress: bool = True, started: float | None = None,
        unit: str = "images", speed_column: str | None = None) -> FitResult:
    """Train ``task`` for ``cfg.epochs``, validating, keeping the best weights and checkpointing each epoch.

    Writes ``run_dir/checkpoints/last.safetensors`` (every epoch), ``run_dir/metrics.csv`` and
    ``run_dir/tensorboard/``, each whole or not at all (rank 0 only).

    Args:
        task: the network, optimiser, loss, batches and validation.
        cfg: schedule, epochs, patience and metric, time limit, AMP, compile, EMA.
        device: where training runs.
        run_dir: the run folder.
        resume: continue from the checkpoint in ``run_dir``; False starts over, removing an earlier run's
            checkpoint, ``metrics.csv`` and TensorBoard events there.
        callbacks: ``on_epoch_end(epoch, row)`` after each epoch's checkpoint; raising stops the run.
        progress: live bar on a terminal; otherwise one line per epoch and a progress line every 30 s.
        started: the clock (:func:`now`) when the run started, if before this call; the time limit counts from it.
        unit: what a step trains on, for the progress lines' speed.
        speed_column: a ``metrics.csv`` column for the epoch's ``unit`` per second (None: none).

    Raises:
        ConfigError: ``train.early_stopping_metric`` names no column of ``task.metrics``.
        MedsightError: ``resume=True`` without a usable checkpoint, or with another ``train.ema``.
        OutputWriteError: the disk is full (or the folder not writable); the last checkpoint is kept.
    """
    run_dir, main = Path(run_dir), distributed.is_main()
    check_metric(cfg.early_stopping_metric, task.metrics)
    budget = TimeBudget(cfg)
    scheduler = build_scheduler(task.optimizer, cfg, budget)
    average = WeightAverage(task.net, cfg.ema) if cfg.ema else None  # before the DDP wrapper changes the net
    keep = KeepBest(BestTracker(cfg.early_stopping_metric))
    stopper = EarlyStopping(keep.tracker, cfg.patience)
    scaler = grad_scaler(device, cfg.amp)  # a pass-through unless float16 on CUDA
    run = Run()
    if resume:  # before anything is written: a refused resume leaves the run folder as it was
        run = resume_run(run_dir / CHECKPOINT, cfg, net=task.net, optimizer=task.optimizer, scheduler=scheduler,
                         scaler=scaler, average=average, keep=keep, stopper=stopper, batches=task.batches)
    elif main:
        clear_run(run_dir)
    limit = TimeLimit(cfg.time_limit_min, run.seconds, clock=now, started=started)
    with open_run_log(run_dir, write=main) as log, \
            ProgressDisplay(progress and main, cfg.epochs, cfg.early_stopping_metric, unit=unit) as display:
        step = TrainStep(task.net, task.optimizer, task.loss, cfg, device, log, average, scaler)
        loop = _Loop(task, cfg, step, scheduler, budget, limit, keep, stopper, average, display, speed_column)
        log.write_csv(run.history)
        for epoch in range(len(run.history) + 1, cfg.epochs + 1):
            if run.stop_reason:
                break
            row = _epoch(loop, run, epoch, device, run_dir, main)
            log.write(run.history)
            mark = "  (best)" if keep.tracker.best_epoch == epoch else ""
            display.end_epoch(row, mark + (f"; stopping: {run.stop_reason}" if run.stop_reason else ""))
            if run.stop_reason:
                log.note(f"stopped after epoch {epoch}: {run.stop_reason}")
            for callback in callbacks:
                callback.on_epoch_end(epoch, row)
    tracker = keep.tracker
    return FitResult(
        best_state=keep.state or cpu_state(average.network if average else task.net),
        best_epoch=tracker.best_epoch, best_metric=float("nan") if tracker.best is None else float(tracker.best),
        metric_name=tracker.metric, history=run.history, stopped_early=bool(run.stop_reason),
        epochs_run=len(run.history), seconds=sum(row["seconds"] for row in run.history), elapsed=run.seconds,
        stop_reason=run.stop_reason,
    )


def check_metric(metric: str, available: Sequence[str]) -> None:
    """``train.early_stopping_metric`` must name a column the task's rows have."""
    if metric not in available:
        raise ConfigError(f"train.early_stopping_metric={metric}", "not a validation metric of this task",
                          f"choose one of: {', '.join(available)}")


def _epoch(loop: _Loop, run: Run, epoch: int, device: torch.device, run_dir: Path, main: bool) -> dict[str, float]:
    """Train, validate and checkpoint one epoch (a cut one from where it stopped); returns its row."""
    task, cfg, tracker = loop.task, loop.cfg, loop.keep.tracker
    epoch_start = now()
    cut, run.cut = run.cut, None  # a cut epoch is continued where it stopped, with its random streams
    lr = current_lr(task.optimizer)  # the rate this epoch trains at
    loss, done, train_seconds = _train(loop, epoch, cut, device, epoch_start)
    steps = task.batches.steps
    elapsed = distributed.broadcast(loop.limit.elapsed())  # rank 0's clock decides, for every rank
    loop.budget.update(elapsed)
    time_is_up = done < steps or loop.limit.passed(elapsed)
    row: dict[str, float] = {"epoch": epoch, "lr": lr, "train_loss": loss}
    if task.validate is not None:
        due = epoch % task.validate_every == 0 or epoch == cfg.epochs or time_is_up
        row.update(task.validate(loop.validated) if main and due else
                   {key: float("nan") for key in task.metrics if key != "train_loss"})
    if loop.speed_column:
        trained_now = done - (cut["steps"] if cut else 0)
        row[loop.speed_column] = round(trained_now * task.batches.items / train_seconds, 1)
    row = {**{key: row[key] for key in task.leading_columns if key in row}, **row}
    row = distributed.broadcast(row)  # every rank takes rank 0's row, so all stop together
    before = {"tracker": tracker.state_dict(), "best": loop.keep.state}
    loop.keep.update(epoch, row[tracker.metric], loop.validated)
    if done == steps:  # a cut epoch keeps its rate: a resumed run finishes it at that rate
        step_scheduler(loop.scheduler, row[tracker.metric])
    row["seconds"] = now() - epoch_start
    run.history.append(row)
    run.seconds = elapsed
    state = {"epoch": epoch, "history": run.history, "early_stopping": tracker.state_dict(),
             "scaler": loop.step.scaler.state_dict(), "seconds": elapsed, "data": task.batches.state_dict()}
    prior_best = None
    if done < steps:
        run.stop_reason = time_limit_reason(cfg.time_limit_min, (done, steps, epoch))
        best_changed = loop.keep.state is not before["best"]
        state["cut"] = {"steps": done, "train_loss": loss, "best_changed": best_changed,
                        "early_stopping": before["tracker"]}
        prior_best = before["best"] if best_changed else None
    else:
        run.stop_reason = _stop_reason(loop, epoch, elapsed)
    state["stop_reason"] = run.stop_reason
    if main:
        save_checkpoint(run_dir / CHECKPOINT, model=task.net, optimizer=task.optimizer, scheduler=loop.scheduler,
                        state=state, best_state=loop.keep.state,
                        averaged=loop.average.state_dict() if loop.average else None, prior_best=prior_best)
    return row


def _train(loop: _Loop, epoch: int, cut: dict[str, Any] | None, device: torch.device,
           started: float) -> tuple[float, int, float]:
    """The epoch's steps, or fewer when the time limit is reached between two steps.

    Returns ``(mean training loss per item, steps done, seconds since started)`` with one device sync. A cut epoch
    (``cut``: a resumed run's ``{"steps", "train_loss"}``) goes on after the steps already done; rank 0
    carries their loss, as the ranks' sums are added up.
    """
    batches = loop.task.batches
    done = cut["steps"] if cut else 0
    loop.display.start_epoch(epoch, batches.steps, batches.items, done)
    loop.step.train()
    total, seen = torch.zeros((), device=device), 0
    if cut is not None and distributed.is_main():
        seen = done * batches.items
        total += cut["train_loss"] * seen
    for x, y in batches.epoch(epoch, done):
        loss, items = loop.step(x, y)
        total += loss * items
        seen += items
        done += 1
        loop.display.advance(1, lambda total=total, seen=seen: float(total) / seen)
        if done < batches.steps and loop.limit.reached():
            break
    return distributed.mean_over_ranks(total, seen), done, now() - started


def _stop_reason(loop: _Loop, epoch: int, elapsed: float) -> str:
    """After a whole epoch: why the run stops here ("" when it trains on, or when this was its last epoch)."""
    if epoch >= loop.cfg.epochs:
        return ""
    if loop.stopper.should_stop:
        return loop.stopper.reason()
    return time_up(loop.cfg, elapsed)
