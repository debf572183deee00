"""A full disk while training: one clear error, no temporary file, the previous checkpoint kept, and no
half-written CSV or JSON, for classification, segmentation, the bundle and the command line.

The disk fills by a stand-in for ``os.fsync`` that refuses, with ``ENOSPC``, the n-th flush of a named
file (as a full disk refuses the bytes that would not fit), and once on a real small tmpfs where this
process may mount one.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from disc_images import write_disc_folder
from safetensors.torch import load_file
from test_trainer import blobs, config, small_cnn
from typer.testing import CliRunner

from medsight.atomic_write import atomic_write_text
from medsight.bundle import Bundle, load_bundle
from medsight.classification.trainer import fit
from medsight.config import ModelConfig, PreprocessConfig
from medsight.errors import OutputWriteError
from medsight.training.callbacks import Callback

DISK_FULL = "could not be written: the disk is full (No space left on device); free space on that disk"


def fill_disk_on(monkeypatch: pytest.MonkeyPatch, name: str, nth: int) -> None:
    """The ``nth`` flush of the temporary file ``name`` (``NAME.tmp``, written as ``NAME.<pid>.tmp``; and every
    later one) fails: no space left on device."""
    real_fsync = os.fsync
    seen = []
    written_as = f"/{name.removesuffix('.tmp')}.{os.getpid()}.tmp"

    def fsync(descriptor: int) -> None:
        if os.readlink(f"/proc/self/fd/{descriptor}").endswith(written_as):
            seen.append(name)
            if len(seen) >= nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)


class KeepWeights(Callback):
    """Copies the model's weights at the end of each epoch (after its checkpoint is written)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.weights = model, {}

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self.weights[epoch] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def assert_nothing_half_written(run_dir: Path, epochs_in_csv: int) -> None:
    """No temporary file or staging folder; metrics.csv a header and whole rows; every JSON parses."""
    assert sorted(str(p) for p in run_dir.rglob("*.tmp")) == []
    assert [p for p in run_dir.rglob(".*-*") if p.is_dir()] == []
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[0] == "epoch" and len(lines) == 1 + epochs_in_csv
    rows = list(csv.DictReader(lines))
    assert [row["epoch"] for row in rows] == [str(e) for e in range(1, epochs_in_csv + 1)]
    assert all(None not in row and None not in row.values() for row in rows)  # no short or long row
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())


def checkpoint_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(run_dir / "checkpoints" / "last.safetensors")
    return {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}


def test_a_full_disk_at_the_second_checkpoint_keeps_the_first(tmp_path: Path, monkeypatch) -> None:
    train, val = blobs(64, 2, seed=1), blobs(16, 2, seed=2)
    model = small_cnn(2)
    kept = KeepWeights(model)
    fill_disk_on(monkeypatch, "last.safetensors.tmp", nth=2)
    with pytest.raises(OutputWriteError) as info:
        fit(model, train, val, cfg=config(epochs=4), head="softmax", num_classes=2, run_dir=tmp_path,
            callbacks=[kept], progress=False)
    monkeypatch.undo()

    message = str(info.value)
    assert message == f"{tmp_path / 'checkpoints' / 'last.safetensors'}: {DISK_FULL} or write the run to " \
                      "another folder (--out)"
    assert "\n" not in message and list(kept.weights) == [1]
    saved = checkpoint_weights(tmp_path)
    assert saved.keys() == kept.weights[1].keys()
    assert all(torch.equal(saved[k], kept.weights[1][k]) for k in saved)
    assert_nothing_half_written(tmp_path, epochs_in_csv=1)


def test_a_full_disk_at_metrics_csv_keeps_its_whole_rows_and_the_run_resumes(tmp_path: Path, monkeypatch) -> None:
    train, val = blobs(64, 2, seed=1), blobs(16, 2, seed=2)
    common = {"head": "softmax", "num_classes": 2, "run_dir": tmp_path, "progress": False}
    fill_disk_on(monkeypatch, "metrics.csv.tmp", nth=3)
    with pytest.raises(OutputWriteError, match="metrics.csv: could not be written: the disk is full"):
        fit(small_cnn(2), train, val, cfg=config(epochs=4), **common)
    monkeypatch.undo()
    assert_nothing_half_written(tmp_path, epochs_in_csv=2)  # epoch 3's checkpoint was written, its row not

    resumed = fit(small_cnn(2, seed=5), train, val, cfg=config(epochs=4), resume=True, **common)
    assert resumed.epochs_run == 4
    assert_nothing_half_written(tmp_path, epochs_in_csv=4)


def test_no_metrics_csv_before_the_first_epoch(tmp_path: Path, monkeypatch) -> None:
    """A run that fails at its first checkpoint leaves no metrics.csv (it once held a lone newline)."""
    fill_disk_on(monkeypatch, "last.safetensors.tmp", nth=1)
    with pytest.raises(OutputWriteError):
        fit(small_cnn(2), blobs(32, 2, seed=1), blobs(16, 2, seed=2), cfg=config(epochs=2), head="softmax",
            num_classes=2, run_dir=tmp_path, progress=False)
    assert not (tmp_path / "metrics.csv").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == []


