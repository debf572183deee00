"""Detection bundles: the ``detection`` settings saved and restored, the network rebuilt weight for weight, and
the Detector predicting scored boxes in each Sample's own index space."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from det_squares import square_detector_bundle, square_sample

from medsight.boxes import Boxes
from medsight.bundle import build_bundle, load_bundle, provenance
from medsight.bundle_fields import DetectionSettings
from medsight.config import DetectConfig, PreprocessConfig
from medsight.errors import BundleError, InvalidImageError
from medsight.inference.detector import Detector
from medsight.models.detectors import build_detector
from medsight.sample import Sample
from medsight.transforms.box_geometry import fit_sample

CLASSES = ["lesion", "cyst"]
SIZES = [[8.0, 8.0], [16.0, 16.0], [32.0, 32.0]]
SEED = 0


def _bundle(folder: Path, detector, detect: DetectConfig, size: int = 64):
    return build_bundle(
        task="detection", model=detector.spec.model_config(), label_names=CLASSES, provenance=provenance(),
        preprocess=PreprocessConfig(size=[size, size], channels=1, normalize="zscore", keep_aspect=True),
        state_dict=detector.network.state_dict(),
        detection=detector.spec.settings(detect, score_threshold=0.37, threshold_note="FROC at 1 FP per image"),
    ).save(folder)


def test_a_detection_bundle_keeps_its_settings_and_rebuilds_the_network(tmp_path):
    torch.manual_seed(0)
    detect = DetectConfig(score_floor=0.02, nms_iou=0.4, max_detections=50, aspect_ratios=[0.5, 1.0])
    detector = build_detector(2, 1, CLASSES, detect, SIZES, fpn_channels=16)
    folder = _bundle(tmp_path / "model", detector, detect)
    written = json.loads((folder / "bundle.json").read_text())
    assert written["task"] == "detection" and written["detection"] == {
        "anchor_sizes": SIZES, "aspect_ratios": [0.5, 1.0], "score_floor": 0.02, "nms_iou": 0.4,
        "max_detections": 50, "backbone": "resnet18", "score_threshold": 0.37,
        "threshold_note": "FROC at 1 FP per image"}
    bundle = load_bundle(folder)
    assert bundle.detection == DetectionSettings.model_validate(written["detection"])
    network = bundle.build_model()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        mine, theirs = detector.network.eval()(x), network(x)
    for key in ("classification", "box_regression"):
        assert all(torch.equal(a, b) for a, b in zip(mine[key], theirs[key], strict=True))


def test_a_detection_manifest_with_a_bad_setting_names_the_field(tmp_path):
    detector = build_detector(2, 1, CLASSES, DetectConfig(), SIZES, fpn_channels=16)
    folder = _bundle(tmp_path / "model", detector, DetectConfig())
    manifest = json.loads((folder / "bundle.json").read_text())
    manifest["detection"]["nms_iou"] = 1.5
    (folder / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"bundle.json: field detection.nms_iou: .*less than or equal to 1"):
        load_bundle(folder)


@pytest.fixture(scope="module")
def square_bundle(tmp_path_factory) -> Path:
    """A detector trained for 80 steps to find bright squares of 8-20 pixels on 64-pixel images (about 6 s)."""
    return square_detector_bundle(tmp_path_factory.mktemp("square") / "model", steps=80, seed=SEED)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))


def test_the_detector_finds_the_square_in_each_samples_own_pixels(square_bundle):
    """Two images of other sizes and shapes than the training's: a finding fits each image's square (IoU >= 0.5)
    and every finding overlaps it, in that image's own pixels."""
    rng = np.random.default_rng(5)
    truth = {(96, 128): (30, 60, 50, 80), (50, 40): (10, 12, 24, 26)}  # 20 px at scale 1/2, 14 px at 1.28
    samples = [square_sample(shape, box, rng) for shape, box in truth.items()]
    detector = Detector.from_bundle(square_bundle)
    assert detector.score_threshold == 0.5 and detector.threshold_note == "a test's"
    predicted = detector.predict(samples)
    assert len(predicted) == 2
    for sample, boxes, box in zip(samples, predicted, truth.values(), strict=True):
        assert boxes.scores is not None and (boxes.scores >= 0.05).all() and (np.diff(boxes.scores) <= 0).all()
        assert (boxes.corners >= 0).all() and (boxes.corners[:, 2:] <= sample.spatial_shape).all()
        findings = detector.findings(boxes)
        assert len(findings) == int((boxes.scores >= 0.5).sum()) >= 1
        assert max(_iou(corners, np.array(box, float)) for corners in findings.corners) >= 0.5
        assert min(_iou(corners, np.array(box, float)) for corners in findings.corners) > 0


