"""Detection training end to end on 24 images of 64 px with bright squares: the planned command's run folder,
resume, the time limit, and refusals. No detection quality is asserted (2 epochs cannot reach one)."""

from __future__ import annotations

import csv
import json

import pytest
from det_squares import write_squares
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.config import load_config
from medsight.detection.train import train_detector
from medsight.errors import ConfigError, DatasetError


def _cfg(manifest, **extra):
    return load_config(overrides={
        "task": "detection", "data.path": str(manifest), "preprocess.size": [64, 64], "preprocess.keep_aspect": True,
        "preprocess.normalize": "zscore", "train.batch_size": 6, "train.epochs": 1, "eval.bootstrap": 0,
        "detect.anchor_sizes": [[12, 12], [12, 12], [24, 24]], **extra})


def test_planned_train_command_writes_the_run_folder(tmp_path):
    manifest = write_squares(tmp_path / "data")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--task", "detection", "--data", str(manifest), "--out", str(run),
                                      "--time-budget", "1", "--set", "train.epochs=2", "--set", "eval.bootstrap=20",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    plan = json.loads((run / "plan.json").read_text())
    assert plan["size"] == [64, 64] and plan["n_train"] == 18 and plan["n_val"] == 6
    assert json.loads((run / "fingerprint.json").read_text())["boxes"]["all"]["n"] == 30
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]  # the user's train.epochs wins over the plan's
    assert list(rows[0])[:5] == ["epoch", "train_loss", "ap50", "map", "lr"]
    manifest_json = json.loads((run / "model" / "bundle.json").read_text())
    assert manifest_json["task"] == "detection" and manifest_json["label_names"] == ["lesion"]
    assert manifest_json["preprocess"]["size"] == [64, 64] and manifest_json["preprocess"]["keep_aspect"]
    assert manifest_json["detection"]["anchor_sizes"] == plan["anchor_sizes"]
    assert 0.0 <= manifest_json["detection"]["score_threshold"] <= 1.0
    assert "validation FROC point at 1 false positive" in manifest_json["detection"]["threshold_note"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "detection" and metrics["n"] == 6 and metrics["n_boxes"] == 9  # 6 val images
    assert set(metrics["ci"]) >= {"ap50", "map", "ap10", "froc_mean"} and metrics["bootstrap"] == 20
    assert metrics["threshold"] == manifest_json["detection"]["score_threshold"]
    per_image = list(csv.DictReader((run / "per_image.csv").open()))
    assert [row["id"] for row in per_image] == [f"images/img{i:03d}.png" for i in range(6)]
    assert [int(row["n_true"]) for row in per_image] == [1, 2, 1, 2, 1, 2]
    for row in per_image:  # every true box is found or missed
        assert int(row["true_positives"]) + int(row["missed"]) >= int(row["n_true"]) - int(row["true_positives"])
    assert (run / "report.html").is_file() and (run / "config.yaml").is_file()
    assert "bundle:" in result.output and "ap50=" in result.output


def test_resume_goes_on_from_the_checkpoint(tmp_path):
    manifest = write_squares(tmp_path / "data")
    run = tmp_path / "run"
    first = train_detector(_cfg(manifest), out=run, progress=False)
    before = (run / "metrics.csv").read_text().splitlines()
    resumed = train_detector(_cfg(manifest, **{"train.epochs": 2}), out=run, resume=True, progress=False)
    after = (run / "metrics.csv").read_text().splitlines()
    assert first["epochs_run"] == 1 and resumed["epochs_run"] == 2
    assert after[:2] == before and len(after) == 3  # epoch 1's row kept as it was, epoch 2 added


def test_the_time_limit_stops_training_and_still_ships(tmp_path):
    manifest = write_squares(tmp_path / "data")
    run = tmp_path / "run"
    result = train_detector(_cfg(manifest, **{"train.epochs": 5, "train.time_limit_min": 1e-4}), out=run,
                            progress=False)
    assert result["epochs_run"] == 1 and "time limit" in result["stop_reason"]
    assert (run / "model" / "bundle.json").is_file() and (run / "metrics.json").is_file()


def test_a_set_without_boxes_is_refused(tmp_path):
    manifest = write_squares(tmp_path / "data", boxes=False)
    with pytest.raises(DatasetError, match="no boxes in any of its 24 images"):
        train_detector(_cfg(manifest), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model").exists()


def test_a_classifier_name_or_a_bad_metric_is_refused(tmp_path):
    manifest = write_squares(tmp_path / "data")
    with pytest.raises(ConfigError, match="not a detection model"):
        train_detector(_cfg(manifest, **{"model.name": "compact_cnn"}), out=tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="ap50"):
        train_detector(_cfg(manifest, **{"train.early_stopping_metric": "auc"}), out=tmp_path / "b", progress=False)
