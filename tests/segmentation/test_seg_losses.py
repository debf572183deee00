"""Segmentation losses: near zero for a perfect prediction, larger for a wrong one; deep supervision."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

import medsight.models.segmenters  # noqa: F401  (fills the registry until registry.py imports it)
from medsight.errors import ConfigError
from medsight.models.registry import create_model
from medsight.segmentation.losses import SEG_LOSSES, cldice_loss, make_seg_loss, soft_skeleton


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


def _bar_and_line(length: int = 30) -> torch.Tensor:
    """A label map ``(1, 1, 21, length)``: a 7-pixel-wide bar (rows 2-8) and a 1-pixel line (row 15),
    both running the full width."""
    labels = torch.zeros(1, 1, 21, length, dtype=torch.long)
    labels[..., 2:9, :] = 1
    labels[..., 15, :] = 1
    return labels


def test_soft_skeleton_of_a_bar_is_its_one_pixel_centreline_up_to_the_patch_border():
    bars = _bar_and_line().float()
    skeleton = soft_skeleton(bars)
    assert torch.equal(skeleton[0, 0].sum(dim=1).nonzero().flatten(), torch.tensor([5, 15]))  # the centre rows
    assert skeleton[0, 0, 5].tolist() == [1.0] * 30  # not shortened at the patch's left and right border
    assert skeleton[0, 0, 15].tolist() == [1.0] * 30
    tube = torch.zeros(1, 1, 9, 9, 12)
    tube[..., 2:7, 2:7, :] = 1  # a 5x5 tube along the last axis, 3D
    centre = soft_skeleton(tube)[0, 0]
    assert centre[4, 4].tolist() == [1.0] * 12 and centre.sum().item() == 12


def test_cldice_punishes_a_missed_thin_vessel_that_dice_hardly_sees():
    truth = _bar_and_line()
    thick_only = truth.clone()
    thick_only[..., 15, :] = 0
    logits = _logits(thick_only[:, 0])[:, :2]
    dice = make_seg_loss("dice_ce", num_classes=2, lambda_ce=0.0, smooth_nr=0.0, smooth_dr=0.0)
    # Dice: 7 of 8 rows found, 2 * 7 / 15; clDice: the predicted centreline lies in the truth (precision 1),
    # it covers one of the two true centrelines (sensitivity 1/2, +1 smoothing each): 1 - 2 p s / (p + s)
    sensitivity = (30 + 1) / (60 + 1)
    assert dice(logits, truth).item() == pytest.approx(1 - 14 / 15, abs=1e-4)
    assert cldice_loss(logits, truth).item() == pytest.approx(1 - 2 * sensitivity / (1 + sensitivity), abs=1e-4)
    assert cldice_loss(_logits(truth[:, 0])[:, :2], truth).item() == pytest.approx(0.0, abs=1e-4)


def test_the_cldice_weight_mixes_the_two_losses():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 16, 16), _labels()
    base = make_seg_loss("dice_ce", num_classes=3)(logits, labels)
    mixed = make_seg_loss("dice_ce", num_classes=3, cldice=0.3)(logits, labels)
    assert mixed.item() == pytest.approx(0.7 * base.item() + 0.3 * cldice_loss(logits, labels[:, None]).item(),
                                         rel=1e-5)
    with pytest.raises(ConfigError, match=r"cldice=1.0: the clDice weight must be in \[0, 1\)"):
        make_seg_loss("dice_ce", num_classes=3, cldice=1.0)


def test_compiled_cldice_equals_eager_and_a_failed_compile_falls_back(monkeypatch, caplog):
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 2, 24, 24, requires_grad=True), _bar_and_line(24)[:, :, :24].repeat(2, 1, 1, 1)
    eager = make_seg_loss("dice_ce", num_classes=2, cldice=0.5)(logits, labels)
    compiled = make_seg_loss("dice_ce", num_classes=2, cldice=0.5, compile=True)(logits, labels)
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-5)
    compiled.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0

    def broken(fn):
        def call(*args):
            raise RuntimeError("no C compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    fallback = make_seg_loss("dice_ce", num_classes=2, cldice=0.5, compile=True)
    assert fallback(logits, labels).item() == pytest.approx(eager.item(), rel=1e-6)
    assert fallback(logits, labels).item() == pytest.approx(eager.item(), rel=1e-6)  # eager from now on
    assert caplog.text.count("compiling the loss failed (RuntimeError); computing it in eager mode") == 1
