"""The time limit is read between training steps: a run stops inside a long epoch, validates, checkpoints
and ships what it has, says where it stopped, and a resumed run finishes that epoch as if never cut.

Every clock here is fake: it advances 1 s each time the training loop reads it, so where a run stops
is a count of readings, the same on any machine.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from disc_images import write_disc_folder
from safetensors.torch import load_file
from test_trainer import blobs, config, flip_and_noise, small_cnn

from medsight.classification.trainer import fit
from medsight.training import loop


def one_second_a_reading(monkeypatch: pytest.MonkeyPatch, module) -> None:
    readings = itertools.count()
    monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=lambda: float(next(readings))))


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def saved_state(run_dir: Path) -> dict:
    from safetensors import safe_open

    with safe_open(run_dir / "checkpoints" / "last.safetensors", "pt") as handle:
        return json.loads(handle.metadata()["medsight"])["state"]


def test_a_classification_run_stops_inside_its_first_epoch(tmp_path: Path, monkeypatch) -> None:
    """160 images in batches of 16: 10 steps an epoch. The clock is read at the start (0 s), at the
    epoch's start (1 s) and after each step (step k: k + 1 s), so a 6-second limit (0.1 min) is passed
    after step 6 of epoch 1."""
    one_second_a_reading(monkeypatch, loop)
    train, val = blobs(160, 2, seed=1), blobs(32, 2, seed=2)
    result = fit(small_cnn(2), train, val, cfg=config(epochs=3, time_limit_min=0.1), head="softmax", num_classes=2,
                 run_dir=tmp_path, progress=False)
    assert result.stop_reason == "time limit of 0.1 min reached after 6 of 10 steps of epoch 1"
    assert result.epochs_run == 1 and result.best_epoch == 1 and result.best_state
    [row] = rows(tmp_path)
    assert row["epoch"] == "1" and float(row["train_loss"]) > 0 and 0.0 <= float(row["accuracy"]) <= 1.0
    state = saved_state(tmp_path)
    assert state["epoch"] == 1 and state["cut"]["steps"] == 6 and state["stop_reason"] == result.stop_reason


def test_the_time_limit_message_without_a_cut_is_unchanged(tmp_path: Path, monkeypatch) -> None:
    """Two steps an epoch: the limit passed at the end of an epoch ends it as before, without 'after'."""
    one_second_a_reading(monkeypatch, loop)
    result = fit(small_cnn(2), blobs(32, 2, seed=1), blobs(16, 2, seed=2), cfg=config(epochs=50, time_limit_min=0.1),
                 head="softmax", num_classes=2, run_dir=tmp_path, progress=False)
    assert result.stop_reason.startswith("time limit of 0.1 min reached")
    assert len(rows(tmp_path)) == result.epochs_run < 50


def test_a_cut_epoch_resumed_ends_with_the_weights_of_a_straight_run(tmp_path: Path, monkeypatch) -> None:
    """Balanced sampling, augmentation and dropout draw from the epoch's random streams: the resumed
    run continues them after step 6 of epoch 1 and ends exactly where an uncut run ends."""
    train, val = blobs(160, 2, seed=1), blobs(32, 2, seed=2)
    cfg = config(epochs=3, optimizer="adamw", balanced_sampling=True, early_stopping_metric="val_loss")
    common = {"head": "softmax", "num_classes": 2, "augment": flip_and_noise, "progress": False}
    straight = small_cnn(2)
    expected = fit(straight, train, val, cfg=cfg, run_dir=tmp_path / "straight", **common)

    one_second_a_reading(monkeypatch, loop)
    cut = fit(small_cnn(2), train, val, cfg=cfg.model_copy(update={"time_limit_min": 0.1}), run_dir=tmp_path / "cut",
              **common)
    monkeypatch.undo()
    assert "after 6 of 10 steps of epoch 1" in cut.stop_reason
    resumed = small_cnn(2, seed=7)
    result = fit(resumed, train, val, cfg=cfg, run_dir=tmp_path / "cut", resume=True, **common)

    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert result.epochs_run == 3 and result.best_epoch == expected.best_epoch
    for key, value in expected.best_state.items():
        assert torch.equal(value, result.best_state[key]), key
    got, want = rows(tmp_path / "cut"), rows(tmp_path / "straight")
    assert [r["epoch"] for r in got] == ["1", "2", "3"]
    for a, b in zip(got, want, strict=True):
        # epoch 1's mean loss adds the 6 steps' mean back: equal up to float32 rounding of the sum
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-6)
        assert {k: v for k, v in a.items() if k not in ("seconds", "train_loss")} == \
               {k: v for k, v in b.items() if k not in ("seconds", "train_loss")}


def test_resumed_with_the_same_limit_a_cut_run_trains_nothing_more(tmp_path: Path, monkeypatch) -> None:
    train, val = blobs(160, 2, seed=1), blobs(32, 2, seed=2)
    common = {"cfg": config(epochs=3, time_limit_min=0.1), "head": "softmax", "num_classes": 2, "run_dir": tmp_path,
              "progress": False}
    one_second_a_reading(monkeypatch, loop)
    first = fit(small_cnn(2), train, val, **common)
    before = (tmp_path / "checkpoints" / "last.safetensors").read_bytes()
    again = fit(small_cnn(2, seed=3), train, val, resume=True, **common)
    assert again.epochs_run == 1 and again.stop_reason == "time limit of 0.1 min reached"
    for key, value in first.best_state.items():
        assert torch.equal(value, again.best_state[key]), key
    assert (tmp_path / "checkpoints" / "last.safetensors").read_bytes() == before


def test_a_cut_run_through_the_pipeline_ships_a_bundle(small_phantoms: Path, tmp_path: Path, monkeypatch) -> None:
    """The whole classification run: stopped inside epoch 1, it still writes its bundle, metrics and report."""
    from medsight.bundle import load_bundle
    from medsight.config import load_config
    from medsight.workflows.train import run_training

    one_second_a_reading(monkeypatch, loop)
    cfg = load_config(recipe="demo", overrides={
        "data.path": str(small_phantoms), "preprocess.size": [32, 32], "train.epochs": 3, "train.batch_size": 8,
        "train.time_limit_min": 0.05, "eval.bootstrap": 0,
    })
    run_training(cfg, out=tmp_path, progress=False)
    [row] = rows(tmp_path)
    assert row["epoch"] == "1"
    state = saved_state(tmp_path)
    assert state["cut"]["steps"] == 3  # a 3-second limit: passed after step 3 (read at 4 s)
    assert state["stop_reason"].startswith("time limit of 0.05 min reached after 3 of ")
    bundle = load_bundle(tmp_path / "model")
    assert bundle.state_dict and bundle.provenance
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] > 0


def _seg_cfg(data: Path, **overrides):
    from medsight.config import load_config

    base = {"task": "segmentation", "data.path": str(data), "model.name": "unet", "model.kwargs": {"base_features": 4},
            "segment.patch_size": [32, 32], "segment.batch_size": 2, "segment.steps_per_epoch": 8, "train.epochs": 2,
            "train.lr": 3e-3}
    return load_config(overrides={**base, **overrides})


def test_a_segmentation_run_stops_inside_its_first_epoch_and_resumes_to_a_straight_run(tmp_path, monkeypatch):
    """8 steps an epoch. The clock is read at the start (0 s), at the epoch's start (1 s) and after each
    step (step k: k + 1 s): a 3-second limit (0.05 min) is passed after step 3. Resumed without a limit,
    the run finishes epoch 1 and trains epoch 2, ending with the weights of an uncut run."""
    from medsight.segmentation.train import train_segmenter

    data = write_disc_folder(tmp_path / "discs", n=6)
    straight = train_segmenter(_seg_cfg(data), out=tmp_path / "straight", progress=False)

    one_second_a_reading(monkeypatch, loop)
    cut = train_segmenter(_seg_cfg(data, **{"train.time_limit_min": 0.05}), out=tmp_path / "cut", progress=False)
    monkeypatch.undo()
    assert cut["stop_reason"] == "time limit of 0.05 min reached after 3 of 8 steps of epoch 1"
    assert cut["epochs_run"] == 1 and cut["best_epoch"] == 1
    assert (tmp_path / "cut" / "model" / "weights.safetensors").is_file()
    [row] = rows(tmp_path / "cut")
    assert row["epoch"] == "1" and 0.0 <= float(row["val_dice"]) <= 1.0
    bundle = json.loads((tmp_path / "cut" / "model" / "bundle.json").read_text())
    assert bundle["provenance"]["stop_reason"] == cut["stop_reason"]

    resumed = train_segmenter(_seg_cfg(data), out=tmp_path / "cut", resume=True, progress=False)
    assert resumed["epochs_run"] == 2 and resumed["stop_reason"] == ""
    weights = [load_file(run / "checkpoints" / "last.safetensors") for run in (tmp_path / "straight", tmp_path / "cut")]
    model = [k for k in weights[0] if k.startswith("model.")]
    assert model and all(torch.equal(weights[0][k], weights[1][k]) for k in model)
    assert [r["epoch"] for r in rows(tmp_path / "cut")] == ["1", "2"]
    assert resumed["best_val_dice"] == pytest.approx(straight["best_val_dice"], abs=1e-6)


def test_the_segmentation_summary_says_why_it_stopped(tmp_path, monkeypatch) -> None:
    from medsight.workflows.segmentation import train_segmentation

    one_second_a_reading(monkeypatch, loop)
    cfg = _seg_cfg(write_disc_folder(tmp_path / "discs", n=6), **{"train.time_limit_min": 0.05})
    summary = train_segmentation(cfg, out=tmp_path / "run", resume=False, progress=False)
    assert "stopped early: time limit of 0.05 min reached after 3 of 8 steps of epoch 1" in summary.splitlines()
