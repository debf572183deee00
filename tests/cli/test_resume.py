"""A training run killed with SIGKILL mid-way resumes to the same final weights."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from medsight.bundle import load_bundle

MEDSIGHT = [sys.executable, "-m", "medsight.cli.main"]


def completed_epochs(run_dir: Path) -> int:
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return 0
    with metrics.open() as handle:
        return len(list(csv.DictReader(handle)))


def test_killed_run_resumes_to_identical_weights(small_phantoms: Path, tmp_path: Path) -> None:
    args = [
        "train", "--recipe", "demo", "--data", str(small_phantoms), "--epochs", "5",
        "--set", "preprocess.size=[32,32]", "--set", "eval.bootstrap=0", "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*MEDSIGHT, *args, "--out", str(tmp_path / "straight")], check=True, env=env, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*MEDSIGHT, *args, "--out", str(killed)], env=env)
    deadline = time.monotonic() + 300
    while completed_epochs(killed) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = completed_epochs(killed)
    assert 2 <= interrupted_at < 5, "the run should have been killed mid-way"
    assert not (killed / "model").exists()

    subprocess.run([*MEDSIGHT, *args, "--out", str(killed), "--resume"], check=True, env=env, timeout=600)
    straight = load_bundle(tmp_path / "straight" / "model").state_dict
    resumed = load_bundle(killed / "model").state_dict
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert np.array_equal(straight[key].numpy(), resumed[key].numpy()), key
    assert completed_epochs(killed) == 5
