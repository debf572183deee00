"""Detection under DDP (gloo, CPU): ``medsight train --task detection --nproc 2`` trains, validates and ships once.

Two processes split each global batch of images between them (rank r takes its contiguous half); their losses are
not the one-process numbers, because MONAI's RetinaNet loss is a mean over the anchors each process sampled, so the
test checks the run, not weights against a one-process run. It runs in the DDP group of workers (one launch at a
time on the 2 cores).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from det_squares import write_squares

pytestmark = pytest.mark.xdist_group("ddp")

TIMEOUT = 300


def _train(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "medsight.cli.main", "train", "--task", "detection", *args],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_two_processes_train_validate_and_ship_once(tmp_path):
    manifest = write_squares(tmp_path / "data")
    run = tmp_path / "run"
    result = _train(["--data", str(manifest), "--out", str(run), "--nproc", "2", "--time-budget", "1",
                     "--set", "train.epochs=1", "--set", "train.batch_size=6", "--set", "train.num_threads=1",
                     "--set", "eval.bootstrap=0", "--no-progress"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("bundle:") == 1  # rank 0 alone reports and ships
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1"]
    assert all(0.0 <= float(row["ap50"]) <= 1.0 and float(row["train_loss"]) > 0 for row in rows)
    bundle = json.loads((run / "model" / "bundle.json").read_text())
    assert bundle["task"] == "detection" and bundle["label_names"] == ["lesion"]
    assert json.loads((run / "metrics.json").read_text())["n"] == 6  # the 6 val images
    assert not list(run.glob("rank*")) and (run / "torchrun").is_dir()


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_launch(tmp_path):
    manifest = write_squares(tmp_path / "data")
    run = tmp_path / "run"
    result = _train(["--data", str(manifest), "--out", str(run), "--nproc", "2", "--time-budget", "1",
                     "--set", "train.batch_size=5", "--no-progress"])
    assert result.returncode != 0
    assert "train.batch_size=5" in result.stderr and "does not split evenly over 2 processes" in result.stderr
    assert not (run / "torchrun").exists() and not (run / "model").exists()  # nothing was launched
