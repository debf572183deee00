"""Checkpoints: exact round trip, RNG states, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from medsight.config import TrainConfig
from medsight.errors import MedsightError
from medsight.runtime.checkpoint import load_checkpoint, save_checkpoint
from medsight.training.optim import build_optimizer, build_scheduler


def trained_parts(seed: int = 0, width: int = 4):
    """A model, optimizer and scheduler with non-trivial state after three steps."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width), nn.Linear(width, 2))
    cfg = TrainConfig(optimizer="adamw", schedule="step", step_size=1, gamma=0.5)
    optimizer = build_optimizer(model.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 3)).square().mean().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def save(path: Path, model, optimizer, scheduler, epoch: int) -> None:
    best = {k: v + 1 for k, v in model.state_dict().items()}
    state = {"epoch": epoch, "history": [{"epoch": 1, "auc": float("nan")}]}
    save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, state=state, best_state=best)


def test_round_trip_restores_everything_exactly(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.safetensors"
    model, optimizer, scheduler = trained_parts()
    save(path, model, optimizer, scheduler, epoch=3)
    expected_draws = torch.rand(3), np.random.rand(3), random.random()

    fresh_model, fresh_optimizer, fresh_scheduler = trained_parts(seed=1)
    torch.manual_seed(7)
    state = load_checkpoint(path, model=fresh_model, optimizer=fresh_optimizer, scheduler=fresh_scheduler)

    assert state["epoch"] == 3 and np.isnan(state["history"][0]["auc"])
    for key, value in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[key], value), key
        assert torch.equal(state["best_state"][key], value + 1), key
    fresh_slots = fresh_optimizer.state_dict()["state"]
    for index, slots in optimizer.state_dict()["state"].items():
        for name, value in slots.items():
            assert torch.equal(fresh_slots[index][name], value), (index, name)
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**3)
    assert fresh_scheduler.state_dict()["last_epoch"] == 3
    assert torch.equal(torch.rand(3), expected_draws[0])
    assert np.array_equal(np.random.rand(3), expected_draws[1])
    assert random.random() == expected_draws[2]


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.safetensors"
    model, optimizer, scheduler = trained_parts()
    save(path, model, optimizer, scheduler, epoch=1)
    before, saved_weight = path.read_bytes(), model[0].weight.detach().clone()

    def killed(fd: int) -> None:
        raise OSError("simulated power loss half-way through the write")

    with torch.no_grad():
        model[0].weight.add_(1.0)
    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(OSError, match="power loss"):
        save(path, model, optimizer, scheduler, epoch=2)
    monkeypatch.undo()

    assert path.read_bytes() == before
    restored, restored_optimizer, restored_scheduler = trained_parts(seed=1)
    state = load_checkpoint(path, model=restored, optimizer=restored_optimizer, scheduler=restored_scheduler)
    assert state["epoch"] == 1
    assert torch.equal(restored[0].weight, saved_weight)


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff" * 100)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign(path: Path) -> None:
    save_file({"weight": torch.zeros(2)}, str(path), metadata={"format": "pt"})


def _bad_metadata(path: Path) -> None:
    save_file({"weight": torch.zeros(2)}, str(path), metadata={"medsight": json.dumps([1, 2])})


@pytest.mark.parametrize("damage", [_truncated, _garbage, _empty, _foreign, _bad_metadata])
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path: Path, damage) -> None:
    path = tmp_path / "last.safetensors"
    model, optimizer, scheduler = trained_parts()
    save(path, model, optimizer, scheduler, epoch=1)
    damage(path)
    with pytest.raises(MedsightError) as info:
        load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)
    assert str(path) in str(info.value)
    assert "delete it to start the run over" in str(info.value)


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    save(path, *trained_parts(width=4), epoch=1)
    other, other_optimizer, other_scheduler = trained_parts(width=5)
    with pytest.raises(MedsightError, match="does not fit this model") as info:
        load_checkpoint(path, model=other, optimizer=other_optimizer, scheduler=other_scheduler)
    assert str(path) in str(info.value) and "config that wrote it" in str(info.value)


def test_no_checkpoint_says_how_to_start(tmp_path: Path) -> None:
    model, optimizer, scheduler = trained_parts()
    with pytest.raises(MedsightError, match="no checkpoint here") as info:
        load_checkpoint(tmp_path / "gone.safetensors", model=model, optimizer=optimizer, scheduler=scheduler)
    assert "gone.safetensors" in str(info.value) and "without --resume" in str(info.value)


@pytest.mark.parametrize(("epochs", "lr", "expected"), [
    (2, 0.1, 0.0),  # the same config: the saved rate (the end of a 2-epoch cosine)
    (4, 0.1, 0.05),  # more epochs: the 4-epoch cosine at epoch 2, 0.1 * 0.5 * (1 + cos(pi / 2))
    (4, 0.3, 0.15),  # and another base rate
])
def test_a_resume_follows_the_schedule_given_now(tmp_path, epochs, lr, expected):
    """A run that ended its 2-epoch cosine (rate 0), resumed with the config given now: the first resumed
    epoch trains at that config's rate for epoch 2, in every parameter group, and the schedule goes on
    from there."""
    model = nn.Linear(3, 2)
    first = TrainConfig(optimizer="adamw", schedule="cosine", epochs=2, lr=0.1)
    optimizer = build_optimizer(model.parameters(), first)
    scheduler = build_scheduler(optimizer, first)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=optimizer, scheduler=scheduler,
                    state={"epoch": 2})
    now = TrainConfig(optimizer="adamw", schedule="cosine", epochs=epochs, lr=lr)
    optimizer = build_optimizer(model.parameters(), now)
    scheduler = build_scheduler(optimizer, now)
    load_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=optimizer, scheduler=scheduler)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([expected] * 2, abs=1e-12)
    scheduler.step()  # past the end of a cosine its rate stays at the bottom
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr * 0.5 * (1 + np.cos(np.pi * min(3 / epochs, 1))),
                                                            abs=1e-12)
