"""Optimizers and learning-rate schedules: the LR a person expects in each epoch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medsight.config import TrainConfig
from medsight.errors import ConfigError
from medsight.training.optim import TimeBudget, build_optimizer, build_scheduler, current_lr, step_scheduler


def lrs_by_epoch(cfg: TrainConfig, metrics: list[float] | None = None) -> list[float]:
    """The learning rate used in each epoch, stepping the schedule as the trainer does."""
    optimizer = build_optimizer(nn.Linear(2, 2).parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    rates = []
    for epoch in range(cfg.epochs):
        rates.append(current_lr(optimizer))
        optimizer.step()  # no gradients: a no-op, in the order torch expects
        step_scheduler(scheduler, metric=metrics[epoch] if metrics else 0.0)
    return rates


def cosine(e: float, span: int) -> float:
    return 0.1 * 0.5 * (1 + math.cos(math.pi * e / span))


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"schedule": "none"}, [0.1] * 6),
        ({"schedule": "none", "warmup_epochs": 2}, [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1, 0.1]),
        ({"schedule": "step", "step_size": 2, "gamma": 0.5}, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]),
        ({"schedule": "cosine"}, [0.1, cosine(1, 6), 0.075, 0.05, cosine(4, 6), cosine(5, 6)]),
        ({"schedule": "cosine", "warmup_epochs": 2}, [1 / 30, 2 / 30, 0.1, cosine(1, 4), 0.05, cosine(3, 4)]),
    ],
)
def test_schedule_lr_per_epoch(settings: dict, expected: list[float]) -> None:
    cfg = TrainConfig(epochs=6, lr=0.1, **settings)
    assert lrs_by_epoch(cfg) == pytest.approx(expected, rel=1e-9)


def lrs_with_clock(cfg: TrainConfig, seconds_per_epoch: float) -> list[float]:
    """The learning rate of each epoch when every epoch takes ``seconds_per_epoch``, the budget
    updated before the schedule steps, as both training loops do."""
    optimizer = build_optimizer(nn.Linear(2, 2).parameters(), cfg)
    budget = TimeBudget(cfg)
    scheduler = build_scheduler(optimizer, cfg, budget)
    rates = []
    for epoch in range(1, cfg.epochs + 1):
        rates.append(current_lr(optimizer))
        optimizer.step()
        budget.update(epoch * seconds_per_epoch)
        step_scheduler(scheduler, metric=0.0)
    return rates


def test_cosine_anneals_to_the_time_limit_when_time_runs_ahead_of_the_epochs() -> None:
    """A 1-minute limit at 15 s an epoch: the run gets 4 of its 10 epochs, and its rate reaches the
    bottom of the cosine by the 4th (time share 0, 1/4, 1/2, 3/4) instead of staying near the top."""
    cfg = TrainConfig(epochs=10, lr=0.1, schedule="cosine", time_limit_min=1.0)
    assert lrs_with_clock(cfg, 15.0)[:4] == pytest.approx([0.1, cosine(1, 4), 0.05, cosine(3, 4)])
    by_epochs = TrainConfig(epochs=10, lr=0.1, schedule="cosine", time_limit_min=1.0, anneal_to_time_limit=False)
    assert lrs_with_clock(by_epochs, 15.0)[:4] == pytest.approx([cosine(e, 10) for e in range(4)])


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        # time behind the epochs: the epoch count leads, the same rates as without a limit
        ({"schedule": "cosine", "time_limit_min": 10.0}, [cosine(e, 6) for e in range(6)]),
        # warmup is by epochs; the cosine after it follows the time share (1/6, 2/6, ... of 6 s),
        # ahead of its epoch progress (0, 1/5, ...)
        ({"schedule": "cosine", "time_limit_min": 0.1, "warmup_epochs": 1},
         [0.05, cosine(1, 6), cosine(2, 6), cosine(3, 6), cosine(4, 6), cosine(5, 6)]),
        # only cosine follows the clock
        ({"schedule": "step", "step_size": 2, "gamma": 0.5, "time_limit_min": 0.01},
         [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]),
    ],
)
def test_time_budget_only_moves_a_cosine_forward(settings: dict, expected: list[float]) -> None:
    cfg = TrainConfig(**{"epochs": 6, "lr": 0.1, **settings})
    assert lrs_with_clock(cfg, 1.0) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("metric", "values", "expected"),
    [
        # auc improves twice, then stalls: after step_size=2 epochs without improvement, halve
        ("auc", [0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.9], [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025]),
        # a loss must go down to count as better
        ("val_loss", [1.0, 1.1, 1.2, 0.5, 0.6], [0.1, 0.1, 0.1, 0.05, 0.05]),
    ],
)
def test_plateau_follows_the_early_stopping_metric(metric: str, values: list, expected: list) -> None:
    cfg = TrainConfig(
        epochs=len(values), lr=0.1, schedule="plateau", step_size=2, gamma=0.5, early_stopping_metric=metric
    )
    assert lrs_by_epoch(cfg, values) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"schedule": "plateau", "warmup_epochs": 1}, ["train.warmup_epochs", "warmup_epochs: 0"]),
        ({"schedule": "plateau", "gamma": 1.0}, ["train.gamma", "below 1"]),
    ],
)
def test_impossible_schedules_are_config_errors(settings: dict, words: list[str]) -> None:
    optimizer = build_optimizer(nn.Linear(2, 2).parameters(), TrainConfig())
    with pytest.raises(ConfigError) as info:
        build_scheduler(optimizer, TrainConfig(**settings))
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(("name", "kind"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                             ("adamw", torch.optim.AdamW)])
def test_optimizer_kind_and_weight_decay_only_on_weights(name: str, kind: type) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    optimizer = build_optimizer(model.parameters(), TrainConfig(optimizer=name, lr=0.01, weight_decay=0.05))
    assert type(optimizer) is kind
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay[id(model[0].weight)] == 0.05
    assert decay[id(model[0].bias)] == decay[id(model[1].weight)] == decay[id(model[1].bias)] == 0.0
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.9


def test_frozen_model_is_a_config_error() -> None:
    layer = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(layer.parameters(), TrainConfig())
