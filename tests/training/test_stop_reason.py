"""A classification run that ends before ``train.epochs`` says why: in the summary the CLI prints
(``stopped early: …``, as segmentation does), in the bundle's provenance and in the report; a run that
trains every epoch says nothing of the kind.

The training clock is fake (one second each time the loop reads it), so the time limit is reached inside
the first epoch on any machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from test_time_limit_steps import one_second_a_reading

from medsight.bundle import load_bundle
from medsight.config import load_config
from medsight.training import loop
from medsight.workflows.train import run_training


def train(small_phantoms: Path, out: Path, **overrides) -> str:
    cfg = load_config(recipe="demo", overrides={
        "data.path": str(small_phantoms), "preprocess.size": [32, 32], "train.batch_size": 8,
        "eval.bootstrap": 0, **overrides,
    })
    return run_training(cfg, out=out, progress=False)


def test_a_run_cut_by_its_time_limit_says_so(small_phantoms: Path, tmp_path: Path, monkeypatch) -> None:
    one_second_a_reading(monkeypatch, loop)
    summary = train(small_phantoms, tmp_path, **{"train.epochs": 3, "train.time_limit_min": 0.05})
    monkeypatch.undo()

    reason = load_bundle(tmp_path / "model").provenance["stop_reason"]
    assert reason.startswith("time limit of 0.05 min reached after 3 of ")  # 3 s: after the 3rd step
    assert reason.endswith(" steps of epoch 1")
    lines = summary.splitlines()
    assert lines[0].startswith("test: n=") and lines[1] == f"stopped early: {reason}"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["extra"]["stopped early"] == reason and metrics["extra"]["epochs run"] == 1
    assert f"stopped early</td><td>{reason}" in (tmp_path / "report.html").read_text()


def test_a_run_that_trains_every_epoch_says_nothing_of_stopping(small_phantoms: Path, tmp_path: Path) -> None:
    summary = train(small_phantoms, tmp_path, **{"train.epochs": 1})
    assert load_bundle(tmp_path / "model").provenance["stop_reason"] == ""
    assert "stopped early" not in summary
    assert "stopped early" not in json.loads((tmp_path / "metrics.json").read_text())["extra"]

