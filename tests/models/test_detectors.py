"""The RetinaNet detector from MONAI's parts: losses in train mode, boxes in eval mode, 2D and 3D; its anchors on
the tensor's axes; the registry entry a bundle rebuilds it from; the settings it refuses."""

from __future__ import annotations

import math

import pytest
import torch

from medsight.config import DetectConfig
from medsight.errors import ConfigError
from medsight.models import create_model, list_models
from medsight.models.detectors import anchor_shapes, build_detector, level_strides

SIZES = {2: [[8.0, 8.0], [16.0, 16.0], [32.0, 32.0]], 3: [[8.0, 8.0, 8.0], [16.0, 16.0, 16.0]]}
INPUT = {2: (2, 1, 64, 64), 3: (2, 1, 32, 32, 32)}
BOX = {2: [4.0, 6.0, 20.0, 24.0], 3: [4.0, 6.0, 5.0, 20.0, 24.0, 14.0]}


def _targets(dims: int) -> list[dict[str, torch.Tensor]]:
    """One box of class 1 in the first image, none in the second (a negative image)."""
    return [{"boxes": torch.tensor([BOX[dims]]), "labels": torch.tensor([1])},
            {"boxes": torch.zeros(0, 2 * dims), "labels": torch.zeros(0, dtype=torch.long)}]


def test_retinanet_is_registered_for_detection_only():
    assert "retinanet" in list_models("detection")
    assert "retinanet" not in list_models("classification") + list_models("segmentation")