def test_a_segmentation_run_on_a_full_disk_keeps_its_first_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from medsight.config import load_config
    from medsight.segmentation.train import train_segmenter

    cfg = load_config(overrides={
        "task": "segmentation", "data.path": str(write_disc_folder(tmp_path / "discs", n=6)), "model.name": "unet",
        "model.kwargs": {"base_features": 4}, "segment.patch_size": [32, 32], "segment.batch_size": 2,
        "segment.steps_per_epoch": 2, "train.epochs": 3,
    })
    out = tmp_path / "run"
    first = {}

    def after_first_checkpoint(path, **kwargs):
        state = real_save(path, **kwargs)
        first.setdefault("weights", {k: v.detach().clone() for k, v in kwargs["model"].state_dict().items()})
        return state

    from medsight.training import loop

    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", after_first_checkpoint)
    fill_disk_on(monkeypatch, "last.safetensors.tmp", nth=2)
    with pytest.raises(OutputWriteError) as info:
        train_segmenter(cfg, out=out, progress=False)
    monkeypatch.undo()

    assert str(info.value).startswith(f"{out / 'checkpoints' / 'last.safetensors'}: {DISK_FULL}")
    saved = checkpoint_weights(out)
    assert all(torch.equal(saved[k], first["weights"][k]) for k in first["weights"])
    assert_nothing_half_written(out, epochs_in_csv=1)
    assert not (out / "model").exists()


def test_a_bundle_that_does_not_fit_leaves_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    def bundle(value: float) -> Bundle:
        return Bundle(task="classification", model=ModelConfig(name="compact_cnn"),
                      preprocess=PreprocessConfig(size=[8, 8]), label_names=["a", "b"],
                      state_dict={"w": torch.full((64, 64), value)})

    folder = bundle(1.0).save(tmp_path / "model")
    fill_disk_on(monkeypatch, "weights.safetensors.tmp", nth=1)
    with pytest.raises(OutputWriteError) as info:
        bundle(2.0).save(folder)
    monkeypatch.undo()
    assert str(info.value).startswith(f"{folder / 'weights.safetensors'}: {DISK_FULL}")
    assert torch.equal(load_bundle(folder).state_dict["w"], torch.full((64, 64), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging folder left
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "weights.safetensors"]


def test_an_unwritable_folder_names_the_reason(tmp_path: Path, monkeypatch) -> None:
    """Another refusal than a full disk: the OS reason and the same advice."""
    def refuse(descriptor: int) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(OutputWriteError) as info:
        atomic_write_text(tmp_path / "metrics.json", "{}")
    assert str(info.value) == (f"{tmp_path / 'metrics.json'}: could not be written (Read-only file system); check "
                               "that the folder is writable, or write the run to another folder (--out)")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_prints_one_line_and_exits_2(small_phantoms: Path, tmp_path: Path, monkeypatch) -> None:
    from medsight.cli.main import app

    out = tmp_path / "run"
    fill_disk_on(monkeypatch, "last.safetensors.tmp", nth=2)
    result = CliRunner().invoke(app, [
        "train", "--recipe", "demo", "--data", str(small_phantoms), "--epochs", "3", "--out", str(out),
        "--set", "preprocess.size=[32,32]", "--set", "eval.bootstrap=0", "--no-progress",
    ])
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {out / 'checkpoints' / 'last.safetensors'}: {DISK_FULL} or write the run to "
                      "another folder (--out)"]
    assert "Traceback" not in result.output
    assert_nothing_half_written(out, epochs_in_csv=1)


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder``, or a skip where this process may not mount one."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # detached now, freed once unused


class FillTheDisk(Callback):
    """After epoch 1 (its checkpoint and metrics written), writes a file until the disk is full."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if epoch != 1:
            return
        with (self.disk / "filler").open("wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)


def test_on_a_real_full_tmpfs(tmp_path: Path) -> None:
    train, val = blobs(64, 2, seed=1), blobs(16, 2, seed=2)
    model = small_cnn(2)
    kept = KeepWeights(model)
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        run_dir = disk / "run"
        with pytest.raises(OutputWriteError) as info:
            fit(model, train, val, cfg=config(epochs=3), head="softmax", num_classes=2, run_dir=run_dir,
                callbacks=[kept, FillTheDisk(disk)], progress=False)
        assert str(info.value).startswith(f"{run_dir / 'checkpoints' / 'last.safetensors'}: {DISK_FULL}")
        saved = checkpoint_weights(run_dir)
        assert all(torch.equal(saved[k], kept.weights[1][k]) for k in saved)
        assert_nothing_half_written(run_dir, epochs_in_csv=1)
