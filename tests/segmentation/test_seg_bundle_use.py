"""A trained segmentation bundle used by evaluate, predict and the Segmenter, on synthetic discs."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.errors import BundleError, ConfigError
from medsight.segmentation.pixel_scores import PixelScores


def _disc(rng, size=48):
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(12, size - 12, 2)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(5, 9) ** 2).astype(np.uint8)
    image = np.clip(60 + rng.normal(0, 20, (size, size)) + 120 * mask, 0, 255).astype(np.uint8)
    return image, mask


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Discs with a circular region of interest, and a run trained on them through the CLI."""
    root = tmp_path_factory.mktemp("seg")
    data = root / "discs"
    for sub in ("images", "masks", "roi"):
        (data / sub).mkdir(parents=True)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :48]
    roi = ((yy - 24) ** 2 + (xx - 24) ** 2 <= 23**2).astype(np.uint8) * 255
    for k in range(10):
        image, mask = _disc(rng)
        Image.fromarray(image).save(data / "images" / f"c{k}.png")
        Image.fromarray(mask * 255).save(data / "masks" / f"c{k}.png")
        Image.fromarray(roi).save(data / "roi" / f"c{k}.png")
    run = root / "run"
    result = CliRunner().invoke(app, [
        "train", "--task", "segmentation", "--data", str(data), "--out", str(run), "--epochs", "4",
        "--lr", "0.003", "--set", "model.kwargs={base_features: 8}", "--set", "segment.patch_size=[48, 48]",
        "--set", "segment.batch_size=4", "--set", "segment.steps_per_epoch=10", "--set", "data.val_fraction=0.2",
        "--set", "preprocess.clahe=true",  # an intensity step: evaluation must apply it exactly once
        "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    return data, run


def test_training_writes_the_contract_metrics_and_a_tuned_threshold(trained):
    _, run = trained
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("dice", "iou", "hd95", "assd", "sensitivity", "precision", "auc", "pr_auc", "f1", "accuracy", "n"):
        assert key in metrics, key
    assert metrics["n"] == 2 and metrics["split"] == "val"
    assert metrics["dice"] > 0.7 and metrics["auc"] > 0.9
    manifest = json.loads((run / "model" / "bundle.json").read_text())
    threshold = manifest["segmentation"]["thresholds"]["1"]
    assert 0 < threshold < 1 and metrics["threshold"] == pytest.approx(threshold)
    assert manifest["segmentation"]["normalization"] == {"scheme": "zscore"}
    profiles = manifest["segmentation"]["profiles"]  # measured on the 2 validation cases, fast the default
    assert set(profiles) == {"fast", "accurate"} and manifest["segmentation"]["default_profile"] == "fast"
    assert (profiles["accurate"]["views"], profiles["accurate"]["overlap"]) == (1, 0.5)  # no TTA, overlap 0.5
    assert profiles["fast"]["overlap"] in (0.5, 0.25) and "2 case(s)" in manifest["segmentation"]["profile_note"]
    assert "validation cases" in manifest["provenance"]["threshold_note"]
    assert sorted(manifest["provenance"]["split"]["train"] + manifest["provenance"]["split"]["val"]) == [
        f"c{k}" for k in range(10)
    ]
    report = (run / "report.html").read_text()
    assert "Pixel level, all cases pooled" in report and "ROC-AUC" in report


def test_with_a_roi_on_every_case_dice_is_the_pooled_pixel_f1_inside_it(trained, tmp_path):
    """DRIVE's contract: ``dice`` is the pixel F1 at the model's threshold, pooled inside the ROIs."""
    data, run = trained
    result = CliRunner().invoke(app, ["predict", str(run / "model"), str(data / "images"),
                                      "--out", str(tmp_path / "pred"), "--no-progress"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["evaluate", str(run / "model"), "--data", str(data), "--split", "all",
                                      "--out", str(tmp_path / "ev"), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    tp = fp = fn = 0
    for k in range(10):
        roi = np.asarray(Image.open(data / "roi" / f"c{k}.png")) > 0
        truth = (np.asarray(Image.open(data / "masks" / f"c{k}.png")) > 0)[roi]
        pred = (np.asarray(Image.open(tmp_path / "pred" / f"c{k}_mask.png")) > 0)[roi]
        tp, fp, fn = tp + (pred & truth).sum(), fp + (pred & ~truth).sum(), fn + (~pred & truth).sum()
    assert metrics["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) == pytest.approx(metrics["f1"])
    assert metrics["dice_mean_case"] == pytest.approx(np.mean([row["dice"] for row in metrics["per_case"]]))
    assert metrics["dice_mean_case"] != pytest.approx(metrics["dice"], abs=1e-9)


def test_evaluate_on_the_val_cases_reproduces_the_training_metrics(trained, tmp_path):
    data, run = trained
    result = CliRunner().invoke(app, ["evaluate", str(run / "model"), "--data", str(data), "--split", "val",
                                      "--out", str(tmp_path / "ev"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "val: n=2 dice=" in result.output
    trained_metrics = json.loads((run / "metrics.json").read_text())
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("dice", "iou", "hd95", "auc", "pr_auc", "f1", "accuracy"):
        assert again[key] == pytest.approx(trained_metrics[key], abs=1e-9), key
    rows = list(csv.DictReader((tmp_path / "ev" / "per_case.csv").open()))
    assert len(rows) == 2 and {"case_id", "dice", "foreground_hd95"} <= set(rows[0])


def test_evaluate_on_the_training_data_needs_a_split_and_all_scores_every_case_inside_the_roi(trained, tmp_path):
    data, run = trained
    result = CliRunner().invoke(app, ["evaluate", str(run / "model"), "--data", str(data),
                                      "--out", str(tmp_path / "none"), "--no-progress"])
    assert result.exit_code == 2
    assert "is the data the model was trained on" in result.output and "--split all" in result.output
    assert not (tmp_path / "none").exists()
    result = CliRunner().invoke(app, ["evaluate", str(run / "model"), "--data", str(data), "--split", "all",
                                      "--out", str(tmp_path / "all"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"scored 10 cases of {data}: the all split (--split)" in result.output
    metrics = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["split"] == "all"
    # pixel accuracy is pooled over ROI pixels only: every ROI pixel of the 10 cases, once
    roi = np.asarray(Image.open(data / "roi" / "c0.png")) > 0
    assert 0.9 < metrics["accuracy"] <= 1.0 and roi.sum() < roi.size


def test_evaluate_val_split_on_other_data_is_a_clear_error(trained, tmp_path):
    data, run = trained
    other = tmp_path / "other"
    shutil.copytree(data, other)
    for sub in ("images", "masks", "roi"):
        for path in (other / sub).iterdir():
            path.rename(path.with_name("x" + path.name))
    result = CliRunner().invoke(app, ["evaluate", str(run / "model"), "--data", str(other), "--split", "val",
                                      "--out", str(tmp_path / "ev")])
    assert result.exit_code != 0
    assert "none of the model's 'val' cases" in result.output and "--split all" in result.output
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_evaluate_without_a_split_scores_every_case_of_other_data(trained, tmp_path):
    """External data is scored whole by default, and the summary says which cases and how many."""
    data, run = trained
    other = tmp_path / "other"
    shutil.copytree(data, other)
    result = CliRunner().invoke(app, ["evaluate", str(run / "model"), "--data", str(other),
                                      "--out", str(tmp_path / "ev"), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["split"] == "all"
    assert f"scored 10 cases of {other}: every case (the data is not the model's training data)" in result.output


def test_predict_writes_png_masks_on_the_input_grid_and_error_rows(trained, tmp_path):
    data, run = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in (0, 1):
        shutil.copy(data / "images" / f"c{k}.png", inputs / f"c{k}.png")
    (inputs / "broken.png").write_bytes(b"not a png")
    result = CliRunner().invoke(app, ["predict", str(run / "model"), str(inputs), "--out", str(tmp_path / "masks"),
                                      "--no-progress"])
    assert result.exit_code == 3, result.output  # a file failed: the rows are written, the exit code says so
    assert "wrote 2 mask(s)" in result.output and "1 of 3 files failed (see the error column)" in result.output
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader((tmp_path / "masks" / "predictions.csv").open())}
    assert rows["broken.png"]["error"] and not rows["broken.png"]["mask"]
    for k in (0, 1):
        mask = np.asarray(Image.open(tmp_path / "masks" / f"c{k}_mask.png")) > 0
        truth = np.asarray(Image.open(data / "masks" / f"c{k}.png")) > 0
        assert mask.shape == truth.shape
        assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.7
        assert int(rows[f"c{k}.png"]["voxels_foreground"]) == mask.sum()


def test_predict_writes_probability_maps_that_reproduce_the_masks(trained, tmp_path):
    from medsight.inference.segmenter import Segmenter

    data, run = trained
    out = tmp_path / "masks"
    images = [str(data / "images" / f"c{k}.png") for k in (0, 1)]
    result = CliRunner().invoke(app, ["predict", str(run / "model"), *images, "--out", str(out), "--probabilities",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    segmenter = Segmenter(run / "model")
    threshold = segmenter.thresholds[1]
    for k, row in enumerate(rows):
        assert row["prob_map_foreground"] == str(out / f"c{k}_prob_foreground.png")
        stored = np.asarray(Image.open(row["prob_map_foreground"]))
        assert stored.dtype == np.uint16 and stored.shape == (48, 48)
        _, expected = segmenter.segment_file(data / "images" / f"c{k}.png")
        np.testing.assert_allclose(stored / 65535, expected.probs[1], atol=0.5 / 65535 + 1e-6)
        assert 0.05 < (stored / 65535).mean() < 0.5  # a disc on a background, not an all-0 or all-1 map
        mask = np.asarray(Image.open(row["mask"])) > 0
        np.testing.assert_array_equal(stored / 65535 >= threshold, mask)

    before = (out / "predictions.csv").read_bytes()
    again = CliRunner().invoke(app, ["predict", str(run / "model"), *images, "--out", str(out), "--resume",
                                     "--no-progress"])  # resumed without --probabilities: other columns
    assert again.exit_code != 0 and "other options" in again.output
    assert (out / "predictions.csv").read_bytes() == before and (out / "c1_prob_foreground.png").is_file()


def test_mixed_precision_masks_agree_with_float32(trained, tmp_path):
    from medsight.runtime.device import cpu_has_native_bf16

    data, run = trained
    images = [str(data / "images" / f"c{k}.png") for k in range(4)]
    for name, flags in (("plain", []), ("mixed", ["--mixed-precision"])):
        result = CliRunner().invoke(app, ["predict", str(run / "model"), *images, "--out", str(tmp_path / name),
                                          "--probabilities", "--no-progress", *flags])
        assert result.exit_code == 0, result.output
    changed = 0.0
    for k in range(4):
        plain = np.asarray(Image.open(tmp_path / "plain" / f"c{k}_mask.png")) > 0
        mixed = np.asarray(Image.open(tmp_path / "mixed" / f"c{k}_mask.png")) > 0
        assert plain.sum() > 20 and (plain != mixed).mean() <= 0.01  # at most 1% of pixels flip at the threshold
        maps = [np.asarray(Image.open(tmp_path / name / f"c{k}_prob_foreground.png")) / 65535
                for name in ("plain", "mixed")]
        changed = max(changed, float(np.abs(maps[0] - maps[1]).max()))
    # bfloat16 really ran where the CPU has it (probabilities moved), and float32 ran where it does not
    assert (0.001 < changed < 0.1) if cpu_has_native_bf16() else changed == 0.0


@pytest.mark.parametrize("flag", ["--probabilities", "--mixed-precision"])
def test_segmenter_options_are_refused_for_a_classifier(trained_run, small_phantoms, tmp_path, flag):
    image = sorted(p for p in small_phantoms.rglob("*") if p.suffix in {".png", ".dcm", ".gz"})[0]
    result = CliRunner().invoke(app, ["predict", str(trained_run / "model"), str(image), "--out",
                                      str(tmp_path / "p.csv"), flag])
    assert result.exit_code != 0 and f"{flag}: is for segmentation models" in result.output
    assert not (tmp_path / "p.csv").exists()


def test_predict_into_a_csv_path_is_refused_for_a_segmenter(trained, tmp_path):
    data, run = trained
    result = CliRunner().invoke(app, ["predict", str(run / "model"), str(data / "images" / "c0.png"),
                                      "--out", str(tmp_path / "p.csv")])
    assert result.exit_code != 0 and "into a folder" in result.output
    assert not (tmp_path / "p.csv").exists()


def test_segmenter_refuses_a_classifier_bundle(trained_run):
    from medsight.inference.segmenter import Segmenter

    with pytest.raises(BundleError, match="not a segmentation model"):
        Segmenter(trained_run / "model")


def test_pixel_scores_match_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.random((60, 70)) < 0.2
    prob = np.clip(truth * 0.3 + rng.random((60, 70)) * 0.7, 0, 1)
    roi = np.zeros_like(truth)
    roi[5:55, 5:65] = True
    scores = PixelScores()
    scores.add(prob[:30], truth[:30], roi=roi[:30])
    scores.add(prob[30:], truth[30:], roi=roi[30:])
    assert scores.roc_auc() == pytest.approx(roc_auc_score(truth[roi], prob[roi]), abs=1e-3)
    assert scores.pr_auc() == pytest.approx(average_precision_score(truth[roi], prob[roi]), abs=2e-3)
    threshold, dice = scores.best_threshold()
    pred = prob[roi] >= threshold
    assert dice == pytest.approx(2 * (pred & truth[roi]).sum() / (pred.sum() + truth[roi].sum()), abs=1e-3)


def test_bad_thresholds_are_config_errors():
    from medsight.config import load_config

    with pytest.raises(ConfigError, match="thresholds"):
        load_config(overrides={"segment.thresholds": {1: 1.5}})


def test_uncertainty_maps_scores_and_their_link_to_dice(trained, tmp_path):
    from medsight.inference.uncertainty import case_uncertainty, entropy_map

    data, run = trained
    uniform, certain = np.full((2, 4, 4), 0.5), np.stack([np.ones((4, 4)), np.zeros((4, 4))])
    assert np.allclose(entropy_map(uniform), 1.0) and np.allclose(entropy_map(certain), 0.0, atol=1e-9)
    assert case_uncertainty(np.array([[0.2, 0.8]]), np.array([[0, 1]])) == pytest.approx(0.8)
    result = CliRunner().invoke(app, ["evaluate", str(run / "model"), "--data", str(data), "--split", "all",
                                      "--out", str(tmp_path / "ev"), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    link = metrics["uncertainty"]
    assert link["n"] == 10 and -1 <= link["spearman_vs_dice"] <= 1 and 0 <= link["mean"] <= 1
    assert all(0 <= row["uncertainty"] <= 1 for row in metrics["per_case"])
    assert "Spearman rank correlation with the case Dice" in (tmp_path / "ev" / "report.html").read_text()
    result = CliRunner().invoke(app, ["predict", str(run / "model"), str(data / "images" / "c0.png"),
                                      "--out", str(tmp_path / "masks"), "--no-progress"])
    assert result.exit_code == 0, result.output
    row = next(csv.DictReader((tmp_path / "masks" / "predictions.csv").open()))
    heat = np.asarray(Image.open(tmp_path / "masks" / "c0_uncertainty.png"))
    assert heat.shape == (48, 48) and row["uncertainty_map"].endswith("c0_uncertainty.png")
    assert 0 <= float(row["uncertainty"]) <= 1


@pytest.mark.parametrize(("mirror", "transpose"), [(False, False), (True, False), (False, True), (True, True)])
def test_the_segmenter_replays_the_bundles_tta_settings(trained, tmp_path, mirror, transpose):
    """The bundle's mirror_tta / transpose_tta decide the views the Segmenter averages; a bundle written
    before transpose_tta existed (no key) predicts without it."""
    from medsight.inference.segment import sliding_window_probs
    from medsight.inference.segmenter import Segmenter
    from medsight.io import read_image

    data, run = trained
    model = tmp_path / "model"
    shutil.copytree(run / "model", model)
    manifest = json.loads((model / "bundle.json").read_text())
    assert manifest["segmentation"]["transpose_tta"] is False  # what training wrote
    manifest["segmentation"].update(mirror_tta=mirror, transpose_tta=transpose)
    if not transpose:
        del manifest["segmentation"]["transpose_tta"]
    (model / "bundle.json").write_text(json.dumps(manifest))
    segmenter = Segmenter(model, profile="accurate")  # the bundle's own options (fast was measured without TTA)
    sample = read_image(data / "images" / "c0.png")
    expected = sliding_window_probs(segmenter.model, segmenter.prepare(sample), patch_size=[48, 48],
                                    mirror_tta=mirror, transpose_tta=transpose)
    np.testing.assert_allclose(segmenter.probabilities(sample), expected, atol=1e-6)
