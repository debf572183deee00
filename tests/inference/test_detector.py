"""Detection bundles: the ``detection`` settings saved and restored, the network rebuilt weight for weight, and
the Detector predicting scored boxes in each Sample's own index space."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsight.bundle import build_bundle, load_bundle, provenance
from medsight.bundle_fields import DetectionSettings
from medsight.config import DetectConfig, PreprocessConfig
from medsight.errors import BundleError
from medsight.models.detectors import build_detector

CLASSES = ["lesion", "cyst"]
SIZES = [[8.0, 8.0], [16.0, 16.0], [32.0, 32.0]]


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
