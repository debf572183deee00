"""The detection report: its HTML names the figures and the metrics, its PNGs are written (issue 34)."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.boxes import Boxes
from medsight.detection.metrics import detection_metrics, overlay_case, score_at_fp_rate
from medsight.report.detection import METRIC_LABELS, OverlayCase, detection_report, pick_cases

CLASSES = ["fracture", "cyst"]


def scene(n_images: int = 6, dims: int = 2):
    """Phantom images with bright squares as the true boxes; predictions find most, miss some, add FPs."""
    rng = np.random.default_rng(0)
    images, truth, predicted = [], [], []
    for i in range(n_images):
        image = rng.normal(0, 0.1, (1,) + (24,) * dims).astype(np.float32)
        lo = rng.integers(2, 14, size=(i % 3, dims))
        corners = np.hstack([lo, lo + 6]).astype(float)
        for box in corners.astype(int):
            image[(0, *[slice(box[a], box[a + dims]) for a in range(dims)])] += 1.0
        true = Boxes(corners, rng.integers(0, 2, len(corners)))
        found = true.select(np.arange(len(true)) < i % 2 + 1)
        fp_lo = rng.integers(0, 18, size=(1, dims))
        predicted.append(Boxes(np.vstack([found.corners + 1, np.hstack([fp_lo, fp_lo + 5])]),
                               np.append(found.labels, 0), np.append(rng.uniform(0.5, 1, len(found)), 0.3 + i / 20)))
        images.append(image)
        truth.append(true)
    return images, truth, predicted


@pytest.mark.parametrize("dims", [2, 3])
def test_the_report_names_its_metrics_and_figures(tmp_path, dims) -> None:
    images, truth, predicted = scene(dims=dims)
    metrics = detection_metrics(truth, predicted, CLASSES, bootstrap=50)
    threshold = score_at_fp_rate(truth, predicted, 1.0)
    cases = [overlay_case(f"img{i}.png", image, t, p, iou=0.1, score_threshold=threshold)
             for i, (image, t, p) in enumerate(zip(images, truth, predicted, strict=True))]
    path = detection_report(tmp_path, title="Detection <test>", metrics=metrics, cases=cases,
                            operating={"threshold": threshold, "fp_per_image": 1.0, "iou": 0.1,
                                       "chosen_on": "validation"})
    html = path.read_text()
    for name in ("froc.png", "pr.png", "overlay_best.png", "overlay_median.png", "overlay_worst.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    for label in METRIC_LABELS.values():
        assert label in html
    assert "Detection &lt;test&gt;" in html and "<script" not in html
    assert f"{metrics['ap50']:.3f}" in html and f"[{metrics['ci']['ap50'][0]:.3f}" in html
    assert "FROC curve" in html and "Precision-recall at IoU 0.5" in html
    assert "best image: " in html and "worst image: " in html and "fracture" in html and "cyst" in html
    assert f"{threshold:.4f}" in html and "on the validation images" in html
    assert html.count("data:image/png;base64,") == 5


def test_best_median_and_worst_are_chosen_by_rank_leaving_nan_out() -> None:
    def case(name: str, rank: float) -> OverlayCase:
        empty = np.zeros((0, 4))
        return OverlayCase(name, np.zeros((1, 8, 8)), empty, np.zeros(0), empty, np.zeros(0), empty, rank)

    picks = pick_cases([case("a", 0.5), case("b", float("nan")), case("c", 1.0), case("d", 0.0), case("e", 0.5)])
    assert {k: v.case_id for k, v in picks.items()} == {"best": "c", "median": "e", "worst": "d"}
    assert pick_cases([case("b", float("nan"))]) == {}


def test_a_report_without_drawable_images_or_truth_still_writes(tmp_path) -> None:
    truth = [Boxes.empty(), Boxes.empty()]
    predicted = [Boxes.empty(scored=True)] * 2
    metrics = detection_metrics(truth, predicted, CLASSES, bootstrap=0)
    cases = [overlay_case(f"{i}", np.zeros((1, 8, 8)), t, p, iou=0.1, score_threshold=0.5)
             for i, (t, p) in enumerate(zip(truth, predicted, strict=True))]
    html = detection_report(tmp_path, title="empty", metrics=metrics, cases=cases).read_text()
    assert "not computed (0 bootstrap resamples)" in html and "none is drawn" in html
    assert (tmp_path / "froc.png").stat().st_size > 1000 and not (tmp_path / "overlay_best.png").exists()
