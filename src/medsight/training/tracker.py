"""The best value so far of the monitored metric, and the two callbacks that act on it.

One :class:`BestTracker` follows ``train.early_stopping_metric`` epoch by epoch (fastai's
``TrackerCallback`` idea): :class:`KeepBest` copies the validated weights whenever the tracker
reports an improvement, and :class:`EarlyStopping` ends the run after ``train.patience``
epochs without one. The training loop (:func:`medsight.training.loop.fit`) owns all three; a
task never counts epochs or compares metrics itself.

Example:
    >>> tracker = BestTracker("auc")
    >>> stopper, keep = EarlyStopping(tracker, patience=2), KeepBest(tracker)
    >>> for epoch, auc in enumerate([0.6, 0.7, 0.65, 0.64], 1):
    ...     keep.update(epoch, auc, network)
    >>> tracker.best_epoch, stopper.should_stop
    (2, True)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def lower_is_better(metric: str) -> bool:
    """Losses go down, every other metric goes up."""
    return metric.endswith("loss")


class BestTracker:
    """The best value of one metric so far, the epoch it came from, and the epochs since.

    The first value always counts; a number beats NaN (an epoch that was not validated, or a metric
    undefined on its data); NaN never beats anything; ties are not improvements.

    Args:
        metric: the ``metrics.csv`` column to watch (``auc``, ``val_loss``, ``val_dice``...).
    """

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, epoch: int, value: float) -> bool:
        """Record ``value`` for ``epoch``; True when it is the best so far."""
        if self._improves(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]

    def _improves(self, value: float) -> bool:
        best = self.best
        if best is None or math.isnan(best):
            return best is None or not math.isnan(value)
        return value < best if lower_is_better(self.metric) else value > best


class EarlyStopping:
    """Stop after ``patience`` epochs in a row without a new best on ``tracker`` (0: never)."""

    def __init__(self, tracker: BestTracker, patience: int) -> None:
        self.tracker = tracker
        self.patience = patience

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.tracker.bad_epochs >= self.patience

    def reason(self) -> str:
        """Why the run stops, in the words of ``metrics.csv``'s column and the patience."""
        return f"early stopping: no better {self.tracker.metric} for {self.patience} epochs"


class KeepBest:
    """The weights of the best epoch on ``tracker``, as CPU tensors (``state``: empty before the first)."""

    def __init__(self, tracker: BestTracker) -> None:
        self.tracker = tracker
        self.state: dict[str, torch.Tensor] = {}

    def update(self, epoch: int, value: float, network: nn.Module) -> bool:
        """Record the epoch's ``value`` on the tracker and copy ``network``'s weights when it is the best."""
        improved = self.tracker.update(epoch, value)
        if improved:
            self.state = cpu_state(network)
        return improved


def cpu_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous CPU copy of ``network``'s weights and buffers, shared with nothing."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in network.state_dict().items()}
