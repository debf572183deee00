"""Segmentation losses: near zero for a perfect prediction, larger for a wrong one; deep supervision."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

import medsight.models.segmenters  # noqa: F401  (fills the registry until registry.py imports it)
from medsight.engine.seg_losses import SEG_LOSSES, make_seg_loss
from medsight.errors import ConfigError
from medsight.models.registry import create_model


def _labels(spatial_dims: int = 2) -> torch.Tensor:
    """Two cases of a 3-class label map ``(2, *spatial)``: background, a square of 1, a square of 2."""
    labels = torch.zeros((2,) + (16,) * spatial_dims, dtype=torch.long)
    labels[:, 2:7, 2:7] = 1
    labels[:, 9:14, 9:14] = 2
    return labels


def _logits(labels: torch.Tensor, margin: float = 20.0) -> torch.Tensor:
    """Logits ``(N, 3, *spatial)`` that put ``margin`` on the given labels."""
    return margin * functional.one_hot(labels, 3).movedim(-1, 1).float()


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("channel_axis", [False, True])
@pytest.mark.parametrize("name", SEG_LOSSES)
def test_loss_is_near_zero_when_right_and_larger_when_wrong(name, channel_axis, spatial_dims):
    labels = _labels(spatial_dims)
    target = labels.unsqueeze(1) if channel_axis else labels
    loss_fn = make_seg_loss(name, num_classes=3)
    right = loss_fn(_logits(labels), target)
    wrong = loss_fn(_logits((labels + 1) % 3), target)
    assert right.dim() == 0
    assert right.item() < 1e-3
    assert wrong.item() > 0.5


def test_tversky_weights_false_negatives_by_beta():
    truth = torch.zeros(1, 8, 8, dtype=torch.long)
    truth[:, :4] = 1
    missed_half = torch.zeros_like(truth)
    missed_half[:, :2] = 1  # 16 true positives, 16 false negatives, no false positives
    loss_fn = make_seg_loss("tversky", num_classes=2, alpha=0.2, beta=0.8, smooth_nr=0.0, smooth_dr=0.0)
    # Tversky index = TP / (TP + 0.2 FP + 0.8 FN) = 16 / (16 + 12.8)
    assert loss_fn(_logits(missed_half)[:, :2], truth).item() == pytest.approx(1 - 16 / 28.8, abs=1e-4)


def test_deep_supervision_weights_heads_by_halves():
    labels = _labels()
    right, wrong = _logits(labels), _logits((labels + 1) % 3)
    plain = make_seg_loss("dice_ce", num_classes=3)
    loss_fn = make_seg_loss("dice_ce", num_classes=3, deep_supervision=True)
    stacked = torch.stack([right, wrong, wrong], dim=1)  # (N, heads, C, H, W)
    assert loss_fn(stacked, labels).item() == pytest.approx(3 / 7 * plain(wrong, labels).item(), rel=1e-4)
    assert loss_fn(right, labels.unsqueeze(1)).item() < 1e-3  # eval-mode output: one head


def test_deep_supervision_downsamples_labels_for_a_smaller_head():
    labels = _labels()
    small = labels[:, ::2, ::2]
    loss_fn = make_seg_loss("dice_ce", num_classes=3, deep_supervision=True)
    stacked = torch.stack([_logits(small), _logits(small)], dim=1)
    assert loss_fn(stacked, labels).item() < 1e-3


def test_deep_supervision_loss_trains_dynunet_train_mode_output():
    torch.manual_seed(0)
    model = create_model("dynunet", in_channels=1, num_outputs=3, spatial_dims=2, deep_supervision=True)
    labels = torch.nn.functional.pad(_labels(), (8, 8, 8, 8))  # 32 x 32
    loss_fn = make_seg_loss("dice_focal", num_classes=3, deep_supervision=True)
    out = model.train()(labels.unsqueeze(1).float())
    assert out.shape == (2, 3, 3, 32, 32)
    loss = loss_fn(out, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("dice", {"num_classes": 2}, "loss=dice: unknown segmentation loss; choose one of: dice_ce, dice_focal"),
        ("dice_ce", {"num_classes": 1}, "num_classes=1: .*num_outputs=2"),
        ("focal", {"num_classes": 2, "no_such_option": 1}, "loss=focal: bad loss arguments.*check the loss kwargs"),
    ],
)
def test_bad_loss_settings_raise_config_error_naming_the_fix(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_seg_loss(name, **kwargs)


def test_ce_is_plain_cross_entropy_and_takes_class_weights():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    assert float(make_seg_loss("ce", num_classes=3)(logits, labels)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-6)
    weighted = make_seg_loss("ce", num_classes=3, weight=[0.2, 1.0, 3.0])(logits, labels)
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([0.2, 1.0, 3.0]))
    assert float(weighted) == pytest.approx(float(expected), rel=1e-6)
