"""Optimizers and learning-rate schedules, built from :class:`~medsight.config.TrainConfig`.

Every schedule moves once per epoch. ``cosine``, ``step`` and ``none`` may start with a
linear warmup of ``warmup_epochs``; ``plateau`` watches the early-stopping metric.

=========  ==========================================================================
schedule   learning rate in epoch ``e`` (0-based), after ``w`` warmup epochs
=========  ==========================================================================
none       ``lr``
cosine     ``lr * 0.5 * (1 + cos(pi * (e - w) / (epochs - w)))``
step       ``lr * gamma ** ((e - w) // step_size)``
plateau    ``lr``, times ``gamma`` after each ``step_size`` epochs without improvement
=========  ==========================================================================

During warmup (``e < w``) the rate is ``lr * (e + 1) / (w + 1)``.

With ``time_limit_min`` set (and ``anneal_to_time_limit``, the default), ``cosine`` follows the larger
of its epoch progress ``(e - w) / (epochs - w)`` and the share of the time limit spent (a
:class:`TimeBudget`): a run its time limit stops ends with an annealed rate, on a slow machine
as on a fast one, instead of being cut off at a high rate.

Example:
    >>> optimizer = build_optimizer(model.parameters(), cfg)
    >>> budget = TimeBudget(cfg)
    >>> scheduler = build_scheduler(optimizer, cfg, budget)
    >>> for epoch in range(cfg.epochs):
    ...     ...  # train, validate
    ...     budget.update(seconds_since_start)
    ...     step_scheduler(scheduler, metric=val_auc)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from medsight.config import TrainConfig
from medsight.errors import ConfigError
from medsight.training.tracker import lower_is_better

Scheduler = LRScheduler | ReduceLROnPlateau


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Sequence[dict[str, Any]], cfg: TrainConfig
) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW over ``params``.

    Weight decay applies to weight matrices and kernels only; biases and normalisation
    scales (1-D parameters) are not decayed, as is usual for CNNs.

    ``params`` is either parameters (those with ``requires_grad`` are optimised) or, for
    fine-tuning, groups ``{"params": [...], "lr_scale": s}`` (see
    :func:`medsight.models.freezing.parameter_groups`): each group learns at ``cfg.lr * s``
    and keeps its frozen parameters, which are not updated until they are unfrozen.
    The head's group comes first, so :func:`current_lr` reports ``cfg.lr``.
    """
    params = list(params)
    if params and isinstance(params[0], dict):
        trainable = [p for group in params for p in group["params"] if p.requires_grad]
        scaled = [(list(group["params"]), float(group.get("lr_scale", 1.0))) for group in params]
    else:
        trainable = [p for p in params if p.requires_grad]
        scaled = [(trainable, 1.0)]
    groups = [
        {"params": [p for p in members if decay == (p.ndim > 1)], "lr": cfg.lr * scale,
         "weight_decay": cfg.weight_decay if decay else 0.0}
        for members, scale in scaled
        for decay in (True, False)
    ]
    groups = [group for group in groups if group["params"]]
    if not trainable:
        raise ConfigError("model", "has no trainable parameters", "unfreeze layers or choose another model")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class TimeBudget:
    """The share of ``cfg.time_limit_min`` a run has spent, which a ``cosine`` schedule follows when
    it is ahead of the epoch count. Always 0 without a time limit or with
    ``anneal_to_time_limit: false`` (then the schedule depends on the epoch alone, as it must for
    runs that should repeat exactly on another machine).

    Under DDP every rank must update it with the same (rank 0's) seconds.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        active = cfg.time_limit_min is not None and cfg.anneal_to_time_limit
        self.seconds = cfg.time_limit_min * 60 if active else None
        self.fraction = 0.0

    def update(self, elapsed: float) -> None:
        """Record ``elapsed``: the seconds the run counts against its limit, the time trained before
        a resume included."""
        if self.seconds:
            self.fraction = min(max(elapsed / self.seconds, 0.0), 1.0)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, budget: TimeBudget | None = None) -> Scheduler:
    """The per-epoch learning-rate schedule named by ``cfg.schedule`` (see the module table);
    ``cosine`` also follows ``budget`` when it is given.

    Raises:
        ConfigError: warmup with ``plateau``, or ``plateau`` with ``gamma`` 1 (it would never act).
    """
    if cfg.schedule == "plateau":
        if cfg.warmup_epochs:
            raise ConfigError(
                "train.warmup_epochs", "warmup is not available with schedule=plateau",
                "set warmup_epochs: 0 or use schedule: cosine",
            )
        if cfg.gamma >= 1.0:
            raise ConfigError("train.gamma", "schedule=plateau needs gamma below 1", "set e.g. gamma: 0.1")
        mode = "min" if lower_is_better(cfg.early_stopping_metric) else "max"
        return ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.gamma, patience=cfg.step_size - 1)
    return LambdaLR(optimizer, lr_lambda=lambda epoch: lr_factor(epoch, cfg, budget.fraction if budget else 0.0))


def lr_factor(epoch: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    """The multiple of ``cfg.lr`` used in ``epoch`` (0-based) by the non-plateau schedules, after
    ``time_fraction`` of the time limit (which only ``cosine`` follows, and only after warmup)."""
    warm = cfg.warmup_epochs
    if epoch < warm:
        return (epoch + 1) / (warm + 1)
    if cfg.schedule == "cosine":
        progress = min(max((epoch - warm) / max(cfg.epochs - warm, 1), time_fraction), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "step":
        return cfg.gamma ** ((epoch - warm) // cfg.step_size)
    return 1.0


def step_scheduler(scheduler: Scheduler, metric: float) -> None:
    """Advance the schedule by one epoch; ``metric`` matters only to ``plateau``."""
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step(metric)
    else:
        scheduler.step()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first parameter group (all groups share one schedule)."""
    return float(optimizer.param_groups[0]["lr"])
