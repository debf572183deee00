"""Inference profiles: measured candidates (test-time views x overlap), ``fast`` the fastest within the slack of
``accurate``, the Segmenter predicting with either, and the clear errors of a profile the bundle cannot give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from disc_images import write_disc_folder
from typer.testing import CliRunner

from medsight.bundle import load_bundle
from medsight.cli.main import app
from medsight.data.seg_layouts import open_seg_dataset
from medsight.errors import ConfigError
from medsight.inference.segment import sliding_window_probs, tta_views
from medsight.inference.segmenter import Segmenter
from medsight.segmentation.evaluate import DatasetCases
from medsight.segmentation.profiles import AUC_SLACK, F1_SLACK, _keeps, measure_profiles, with_profiles

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The fixture segmenter with mirror and transpose TTA (8 views), measured on 4 disc cases."""
    root = tmp_path_factory.mktemp("profiles")
    discs = write_disc_folder(root / "discs", n=4, size=40, seed=2)
    bundle = load_bundle(FIXTURES / "segmenter")
    bundle.segmentation = bundle.segmentation.model_copy(update={"mirror_tta": True, "transpose_tta": True})
    dataset = open_seg_dataset(discs, label_names=dict(enumerate(bundle.label_names)))
    segmenter = Segmenter(bundle)
    profiles, note, rows = measure_profiles(lambda _: segmenter, DatasetCases(dataset, dataset.items))
    bundle.segmentation = with_profiles(bundle.segmentation, lambda _: segmenter, DatasetCases(dataset, dataset.items))
    return {"profiles": profiles, "note": note, "rows": rows, "folder": bundle.save(root / "model"),
            "dataset": dataset}


def test_every_candidate_is_measured_and_fast_keeps_within_the_slack(measured):
    rows, profiles = measured["rows"], measured["profiles"]
    assert [(r["views"], r["overlap"]) for r in rows] == [(v, o) for v in (1, 2, 4, 8) for o in (0.25, 0.5)]
    assert all(r["seconds"] > 0 and 0 <= r["f1"] <= 1 and 0 <= r["auc"] <= 1 for r in rows)
    accurate, fast = profiles["accurate"], profiles["fast"]
    assert (accurate.views, accurate.overlap) == (8, 0.5)  # the bundle's own options
    assert fast.seconds <= accurate.seconds
    assert fast.auc >= accurate.auc - AUC_SLACK and fast.f1 >= accurate.f1 - F1_SLACK
    faster = [r for r in rows if r["seconds"] < fast.seconds]
    assert not any(_keeps(r, accurate.model_dump()) for r in faster)  # nothing faster keeps the scores
    assert "4 case(s)" in measured["note"]


def test_the_choice_follows_the_scores_not_the_order():
    accurate = {"views": 8, "overlap": 0.5, "auc": 0.98, "f1": 0.80, "seconds": 8.0}
    assert _keeps({**accurate, "auc": 0.98 - AUC_SLACK, "f1": 0.80 - F1_SLACK}, accurate)
    assert not _keeps({**accurate, "auc": 0.98 - 2 * AUC_SLACK}, accurate)
    assert not _keeps({**accurate, "f1": 0.80 - 2 * F1_SLACK}, accurate)
    assert not _keeps({**accurate, "auc": None}, accurate)


def test_the_segmenter_predicts_with_the_profile_asked_for(measured):
    folder, dataset = measured["folder"], measured["dataset"]
    sample = dataset.read(dataset.items[0])[0]
    default, fast, accurate = (Segmenter(folder), Segmenter(folder, profile="fast"),
                               Segmenter(folder, profile="accurate"))
    assert default.profile_name == "fast" and accurate.profile_name == "accurate"
    np.testing.assert_array_equal(default.probabilities(sample), fast.probabilities(sample))
    chosen = measured["profiles"]["fast"]  # the fast map is the profile's views at its overlap, nothing else
    views = tta_views(2, mirror_tta=True, transpose_tta=True)[:chosen.views]
    expected = sliding_window_probs(fast.model, fast.prepare(sample), patch_size=fast.bundle.preprocess.size,
                                    overlap=chosen.overlap, views=views)
    np.testing.assert_allclose(fast.probabilities(sample), expected, atol=1e-6)
    every = sliding_window_probs(accurate.model, accurate.prepare(sample), patch_size=fast.bundle.preprocess.size,
                                 overlap=0.5, mirror_tta=True, transpose_tta=True)
    np.testing.assert_allclose(accurate.probabilities(sample), every, atol=1e-6)


def test_a_profile_the_bundle_cannot_give_is_a_clear_error(measured, tmp_path):
    old = FIXTURES / "segmenter"  # trained before profiles were measured
    assert Segmenter(old).profile_name == "accurate" and Segmenter(old).profile is None
    with pytest.raises(ConfigError, match="no measured profiles"):
        Segmenter(old, profile="fast")
    with pytest.raises(ConfigError, match="not an inference profile"):
        Segmenter(measured["folder"], profile="turbo")
    result = CliRunner().invoke(app, ["predict", str(FIXTURES / "classifier"), str(tmp_path), "--profile", "fast"])
    assert result.exit_code != 0 and "is for segmentation models" in result.output
    assert not (tmp_path / "predictions.csv").exists()


def test_predict_and_evaluate_take_the_profile(measured, tmp_path):
    folder, data = measured["folder"], measured["dataset"].root
    result = CliRunner().invoke(app, ["evaluate", str(folder), "--data", str(data), "--split", "all", "--out",
                                      str(tmp_path / "eval"), "--profile", "accurate", "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["profile"], metrics["backend"], metrics["n"]) == ("accurate", "torch", 4)
    result = CliRunner().invoke(app, ["predict", str(folder), str(Path(data) / "images"), "--out",
                                      str(tmp_path / "masks"), "--profile", "fast", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "masks").glob("*_mask.png"))) == 4