def test_predict_is_the_network_on_fit_sample_mapped_back_in_any_batch(tmp_path):
    torch.manual_seed(1)
    detect = DetectConfig(score_floor=0.0, max_detections=5)
    detector = build_detector(2, 1, CLASSES, detect, SIZES, fpn_channels=16)
    folder = _bundle(tmp_path / "model", detector, detect)
    rng = np.random.default_rng(2)
    samples = [square_sample((80, 48), (5, 5, 20, 20), rng), square_sample((33, 70), (3, 9, 12, 30), rng)]
    together = Detector.from_bundle(folder).predict(samples)
    apart = Detector.from_bundle(folder, batch_size=1).predict(samples)
    network = build_detector(2, 1, CLASSES, detect, SIZES, fpn_channels=16)
    network.network.load_state_dict(load_bundle(folder).state_dict)
    network.eval()
    for sample, mine, alone in zip(samples, together, apart, strict=True):
        image, _, where = fit_sample(sample, load_bundle(folder, weights=False).preprocess)
        with torch.no_grad():
            out = network(torch.from_numpy(image)[None])[0]
        expected = where.to_source(Boxes(out["boxes"].double().numpy(), out["labels"].numpy(),
                                         out["labels_scores"].double().numpy()))
        # float32 network outputs, the same operations in another batch: equal to float32 rounding of the pixels
        for got in (mine, alone):
            np.testing.assert_allclose(got.corners, expected.corners, rtol=0, atol=1e-3)
            np.testing.assert_allclose(got.scores, expected.scores, rtol=0, atol=1e-5)
            assert got.labels.tolist() == expected.labels.tolist()
        assert 0 < len(mine) <= 5 and (mine.corners[:, 2:] <= sample.spatial_shape).all()  # boxes in the padding go


def test_a_classifier_bundle_or_a_volume_is_refused_with_the_fix(tmp_path, square_bundle):
    bundle = load_bundle(square_bundle)
    bundle.task = "classification"
    with pytest.raises(BundleError, match="not a detector; use Predictor for classifiers"):
        Detector(bundle)
    volume = Sample(np.zeros((1, 8, 32, 32), np.float32), (1.0, 1.0, 1.0), meta={"path": "ct.nii.gz"})
    with pytest.raises(InvalidImageError, match="ct.nii.gz: this model takes 2D images"):
        Detector.from_bundle(square_bundle).predict([volume])


def test_detection_settings_that_contradict_the_network_are_refused(square_bundle):
    bundle = load_bundle(square_bundle)
    bundle.detection = bundle.detection.model_copy(update={"anchor_sizes": [[4.0, 4.0], [8.0, 8.0], [16.0, 16.0]]})
    with pytest.raises(BundleError, match="detection.anchor_sizes .* is not the network's model.kwargs.anchor_sizes"):
        Detector(bundle)


def test_a_3d_detector_gives_boxes_inside_each_volume(tmp_path):
    torch.manual_seed(0)
    detect = DetectConfig(score_floor=0.0, max_detections=4)
    detector = build_detector(3, 1, CLASSES, detect, [[8.0, 8.0, 8.0], [16.0, 16.0, 16.0]], fpn_channels=8)
    folder = build_bundle(
        task="detection", model=detector.spec.model_config(), label_names=CLASSES, provenance=provenance(),
        preprocess=PreprocessConfig(size=[16, 32, 32], channels=1, normalize="zscore", keep_aspect=True),
        state_dict=detector.network.state_dict(), detection=detector.spec.settings(detect),
    ).save(tmp_path / "model")
    rng = np.random.default_rng(0)
    volumes = [Sample(rng.normal(size=(1, *shape)).astype(np.float32), (1.0, 1.0, 1.0))
               for shape in ((20, 40, 30), (9, 64, 50))]
    for volume, boxes in zip(volumes, Detector.from_bundle(folder).predict(volumes), strict=True):
        assert boxes.corners.shape[1] == 6 and 0 < len(boxes) <= 4
        assert (boxes.corners >= 0).all() and (boxes.corners[:, 3:] <= volume.spatial_shape).all()
        assert (boxes.extents() > 0).all()
