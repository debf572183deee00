"""A tiny detection bundle for the service and web-page tests, whose boxes are known before any request.

:func:`make_detection_bundle` builds MONAI's RetinaNet (resnet10, an 8-channel FPN) with seeded random weights and
the classification logits' bias set to 0 (instead of RetinaNet's 1% prior), so that with a score floor of 0 the
detector keeps its ``max_detections`` boxes with scores spread around 0.5. It predicts the boxes of
:func:`square_png` once and ships a score threshold half way between the 4th and 5th highest scores, so the
bundle's findings are exactly 4 boxes and the others lie below it. Nothing is trained (about 2 s).
:func:`make_volume_bundle` is a 3D one (16 x 32 x 32 input, 3 boxes per volume, random weights).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["lesion", "cyst"]
FINDINGS = 4
MAX_BOXES = 10


def square_png(size: tuple[int, int] = (48, 72), seed: int = 3) -> bytes:
    """A grey PNG (``size`` rows x columns) of faint noise with one bright square."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(40, 8, size)
    pixels[12:28, 30:46] = 200
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_detection_bundle(folder: Path, image: bytes | None = None, domain=None) -> Path:
    """The bundle (see the module) saved to ``folder/model``; its threshold leaves :data:`FINDINGS` findings
    on ``image`` (default :func:`square_png`); ``domain``: its domain record (None: none, as an older bundle)."""
    import torch

    from medsight.bundle import build_bundle, provenance
    from medsight.config import DetectConfig, PreprocessConfig
    from medsight.inference.detector import Detector
    from medsight.io import read_image
    from medsight.models.detectors import build_detector

    torch.manual_seed(0)
    detect = DetectConfig(score_floor=0.0, max_detections=MAX_BOXES, nms_iou=0.3)
    detector = build_detector(2, 1, CLASSES, detect, [[8.0, 8.0], [16.0, 16.0], [32.0, 32.0]], backbone="resnet10",
                              fpn_channels=8)
    with torch.no_grad():
        detector.network.classification_head.cls_logits.bias.zero_()
        detector.network.classification_head.cls_logits.weight.mul_(20.0)
    preprocess = PreprocessConfig(size=[64, 64], channels=1, normalize="zscore", keep_aspect=True)

    def save(threshold: float, note: str) -> Path:
        return build_bundle(
            task="detection", model=detector.spec.model_config(), label_names=CLASSES,
            provenance=provenance(data="/data/squares", n_train=0), preprocess=preprocess,
            state_dict=detector.network.state_dict(),
            detection=detector.spec.settings(detect, score_threshold=threshold, threshold_note=note), domain=domain,
        ).save(folder / "model")

    bundle = save(0.5, "a placeholder")
    path = folder / "case.png"
    path.write_bytes(image or square_png())
    scores = np.sort(Detector.from_bundle(bundle).predict([read_image(path)])[0].scores)[::-1]
    assert len(scores) > FINDINGS + 1 and scores[FINDINGS - 1] > scores[FINDINGS], scores
    return save(float((scores[FINDINGS - 1] + scores[FINDINGS]) / 2), "a test's: 4 findings on the square image")


def make_volume_bundle(folder: Path) -> Path:
    """A 3D RetinaNet bundle with seeded random weights that keeps 3 boxes per volume: ``folder/model3d``."""
    import torch

    from medsight.bundle import build_bundle, provenance
    from medsight.config import DetectConfig, PreprocessConfig
    from medsight.models.detectors import build_detector

    torch.manual_seed(0)
    detect = DetectConfig(score_floor=0.0, max_detections=3)
    detector = build_detector(3, 1, CLASSES, detect, [[8.0, 8.0, 8.0], [16.0, 16.0, 16.0]], backbone="resnet10",
                              fpn_channels=8)
    return build_bundle(
        task="detection", model=detector.spec.model_config(), label_names=CLASSES, provenance=provenance(),
        preprocess=PreprocessConfig(size=[16, 32, 32], channels=1, normalize="zscore", keep_aspect=True),
        state_dict=detector.network.state_dict(), detection=detector.spec.settings(detect),
    ).save(folder / "model3d")