@pytest.mark.parametrize("dims", [2, 3])
def test_train_mode_gives_both_losses_and_gradients_for_every_weight(dims):
    torch.manual_seed(0)
    detector = build_detector(dims, 1, ["a", "b"], DetectConfig(), SIZES[dims]).train()
    losses = detector(torch.randn(INPUT[dims]), _targets(dims))
    assert sorted(losses) == ["box_regression", "classification"]
    assert all(math.isfinite(v.item()) and v.item() > 0 for v in losses.values())
    (losses["classification"] + losses["box_regression"]).backward()
    grads = [p.grad for p in detector.network.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dims", [2, 3])
def test_eval_mode_gives_at_most_max_detections_scored_boxes_inside_the_input(dims):
    torch.manual_seed(0)
    detect = DetectConfig(score_floor=0.0, max_detections=7)
    detector = build_detector(dims, 1, ["a", "b"], detect, SIZES[dims]).eval()
    with torch.no_grad():
        out = detector(torch.randn(INPUT[dims]))
    assert len(out) == 2
    for image in out:
        boxes, scores, labels = image["boxes"], image["labels_scores"], image["labels"]
        assert boxes.shape == (7, 2 * dims)  # thousands of candidates at score floor 0: max_detections kept
        assert (boxes[:, :dims] >= 0).all() and (boxes[:, dims:] <= INPUT[dims][2]).all()
        assert ((scores >= 0) & (scores <= 1)).all() and set(labels.tolist()) <= {0, 1}


def test_an_untrained_detector_predicts_nothing_above_the_default_score_floor():
    """RetinaNet's heads start at a prior of 0.01 (focal-loss initialisation), below the floor 0.05."""
    detector = build_detector(2, 1, ["a"], DetectConfig(), SIZES[2]).eval()
    with torch.no_grad():
        assert detector(torch.randn(1, 1, 64, 64))[0]["boxes"].shape == (0, 4)


def test_anchors_follow_the_tensor_axes_with_the_levels_strides_and_aspect_ratios():
    detector = build_detector(2, 1, ["a"], DetectConfig(aspect_ratios=[0.5, 1.0, 2.0]), [[8.0, 8.0], [16.0, 16.0]])
    with torch.no_grad():
        detector.eval()(torch.zeros(1, 1, 64, 32))  # 64 rows, 32 columns
    anchors = detector.anchors[0]
    assert anchors.shape == ((16 * 8 + 8 * 4) * 3, 4)  # stride 4 and 8 levels, three anchors per position
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres[:, 0].max() == 62 and centres[:, 1].max() == 30  # cell centres along rows, then columns
    extents = (anchors[:3, 2:] - anchors[:3, :2]).flatten().tolist()  # the first position's three anchors
    exact = [8 * 0.5**0.5, 8 / 0.5**0.5, 8, 8, 8 * 2**0.5, 8 / 2**0.5]
    assert extents == [2 * round(e / 2) for e in exact]  # MONAI rounds each anchor's corners to whole pixels


def test_anchor_shapes_keep_the_area_and_make_the_height_over_width_ratio():
    shapes = anchor_shapes([[10.0, 20.0]], [0.5, 2.0])[0]
    assert [h * w for h, w in shapes] == pytest.approx([200.0, 200.0])
    assert [h / w for h, w in shapes] == pytest.approx([0.25, 1.0])  # the level's own 1:2 times each ratio
    assert anchor_shapes([[4.0, 6.0, 8.0]], [0.5, 1.0, 2.0]) == [[[4.0, 6.0, 8.0]]]  # 3D: the size alone


def test_level_strides_double_from_the_finest():
    assert level_strides(4) == [4, 8, 16, 32] and level_strides(2, 8) == [8, 16]


def test_default_anchors_are_four_strides_wide_on_four_levels():
    detector = build_detector(2, 3, ["a"], DetectConfig())
    assert detector.spec.anchor_sizes == ((16.0, 16.0), (32.0, 32.0), (64.0, 64.0), (128.0, 128.0))
    assert detector.network.size_divisible == (32, 32)


def test_the_bundle_rebuilds_the_same_network_from_the_specs_model_config():
    torch.manual_seed(0)
    detector = build_detector(2, 3, ["a", "b", "c"], DetectConfig(), SIZES[2], fpn_channels=16)
    config = detector.spec.model_config()
    assert config.name == "retinanet" and config.kwargs["fpn_channels"] == 16
    rebuilt = create_model(config.name, in_channels=3, num_outputs=3, spatial_dims=2, **config.kwargs)
    rebuilt.load_state_dict(detector.network.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = detector.network.eval()(x), rebuilt.eval()(x)
    assert all(torch.equal(p, q) for p, q in zip(a["classification"], b["classification"], strict=True))


def test_the_spec_gives_the_bundles_detection_settings():
    detect = DetectConfig(score_floor=0.1, nms_iou=0.3, max_detections=20, aspect_ratios=[1.0])
    spec = build_detector(2, 1, ["a"], detect, SIZES[2]).spec
    settings = spec.settings(detect, score_threshold=0.42, threshold_note="FROC at 1 FP per image")
    assert settings.anchor_sizes == SIZES[2] and settings.aspect_ratios == [1.0]
    assert (settings.score_floor, settings.nms_iou, settings.max_detections) == (0.1, 0.3, 20)
    assert settings.score_threshold == 0.42 and settings.backbone == "resnet18"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"anchor_sizes": [[8.0, 8.0, 8.0], [16.0, 16.0, 16.0]]}, "each feature level needs 2 positive anchor extents"),
    ({"anchor_sizes": [[8.0, 0.0], [16.0, 16.0]]}, "each feature level needs 2 positive anchor extents"),
    ({"anchor_sizes": [[8.0, 8.0]]}, "1 levels from stride 4"),
    ({"anchor_sizes": [[8.0, 8.0]] * 6}, "6 levels from stride 4: a ResNet gives 2 to 5"),
    ({"anchor_sizes": SIZES[2], "backbone": "vgg16"}, "not a detector backbone"),
    ({"anchor_sizes": SIZES[2], "fpn_channels": 20}, "normalise 8 groups"),
    ({"anchor_sizes": SIZES[2], "finest_stride": 2}, "strides 4, 8, 16 and 32"),
])
def test_settings_no_detector_can_have_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_detector(2, 1, ["a"], DetectConfig(), **kwargs)


def test_a_detector_needs_a_class():
    with pytest.raises(ConfigError, match="at least one class"):
        build_detector(2, 1, [], DetectConfig(), SIZES[2])
