"""Our mAP and AP50 against pycocotools on the same boxes (issue 34's cross-check).

The conversion is exact: the scenes' coordinates are multiples of 1/64 px below 2^10, so ``x = c1``,
``w = c2 - c1`` and pycocotools' ``x + w`` are exact in float64, and both sides compute every IoU with the
same operations (``inter = w * h``, ``union = (area_dt + area_gt) - inter``, one rounding division), so
each prediction is matched identically. COCO's area ranges are opened to all sizes and maxDets exceeds
every image's predictions, so nothing is ignored or cut. What can still differ: pycocotools divides
``tp / (tp + fp + eps)`` with eps = 2.2e-16 (a relative change <= 2.2e-16 per precision value) and sums
its 10 x 101 x K precision values in another order (an error <= 1010 * K * 2^-53 on values <= 1). With
K = 3 classes both are below 1e-12, the tolerance.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from medsight.boxes import Boxes
from medsight.detection.metrics import detection_metrics

COCO = pytest.importorskip("pycocotools.coco", reason="pycocotools is a test dependency (pip install pycocotools)")
COCOEVAL = pytest.importorskip("pycocotools.cocoeval")

TOLERANCE = 1e-12
CLASSES = ["cell", "nodule", "fracture"]


def random_scene(seed: int, n_images: int = 12) -> tuple[list[Boxes], list[Boxes]]:
    """Truth boxes of mixed sizes in 3 classes (some images with none), predictions jittered from them
    (some missed, some relabelled), plus false positives; every coordinate a multiple of 1/64."""
    rng = np.random.default_rng(seed)
    truth, predicted = [], []
    for _ in range(n_images):
        n = int(rng.integers(0, 6))
        lo = rng.integers(0, 200, size=(n, 2)).astype(float)
        size = rng.choice([3, 8, 20, 60], size=(n, 1)) * rng.uniform(0.6, 1.6, size=(n, 2))
        true = Boxes(np.hstack([lo, lo + np.maximum(np.round(size), 1)]), rng.integers(0, 3, n))
        found = rng.random(n) > 0.25
        jitter = np.round(rng.normal(0, 0.12, size=(n, 4)) * np.tile(true.extents(), 2) * 64) / 64
        corners = true.corners[found] + jitter[found]
        corners[:, 2:] = np.maximum(corners[:, 2:], corners[:, :2] + 1 / 64)
        labels = np.where(rng.random(n) < 0.1, rng.integers(0, 3, n), true.labels)[found]
        m = int(rng.integers(0, 5))
        fp_lo = np.round(rng.uniform(0, 200, size=(m, 2)) * 64) / 64
        fp = np.hstack([fp_lo, fp_lo + np.round(rng.uniform(2, 50, size=(m, 2)) * 64) / 64])
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(corners)), rng.uniform(0.0, 0.8, m)])
        predicted.append(Boxes(np.vstack([corners, fp]), np.concatenate([labels, rng.integers(0, 3, m)]), scores))
        truth.append(true)
    return truth, predicted


def coco_map(truth: list[Boxes], predicted: list[Boxes]) -> tuple[float, float]:
    """pycocotools' mAP@[.5:.95] and AP50 with every size counted and no cap on detections."""
    def xywh(b: Boxes) -> np.ndarray:
        xy = b.xy()
        return np.hstack([xy[:, :2], xy[:, 2:] - xy[:, :2]])

    gt = {"images": [{"id": i + 1} for i in range(len(truth))],
          "categories": [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)], "annotations": []}
    for i, b in enumerate(truth):
        for box, label in zip(xywh(b), b.labels, strict=True):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "iscrowd": 0,
                                      "category_id": int(label) + 1, "bbox": box.tolist(),
                                      "area": float(box[2] * box[3])})
    dets = [{"image_id": i + 1, "category_id": int(label) + 1, "bbox": box.tolist(), "score": float(score)}
            for i, b in enumerate(predicted) for box, label, score in zip(xywh(b), b.labels, b.scores, strict=True)]
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO.COCO()
        ground.dataset = gt
        ground.createIndex()
        evaluation = COCOEVAL.COCOeval(ground, ground.loadRes(dets), "bbox")
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        evaluation.params.maxDets = [max(len(b) for b in predicted) + 1]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, :, 0, 0]  # IoU x recall x class
    return float(precision[precision > -1].mean()), float(precision[0][precision[0] > -1].mean())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_map_and_ap50_equal_pycocotools(seed: int) -> None:
    truth, predicted = random_scene(seed)
    ours = detection_metrics(truth, predicted, CLASSES, bootstrap=0)
    coco_mean, coco_ap50 = coco_map(truth, predicted)
    assert 0.05 < ours["map"] < 0.95  # a scene that exercises partial matches, not a trivial one
    assert ours["map"] == pytest.approx(coco_mean, abs=TOLERANCE)
    assert ours["ap50"] == pytest.approx(coco_ap50, abs=TOLERANCE)


def test_a_class_without_truth_is_left_out_as_pycocotools_does() -> None:
    truth, predicted = random_scene(7)
    truth = [b.select(b.labels != 2) for b in truth]
    ours = detection_metrics(truth, predicted, CLASSES, bootstrap=0)
    assert np.isnan(ours["per_class"]["fracture"]["map"])
    assert ours["map"] == pytest.approx(coco_map(truth, predicted)[0], abs=TOLERANCE)
