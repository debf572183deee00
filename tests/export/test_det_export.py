"""`medsight export` of a detection bundle: the RetinaNet's raw head outputs as ONNX, export.json's account of the
post-processing, parity on the heads and the boxes, and the Detector on ONNX Runtime (or refusing a bad export)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from det_squares import square_detector_bundle, square_sample, write_squares
from typer.testing import CliRunner

from medsight.bundle import load_bundle
from medsight.cli.export_cmd import export
from medsight.errors import BundleError, ConfigError
from medsight.export import ExportError, export_bundle
from medsight.inference.detector import Detector
from medsight.sample import Sample
from medsight.transforms.box_geometry import fit_sample

SIZES = [[8.0, 8.0], [16.0, 16.0], [32.0, 32.0]]


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("export")(export)
    app.command("unused")(lambda: None)
    return app


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A detector trained 40 steps on bright squares in 64 px images (a few seconds), and a square data set."""
    root = tmp_path_factory.mktemp("det_export")
    folder = square_detector_bundle(root / "model", steps=40, score_threshold=0.4)
    return folder, write_squares(root / "data", n=8, n_val=4, side=(10, 16))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the bundle after `medsight export BUNDLE --format onnx --data DATA`, and what the command printed."""
    bundle, data = trained
    folder = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(bundle, folder)
    result = CliRunner().invoke(_cli(), ["export", str(folder), "--format", "onnx", "--data", str(data),
                                         "--no-progress"])
    assert result.exit_code == 0, result.output
    return folder, result.output


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    return target


def test_export_writes_the_head_graph_and_describes_the_post_processing(exported):
    folder, output = exported
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["task"] == "detection" and manifest["label_names"] == ["square"] and manifest["threshold"] == 0.4
    record = manifest["formats"]["onnx"]
    assert record["inputs"] == [{"name": "image", "shape": ["batch", 1, "height", "width"], "dtype": "float32"}]
    assert [(o["name"], o["shape"]) for o in record["outputs"]] == [
        ("classification", ["batch", "anchors", 1]), ("box_regression", ["batch", "anchors", 4])]
    det = record["detection"]
    # strides 4, 8, 16 on a 64 px input: 16x16, 8x8 and 4x4 positions, 3 anchor shapes (aspect ratios) at each
    assert [level["stride"] for level in det["levels"]] == [4, 8, 16]
    assert [level["feature_shape"] for level in det["levels"]] == [[16, 16], [8, 8], [4, 4]]
    assert [level["first_anchor"] for level in det["levels"]] == [0, 768, 960] and det["anchor_count"] == 1008
    assert det["levels"][1]["cell_anchors"][1] == [-8.0, -8.0, 8.0, 8.0]  # the 16 px square anchor, ratio 1
    assert det["padded_input_size"] == [64, 64] and det["size_divisible"] == [16, 16]
    assert det["box_coder"]["weights"] == [1.0, 1.0, 1.0, 1.0]
    assert det["selection"]["score_floor"] == 0.05 and det["selection"]["nms_iou"] == 0.5
    assert det["selection"]["max_detections"] == 100 and det["score_threshold"] == 0.4
    assert det["made_for"]["input_size"] == [64, 64] and det["made_for"]["anchor_sizes"] == SIZES
    assert any("z-score" in step for step in record["preprocessing"]["outside_graph"])
    heads = record["parity"]["heads"]
    for name in ("classification", "box_regression"):
        # within 4x PyTorch's own float32 error (measured against float64); float32 arithmetic gives ~1e-6 here
        assert 0 <= heads[name]["max_abs_diff"] <= heads[name]["tolerance"] < 1e-4
    boxes = record["parity"]["boxes"]
    assert boxes["torch_boxes"] == boxes["onnx_boxes"] == boxes["matched"] > 0 and boxes["ties"] == []
    assert boxes["min_iou"] > 0.99 and boxes["max_score_diff"] <= boxes["score_tolerance"] < 1e-4
    assert "parity: max |head output - torch|: classification" in output and "boxes:" in output


def test_an_app_reproduces_the_anchors_and_a_box_from_export_json(exported):
    """The anchors and the box decoding written in export.json give the Detector's own anchors and top box."""
    folder, _ = exported
    det = json.loads((folder / "export.json").read_text())["formats"]["onnx"]["detection"]
    anchors = []
    for level in det["levels"]:
        s = level["stride"]
        rows, cols = np.meshgrid(*(np.arange(n) * s + s // 2 for n in level["feature_shape"]), indexing="ij")
        centres = np.stack([rows.ravel(), cols.ravel()] * 2, axis=1)
        anchors.append((centres[:, None, :] + np.asarray(level["cell_anchors"])[None]).reshape(-1, 4))
    anchors = np.concatenate(anchors)
    detector = Detector.from_bundle(folder)
    np.testing.assert_array_equal(anchors, detector._anchors_of((64, 64))[0].numpy())
    square = square_sample((64, 64), (20, 30, 36, 46), np.random.default_rng(1))
    image = fit_sample(square, detector.bundle.preprocess)[0]
    classification, regression = (o.numpy()[0] for o in detector._onnx(torch.from_numpy(image[None])))
    best = int(classification[:, 0].argmax())
    centre, extent = (anchors[best, :2] + anchors[best, 2:]) / 2, anchors[best, 2:] - anchors[best, :2]
    code = regression[best] / np.asarray(det["box_coder"]["weights"])
    middle = code[:2] * extent + centre
    size = np.exp(np.minimum(code[2:], det["box_coder"]["clip"])) * extent
    top = detector.predict([Sample(image[:, :, :], (1.0, 1.0))])[0]  # z-scoring a z-scored image changes ~nothing
    np.testing.assert_allclose(np.r_[middle - size / 2, middle + size / 2], top.corners[0], atol=1e-3)


def test_onnx_prediction_gives_the_torch_boxes(exported):
    folder, _ = exported
    record = json.loads((folder / "export.json").read_text())["formats"]["onnx"]["parity"]["boxes"]
    rng = np.random.default_rng(3)
    samples = [square_sample((96, 128), (30, 60, 50, 80), rng), square_sample((50, 40), (10, 12, 24, 26), rng)]
    on_onnx, on_torch = Detector.from_bundle(folder), Detector.from_bundle(folder, backend="torch")
    assert (on_onnx.backend, on_torch.backend) == ("onnx", "torch")
    for mine, theirs in zip(on_onnx.predict(samples), on_torch.predict(samples), strict=True):
        assert len(mine) == len(theirs) > 0 and mine.labels.tolist() == theirs.labels.tolist()
        # box corners: float32 head outputs, decoded and scaled back to each image: within 1e-3 pixel
        np.testing.assert_allclose(mine.corners, theirs.corners, rtol=0, atol=1e-3)
        np.testing.assert_allclose(mine.scores, theirs.scores, rtol=0, atol=record["score_tolerance"])


def test_predict_command_takes_the_backend(exported, trained, tmp_path):
    from medsight.detection.predict import predict_boxes

    folder, images = exported[0], trained[1].parent / "images"
    rows = {}
    for backend in ("onnx", "torch"):
        counts = predict_boxes(bundle=folder, inputs=[images], out=tmp_path / backend, progress=False, backend=backend)
        assert counts == {"ok": 8, "errors": 0, "skipped": 0}
        rows[backend] = (tmp_path / backend / "boxes.csv").read_text().splitlines()
    assert len(rows["onnx"]) == len(rows["torch"]) > 9
    assert [r.split(",")[5] for r in rows["onnx"]] == [r.split(",")[5] for r in rows["torch"]]  # the labels


def test_a_bundle_without_a_matching_export_runs_on_torch(trained, tmp_path):
    folder = _copy(trained[0], tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no export: no warning either
        assert Detector.from_bundle(folder).backend == "torch"
    with pytest.raises(BundleError, match="has no ONNX export; run `medsight export"):
        Detector.from_bundle(folder, backend="onnx")
    with pytest.raises(BundleError, match="an ONNX backend needs the bundle folder"):
        Detector.from_bundle(load_bundle(folder), backend="onnx")
    with pytest.raises(ConfigError, match="backend=tpu: unknown backend"):
        Detector.from_bundle(folder, backend="tpu")


def test_a_corrupted_export_is_refused_and_auto_falls_back_with_a_warning(exported, tmp_path):
    folder = _copy(exported[0], tmp_path)
    with open(folder / "model.onnx", "r+b") as handle:
        handle.seek(2000)
        handle.write(b"\x00" * 16)
    with pytest.raises(BundleError, match="model.onnx is missing or differs from the one export.json records"):
        Detector.from_bundle(folder, backend="onnx")
    with pytest.warns(UserWarning, match="differs from the one export.json records; using PyTorch"):
        assert Detector.from_bundle(folder).backend == "torch"


@pytest.mark.parametrize("edit, message", [
    (lambda bundle, export_json: bundle["preprocess"].update(size=[96, 96]),
     r"export.json records input_size \[64, 64\] for model.onnx, the bundle \[96, 96\]"),
    (lambda bundle, export_json: export_json["formats"]["onnx"].pop("detection"),
     "model.onnx is not recorded as a detection export"),
])
def test_an_export_made_for_other_settings_is_refused(exported, tmp_path, edit, message):
    folder = _copy(exported[0], tmp_path)
    bundle, export_json = (json.loads((folder / name).read_text()) for name in ("bundle.json", "export.json"))
    edit(bundle, export_json)
    (folder / "bundle.json").write_text(json.dumps(bundle))
    (folder / "export.json").write_text(json.dumps(export_json))
    with pytest.raises(BundleError, match=message):
        Detector.from_bundle(folder, backend="onnx")
    with pytest.warns(UserWarning, match="using PyTorch"):
        assert Detector.from_bundle(folder).backend == "torch"


@pytest.mark.parametrize("options", [{"fmt": "torchscript"}, {"fmt": "onnx", "int8": True}])
def test_torchscript_and_int8_are_refused_for_a_detector(trained, tmp_path, options):
    folder = _copy(trained[0], tmp_path)
    with pytest.raises(ConfigError, match="a detection bundle exports to fp32 ONNX only"):
        export_bundle(bundle=folder, data=str(trained[1]), progress=False, **options)
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "weights.safetensors"]


def test_an_export_that_misses_parity_writes_nothing(trained, tmp_path, monkeypatch):
    import medsight.export.detection_parity as parity

    monkeypatch.setattr(parity, "ERROR_FACTOR", 0)
    monkeypatch.setattr(parity, "ULPS", 0)  # no difference at all allowed: float32 arithmetic always leaves some
    folder = _copy(trained[0], tmp_path)
    with pytest.raises(ExportError, match="outputs differ from PyTorch's by up to .* nothing was written"):
        export_bundle(bundle=folder, fmt="onnx", data=str(trained[1]), progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "weights.safetensors"]
