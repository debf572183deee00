"""The one training loop (:mod:`medsight.training.loop`) as each task uses it: the options it brings to every
task (``train.ema`` for classification, ``train.early_stopping_metric`` for segmentation) and exact resume
after a SIGKILL for segmentation (classification's is tests/cli/test_resume.py; under DDP both tasks are
stopped and resumed in tests/runtime/test_ddp.py)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from disc_images import write_disc_folder
from safetensors.torch import load_file
from test_trainer import CrashAfter, blobs, config, flip_and_noise, read_rows, small_cnn

from medsight.classification.trainer import fit
from medsight.config import load_config
from medsight.errors import ConfigError
from medsight.runtime.checkpoint import CHECKPOINT
from medsight.segmentation.train import train_segmenter


def test_a_classifier_with_ema_validates_keeps_and_ships_the_average(tmp_path: Path) -> None:
    """One epoch of 4 steps (64 images in batches of 16), so the best weights are that epoch's: they are the
    checkpoint's average (4 updates), not the trained weights, and the row's metrics are the average's."""
    train, val = blobs(64, 2, seed=1), blobs(16, 2, seed=2)
    result = fit(small_cnn(2), train, val, cfg=config(epochs=1, ema=0.9), head="softmax", num_classes=2,
                 run_dir=tmp_path, progress=False)
    saved = load_file(tmp_path / CHECKPOINT)
    assert int(saved["ema.__steps__"]) == 4
    assert all(torch.equal(value, saved["ema." + key]) for key, value in result.best_state.items())
    assert not all(torch.equal(value, saved["model." + key]) for key, value in result.best_state.items())


def test_a_killed_classifier_with_ema_resumes_to_the_weights_of_an_unbroken_run(tmp_path: Path) -> None:
    train, val = blobs(70, 2, seed=1), blobs(24, 2, seed=2)
    cfg = config(epochs=4, ema=0.8, balanced_sampling=True, early_stopping_metric="val_loss")
    common = {"cfg": cfg, "head": "softmax", "num_classes": 2, "augment": flip_and_noise, "progress": False}
    expected = fit(small_cnn(2), train, val, run_dir=tmp_path / "straight", **common)
    with pytest.raises(KeyboardInterrupt):
        fit(small_cnn(2), train, val, run_dir=tmp_path / "killed", callbacks=[CrashAfter(2)], **common)
    result = fit(small_cnn(2, seed=5), train, val, run_dir=tmp_path / "killed", resume=True, **common)
    assert result.best_epoch == expected.best_epoch and result.epochs_run == 4
    assert all(torch.equal(value, result.best_state[key]) for key, value in expected.best_state.items())
    straight, resumed = (load_file(tmp_path / run / CHECKPOINT) for run in ("straight", "killed"))
    averaged_and_trained = [key for key in straight if key.startswith(("ema.", "model."))]
    assert all(torch.equal(straight[key], resumed[key]) for key in averaged_and_trained)

    def untimed(run: str) -> list[dict[str, str]]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in read_rows(tmp_path / run)]

    assert untimed("killed") == untimed("straight")


def _seg_overrides(data: Path) -> dict:
    return {"task": "segmentation", "data.path": str(data), "model.name": "unet", "model.kwargs": {"base_features": 4},
            "segment.patch_size": [32, 32], "segment.batch_size": 2, "segment.steps_per_epoch": 4,
            "train.num_threads": 1, "eval.bootstrap": 0}


def test_segmentation_follows_its_own_metric_unless_told_otherwise(tmp_path: Path) -> None:
    """Unset, the metric is val_dice for segmentation (auc for classification); set, it is checked against
    the columns a segmentation run has, before anything is read or written."""
    assert load_config(overrides={"task": "segmentation"}).train.early_stopping_metric == "val_dice"
    assert load_config().train.early_stopping_metric == "auc"
    cfg = load_config(overrides={**_seg_overrides(tmp_path / "nowhere"), "train.early_stopping_metric": "auc"})
    with pytest.raises(ConfigError, match=r"early_stopping_metric=auc.*choose one of: val_dice, train_loss"):
        train_segmenter(cfg, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_segmentation_honours_train_early_stopping_metric(tmp_path: Path) -> None:
    """A learning rate so small that no weight moves: the val Dice is the same every epoch (so on val_dice
    epoch 1 stays the best and patience 2 stops after epoch 3), while the training loss of the random patches
    goes up and down. On train_loss the best epoch is the lowest loss and the run stops 2 epochs after it."""
    data = write_disc_folder(tmp_path / "discs", n=6)
    still = {"train.optimizer": "sgd", "train.momentum": 0.0, "train.weight_decay": 0.0, "train.lr": 1e-30,
             "train.epochs": 8, "train.patience": 2}
    on_dice = train_segmenter(load_config(overrides={**_seg_overrides(data), **still}), out=tmp_path / "dice",
                              progress=False)
    assert on_dice["best_epoch"] == 1 and on_dice["epochs_run"] == 3
    assert on_dice["stop_reason"] == "early stopping: no better val_dice for 2 epochs"

    cfg = load_config(overrides={**_seg_overrides(data), **still, "train.early_stopping_metric": "train_loss"})
    on_loss = train_segmenter(cfg, out=tmp_path / "loss", progress=False)
    losses = [float(row["train_loss"]) for row in read_rows(tmp_path / "loss")]
    best = losses.index(min(losses)) + 1
    assert best > 1 and on_loss["best_epoch"] == best
    assert on_loss["epochs_run"] == min(best + 2, 8) == len(losses)
    assert on_loss["best_val_dice"] == float(read_rows(tmp_path / "loss")[best - 1]["val_dice"])
    if on_loss["epochs_run"] < 8:
        assert on_loss["stop_reason"] == "early stopping: no better train_loss for 2 epochs"


def _completed_epochs(run_dir: Path) -> int:
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return 0
    with metrics.open() as handle:
        return len(list(csv.DictReader(handle)))


def test_a_segmentation_run_killed_with_sigkill_resumes_to_identical_weights(tmp_path: Path) -> None:
    """``medsight train`` of a segmenter, killed (SIGKILL) once an epoch is on disk and resumed, ends with
    the bit-identical weights and best weights of an unbroken run (the patch generator, the optimiser and
    the weight average are all in the checkpoint)."""
    data = write_disc_folder(tmp_path / "discs", n=6)
    epochs = 12
    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump({
        "task": "segmentation", "model": {"name": "unet", "kwargs": {"base_features": 4}},
        "augment": {"flip_h": 0.5}, "train": {"epochs": epochs, "lr": 3e-3, "ema": 0.9, "num_threads": 1},
        "segment": {"patch_size": [32, 32], "batch_size": 2, "steps_per_epoch": 6}, "eval": {"bootstrap": 0},
    }))
    command = [sys.executable, "-m", "medsight.cli.main", "train", str(config), "--data", str(data), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "--out", str(tmp_path / "straight")], check=True, env=env, timeout=600,
                   capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _completed_epochs(killed) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= _completed_epochs(killed) < epochs, "the run should have been killed mid-way"
    assert not (killed / "model").exists()

    subprocess.run([*command, "--out", str(killed), "--resume"], check=True, env=env, timeout=600,
                   capture_output=True)
    straight, resumed = (load_file(run / CHECKPOINT) for run in (tmp_path / "straight", killed))
    assert straight.keys() == resumed.keys()
    for key in straight:
        if key.startswith(("model.", "best.", "ema.")):
            assert torch.equal(straight[key], resumed[key]), key
    assert _completed_epochs(killed) == epochs
