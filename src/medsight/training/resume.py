"""Where a run stands when :func:`medsight.training.loop.fit` starts: fresh, or read back from its checkpoint.

A resumed run gets back its weights, optimiser, schedule, loss scaler, random streams, the task's own
random state (:meth:`~medsight.training.loop.Batches.state_dict`), the weight average, the tracker and
the best weights. A run its time limit cut inside an epoch goes back to the history, tracker and best
weights from before that epoch and continues it from the step where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medsight.config import TrainConfig
from medsight.errors import MedsightError
from medsight.runtime.checkpoint import CHECKPOINT, load_checkpoint
from medsight.training.callbacks import time_limit_reason
from medsight.training.tracker import EarlyStopping, KeepBest
from medsight.training.weight_average import WeightAverage


@dataclass
class Run:
    """Where a run stands: what a fresh run starts from, or what :func:`resume_run` read."""

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0  # counted against the time limit (the time trained before a resume included)
    stop_reason: str = ""  # non-empty: the run has nothing more to train
    cut: dict[str, Any] | None = None  # the epoch the time limit cut, to continue: {"steps", "train_loss"}


def resume_run(checkpoint: Path, cfg: TrainConfig, *, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler, scaler: torch.amp.GradScaler, average: WeightAverage | None, keep: KeepBest,
               stopper: EarlyStopping, batches) -> Run:
    """Load the checkpoint into the network, optimiser, schedule, scaler, batches, average and tracker.

    The stop reason is non-empty when the run had already stopped early or is past the time limit
    given now (nothing more is trained, and no checkpoint written).

    Raises:
        MedsightError: no usable checkpoint, or one that disagrees with ``train.ema``.
    """
    saved = load_checkpoint(checkpoint, model=net, optimizer=optimizer, scheduler=scheduler)
    history, cut = saved["history"], saved.get("cut")
    resume_average(average, saved["averaged"], checkpoint)
    keep.tracker.load_state_dict(saved["early_stopping"])
    keep.state = saved["best_state"]
    if saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    batches.load_state_dict(saved["data"])
    seconds = saved["seconds"]
    if stopper.should_stop:
        return Run(history, seconds, saved["stop_reason"])
    reason = time_up(cfg, seconds)
    if reason or cut is None:
        return Run(history, seconds, reason)
    keep.tracker.load_state_dict(cut["early_stopping"])
    if cut["best_changed"]:
        keep.state = saved["prior_best"]
    return Run(history[:-1], seconds, "", cut)


def resume_average(average: WeightAverage | None, saved: dict[str, torch.Tensor], checkpoint: Path) -> None:
    """Restore the weight average from the checkpoint; a checkpoint and a config that disagree about
    ``train.ema`` is a clear error (the average cannot be rebuilt from the saved weights)."""
    if average is None and not saved:
        return
    if average is None or not saved:
        problem = ("has a weight average but train.ema is 0" if saved
                   else f"has no weight average but train.ema is {average.decay}")
        raise MedsightError(checkpoint, problem, "resume with the train.ema the run started with")
    average.load_state_dict(saved)


def time_up(cfg: TrainConfig, elapsed: float) -> str:
    """The stop reason when ``elapsed`` seconds are past ``train.time_limit_min`` ("" otherwise)."""
    if cfg.time_limit_min is not None and elapsed > cfg.time_limit_min * 60:
        return time_limit_reason(cfg.time_limit_min)
    return ""


def clear_run(run_dir: Path) -> None:
    """Starting over: drop an earlier run's checkpoint, metrics.csv and TensorBoard events."""
    events = (run_dir / "tensorboard").glob("events.out.tfevents.*")
    for path in (run_dir / CHECKPOINT, run_dir / "metrics.csv", *events):
        path.unlink(missing_ok=True)
