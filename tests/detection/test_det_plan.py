"""The detection fingerprint and plan: values a person would check (sizes, anchors, splits, notes), and refusals."""

from __future__ import annotations

import json

import pytest
from det_squares import write_squares
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.data.det_layouts import open_detection_set
from medsight.detection.fingerprint import fingerprint_detection
from medsight.detection.plan import COMFORT_BOX_PX, MIN_BOX_PX, make_detection_plan, read_detection_plan
from medsight.errors import ConfigError, DatasetError


def _plan(fp, **kwargs):
    settings = {"time_budget_min": 5, "seconds_per_image": lambda size, channels, batch: 0.01, "n_train": 18,
                "n_val": 6, "official_val": True, **kwargs}
    return make_detection_plan(fp, **settings)


def test_fingerprint_counts_splits_boxes_and_negatives(tmp_path):
    fp = fingerprint_detection(open_detection_set(write_squares(tmp_path, side=12)), progress=False)
    assert fp["n_images"] == {"train": 18, "val": 6, "test": 0, "unassigned": 0}
    assert fp["sizes"]["median"] == [64.0, 64.0] and fp["channels"] == {"1": 24} and not fp["colour"]
    assert fp["negatives"] == 3  # images 7, 15 and 23
    assert fp["boxes"]["all"]["n"] == 30  # 12 even images x 1 square + 9 odd positives x 2
    assert fp["boxes"]["all"]["median_px"] == [12.0, 12.0]
    assert fp["boxes"]["lesion"]["smallest_side_share"][1] == pytest.approx(12 / 64)


def test_anchors_follow_the_box_sizes(tmp_path):
    small = fingerprint_detection(open_detection_set(write_squares(tmp_path / "small", side=8)), progress=False)
    large = fingerprint_detection(open_detection_set(write_squares(tmp_path / "large", side=24)), progress=False)
    small_plan, large_plan = _plan(small), _plan(large)
    assert small_plan.size == large_plan.size == [64, 64]
    assert [a[0] for a in small_plan.anchor_sizes] == [8.0] * 4  # every square is 8 px: every quantile is
    assert [a[0] for a in large_plan.anchor_sizes] == [24.0] * 4
    mixed = fingerprint_detection(open_detection_set(write_squares(tmp_path / "mixed", side=(8, 32))),
                                  progress=False)
    levels = [a[0] for a in _plan(mixed).anchor_sizes]  # geometric from the 5% quantile (8) to the 95% one (32)
    assert levels == pytest.approx([8.0, 8 * 4 ** (1 / 3), 8 * 4 ** (2 / 3), 32.0], abs=0.05)
    assert "spaced geometrically" in small_plan.notes["anchor_sizes"]


def test_small_boxes_grow_the_input_and_large_ones_shrink_it(tmp_path):
    tiny = fingerprint_detection(open_detection_set(write_squares(tmp_path / "tiny", size=96, side=4)),
                                 progress=False)
    plan = _plan(tiny)
    assert plan.size == [192, 192]  # 4 px of 96 -> at least MIN_BOX_PX (8) px: x2, in multiples of 32
    assert plan.smallest_box_px >= MIN_BOX_PX
    big = fingerprint_detection(open_detection_set(write_squares(tmp_path / "big", size=256, side=96)),
                                progress=False)
    shrunk = _plan(big)
    assert shrunk.size[0] < 256 and shrunk.smallest_box_px >= COMFORT_BOX_PX
    assert "shrunk" in shrunk.notes["size"]


def test_plan_budget_epochs_and_overrides(tmp_path):
    fp = fingerprint_detection(open_detection_set(write_squares(tmp_path)), progress=False)
    plan = _plan(fp, time_budget_min=1, seconds_per_image=lambda size, channels, batch: 0.1)
    # 0.85 x 60 s over (18 + 6 / 3) images x 0.1 s x 1.25 = 2.5 s per epoch: 20 epochs fit; planned 1.5 x 20 as
    # the upper bound (the 1-min time limit ends the run) and the estimate capped at the budget
    assert plan.epochs == 30 and plan.batch_size == 4
    assert plan.estimated_min == 1.0 and "20 epochs" in plan.notes["epochs"]
    keys = plan.overrides()
    assert keys["preprocess.size"] == [64, 64] and keys["preprocess.keep_aspect"] is True
    assert keys["detect.anchor_sizes"] == plan.anchor_sizes and keys["train.early_stopping_metric"] == "ap50"
    assert keys["data.test_fraction"] == 0.0 and keys["train.time_limit_min"] == 1.0
    assert keys["augment.flip_h"] == 0.5 and "augment.flip_v" not in keys  # grey: an X-ray guess, anatomy has an up


def test_plan_refuses_a_bad_budget(tmp_path):
    fp = fingerprint_detection(open_detection_set(write_squares(tmp_path)), progress=False)
    with pytest.raises(ConfigError, match="positive number of minutes"):
        _plan(fp, time_budget_min=0)


def test_a_set_without_any_box_is_a_clear_error(tmp_path):
    manifest = write_squares(tmp_path, boxes=False)
    with pytest.raises(DatasetError, match="no boxes in any of its 24 training images"):
        fingerprint_detection(open_detection_set(manifest), progress=False)


def test_cli_plan_writes_both_files(tmp_path):
    manifest = write_squares(tmp_path / "data")
    result = CliRunner().invoke(app, ["plan", str(manifest), "--task", "detection", "--out", str(tmp_path / "plan"),
                                      "--time-budget", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    plan = read_detection_plan(tmp_path / "plan" / "plan.json")
    assert plan.size == [64, 64] and plan.n_train == 18 and plan.n_val == 6 and plan.official_val
    fp = json.loads((tmp_path / "plan" / "fingerprint.json").read_text())
    assert fp["n_images"]["val"] == 6
    assert "anchor_sizes" in result.output and "wrote" in result.output
