"""``medsight evaluate`` and ``medsight predict`` on a detection bundle: the files, their columns and the box
coordinates in each image's own pixels (x the column, y the row), and an unreadable file's error row."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from det_squares import write_squares
from PIL import Image
from typer.testing import CliRunner

from medsight.bundle import load_bundle
from medsight.cli.main import app
from medsight.config import load_config
from medsight.detection.predict import FIELDS_2D
from medsight.io import read_image
from medsight.workflows.train import run_training


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_cli")
    manifest = write_squares(root / "data")
    cfg = load_config(overrides={
        "task": "detection", "data.path": str(manifest), "preprocess.size": [64, 64], "preprocess.keep_aspect": True,
        "preprocess.normalize": "zscore", "train.batch_size": 6, "train.epochs": 2, "eval.bootstrap": 0,
        "detect.anchor_sizes": [[12, 12], [12, 12], [24, 24]], "detect.score_floor": 0.01})
    run_training(cfg, out=root / "run", progress=False)
    return root, manifest


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_evaluate_scores_the_split_asked_for(detection_run, tmp_path):
    root, manifest = detection_run
    result = _invoke("evaluate", root / "run" / "model", "--data", manifest, "--split", "all", "--out", tmp_path,
                     "--no-progress")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["task"] == "detection" and metrics["n"] == 24 and metrics["n_boxes"] == 30
    assert metrics["split"] == "all" and metrics["errors"] == 0
    rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert len(rows) == 24 and sum(int(r["n_true"]) for r in rows) == 30
    assert (tmp_path / "report.html").is_file() and "ap50=" in result.output


def test_evaluate_on_the_training_data_scores_its_held_out_test_split(detection_run, tmp_path):
    root, manifest = detection_run
    result = _invoke("evaluate", root / "run" / "model", "--data", manifest, "--out", tmp_path, "--no-progress")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    trained = load_bundle(root / "run" / "model", weights=False).split.cases
    scored = [r["id"] for r in csv.DictReader((tmp_path / "per_image.csv").open())]
    assert metrics["split"] == "test" and scored and not set(scored) & set(trained["train"] + trained["val"])


def test_predict_writes_boxes_in_each_images_pixels(detection_run, tmp_path):
    root, _ = detection_run
    wide = tmp_path / "in" / "wide.png"  # 64 rows x 128 columns: x runs to 128, y to 64
    wide.parent.mkdir()
    pixels = np.full((64, 128), 40, np.uint8)
    pixels[20:32, 100:112] = 220
    Image.fromarray(pixels).save(wide)
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not a png")
    images = [root / "data" / "images" / "img000.png", wide, broken]
    out = tmp_path / "boxes"
    result = _invoke("predict", root / "run" / "model", *images, "--out", out, "--no-progress")
    assert result.exit_code == 3, result.output  # one file failed; the others were written
    rows = list(csv.DictReader((out / "boxes.csv").open()))
    assert list(rows[0]) == list(FIELDS_2D)
    assert {r["path"] for r in rows} == {str(p) for p in images}
    errors = [r for r in rows if r["error"]]
    assert [r["path"] for r in errors] == [str(broken)] and errors[0]["x1"] == ""
    bundle = load_bundle(root / "run" / "model")
    threshold = bundle.detection.score_threshold
    from medsight.inference.detector import Detector

    detector = Detector.from_bundle(bundle)
    for path, (height, width) in ((images[0], (64, 64)), (wide, (64, 128))):
        mine = [r for r in rows if r["path"] == str(path) and r["x1"] != ""]
        expected = detector.predict([read_image(path)])[0]
        assert len(mine) == len(expected)
        xy = np.array([[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in mine]).reshape(-1, 4)
        np.testing.assert_allclose(xy, expected.xy(), atol=1e-3)  # x is the column, y the row
        assert np.all(xy[:, [0, 2]] <= width) and np.all(xy[:, [1, 3]] <= height) and np.all(xy >= 0)
        assert [int(r["finding"]) for r in mine] == [int(s >= threshold) for s in expected.scores]
        assert (out / "overlays" / f"{path.stem}.png").is_file()
    document = json.loads((out / "boxes.json").read_text())
    assert document["threshold"] == threshold and document["images"][str(broken)]["error"]
    assert not (out / "overlays" / "broken.png").exists()


def test_predict_refuses_a_file_as_out(detection_run, tmp_path):
    root, _ = detection_run
    result = _invoke("predict", root / "run" / "model", root / "data" / "images", "--out", tmp_path / "x.csv",
                     "--no-progress")
    assert result.exit_code != 0 and "into a folder" in result.output


def test_the_bundle_records_its_domain_from_the_fingerprint(detection_run):
    root, _ = detection_run
    domain = load_bundle(root / "run" / "model", weights=False).domain
    assert domain is not None and domain.action == "flag"
    assert domain.channels == [1] and domain.size_min == [64, 64] and domain.size_max == [64, 64]
    # the squares' images: noise around 40 with squares at 200 (8-bit values)
    assert 0 <= domain.intensity.low < 40 < 200 <= domain.intensity.high <= 255
    assert domain.features is None and any("feature distance is not checked" in n for n in domain.notes)
    fingerprint = json.loads((root / "run" / "fingerprint.json").read_text())
    assert fingerprint["intensity"]["p99_5"] == domain.intensity.high  # written by the run, not by a plan


def _odd_inputs(folder):
    folder.mkdir()
    blank, colour = folder / "blank.png", folder / "colour.png"
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(blank)
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 250, 10
    Image.fromarray(rgb, "RGB").save(colour)
    return blank, colour


@pytest.mark.parametrize("action", ["flag", "refuse", "off"])
def test_predict_checks_each_image_against_the_domain(detection_run, tmp_path, action):
    root, _ = detection_run
    normal = root / "data" / "images" / "img000.png"
    blank, colour = _odd_inputs(tmp_path / "in")
    out = tmp_path / "boxes"
    result = _invoke("predict", root / "run" / "model", normal, blank, colour, "--out", out,
                     "--out-of-domain", action, "--no-progress")
    rows = list(csv.DictReader((out / "boxes.csv").open()))
    images = json.loads((out / "boxes.json").read_text())["images"]
    mine = [r for r in rows if r["path"] == str(normal)]
    assert mine and all(not r["error"] for r in mine)  # the image like the training ones is answered in every mode
    if action == "off":
        assert result.exit_code == 0, result.output
        assert {r["out_of_domain"] for r in rows} == {""} and images[str(blank)]["out_of_domain"] is None
        return
    assert all(r["out_of_domain"] == "0" for r in mine) and images[str(normal)]["domain_reasons"] == []
    if action == "flag":
        assert result.exit_code == 0, result.output
        assert {r["out_of_domain"] for r in rows if r["path"] == str(blank)} == {"1"}
        assert "blank" in images[str(blank)]["domain_reasons"][0]
        assert any("3 channel(s)" in reason for reason in images[str(colour)]["domain_reasons"])
    else:
        assert result.exit_code == 3, result.output  # the two refused files failed; the normal one was answered
        refused = {r["path"]: r["error"] for r in rows if r["error"]}
        assert set(refused) == {str(blank), str(colour)}
        assert "outside the model's training domain" in refused[str(blank)] and "blank" in refused[str(blank)]
