"""BatchAugment: sampled parameters, then a fixed transform."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from medsight.config import AugmentConfig
from medsight.errors import ConfigError
from medsight.transforms import BatchAugment
from medsight.transforms.fixed import elastic_displacement

EVERYTHING = AugmentConfig(
    flip_h=0.5, flip_v=0.5, rotate_deg=20, scale=0.1, shift=0.1,
    noise_std=0.05, blur_sigma=1.0, contrast=0.2, brightness=0.2, gamma=0.5, color=0.1, elastic=2.0,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def disc(shape: tuple[int, ...]) -> torch.Tensor:
    """Binary balls (one per example) off-centre, so rotation and shift move them."""
    n, *spatial = shape
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in spatial], indexing="ij")
    centre = [s * 0.4 for s in spatial]
    radius = min(spatial) * 0.25
    ball = sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True)) <= radius**2
    return ball.long().expand(n, *spatial).clone()


def test_all_knobs_off_is_disabled_and_returns_the_inputs():
    aug = BatchAugment(AugmentConfig(), spatial_dims=2)
    images, masks = torch.rand(2, 1, 8, 8), torch.zeros(2, 8, 8)
    assert not aug.enabled
    out_images, out_masks = aug(images, masks, generator=gen())
    assert out_images is images and out_masks is masks


@pytest.mark.parametrize("shape", [(4, 2, 16, 16), (2, 1, 8, 12, 12)])
def test_same_seed_same_batch_different_seed_different_batch(shape):
    aug = BatchAugment(EVERYTHING, spatial_dims=len(shape) - 2)
    images = torch.rand(shape)
    first, _ = aug(images, generator=gen(7))
    again, _ = aug(images, generator=gen(7))
    other, _ = aug(images, generator=gen(8))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    assert first.shape == images.shape


@pytest.mark.parametrize("shape", [(3, 1, 6, 8), (2, 2, 4, 6, 8)])
@pytest.mark.parametrize(("knob", "axis"), [("flip_h", -1), ("flip_v", -2)])
def test_flip_with_probability_1_equals_torch_flip_for_images_and_masks(shape, knob, axis):
    images = torch.rand(shape)
    masks = torch.randint(0, 3, (shape[0], *shape[2:]))
    aug = BatchAugment(AugmentConfig(**{knob: 1.0}), spatial_dims=len(shape) - 2)
    out, out_masks = aug(images, masks, generator=gen())
    torch.testing.assert_close(out, images.flip(axis), rtol=0, atol=0)
    torch.testing.assert_close(out_masks, masks.flip(axis), rtol=0, atol=0)


def test_flip_through_the_resampling_path_also_equals_torch_flip():
    images = torch.rand(2, 1, 10, 10)
    aug = BatchAugment(AugmentConfig(flip_h=1.0, rotate_deg=30), spatial_dims=2)
    params = dataclasses.replace(aug.sample(images.shape, gen()), angle=torch.zeros(2))
    out, _ = aug.apply(images, None, params)
    torch.testing.assert_close(out, images.flip(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(2, 1, 12, 12), (2, 1, 6, 12, 12)])
def test_rotation_by_zero_is_identity_and_by_90_degrees_is_rot90(shape):
    images = torch.rand(shape)
    aug = BatchAugment(AugmentConfig(rotate_deg=90), spatial_dims=len(shape) - 2)
    params = aug.sample(images.shape, gen())
    still, _ = aug.apply(images, None, dataclasses.replace(params, angle=torch.zeros(2)))
    torch.testing.assert_close(still, images, atol=1e-5, rtol=0)
    turned, _ = aug.apply(images, None, dataclasses.replace(params, angle=torch.full((2,), math.pi / 2)))
    torch.testing.assert_close(turned, torch.rot90(images, 1, (-2, -1)), atol=1e-5, rtol=0)


def test_a_half_width_shift_moves_the_image_by_that_many_pixels():
    images = torch.zeros(1, 1, 8, 8)
    images[0, 0, :, 2] = 1.0
    aug = BatchAugment(AugmentConfig(shift=0.4), spatial_dims=2)
    params = dataclasses.replace(aug.sample(images.shape, gen()), shift=torch.tensor([[0.25, 0.0]]))
    out, _ = aug.apply(images, None, params)
    torch.testing.assert_close(out[0, 0, :, 0], torch.ones(8), atol=1e-5, rtol=0)  # 2 px left
    assert out.sum() == pytest.approx(8.0, abs=1e-4)


@pytest.mark.parametrize("shape", [(6, 32, 32), (3, 12, 24, 24)])
def test_an_augmented_mask_still_lies_exactly_on_its_augmented_image(shape):
    masks = disc(shape)
    images = masks.float().unsqueeze(1)
    cfg = AugmentConfig(flip_h=0.5, flip_v=0.5, rotate_deg=45, scale=0.2, shift=0.1, elastic=3.0)
    out, out_masks = BatchAugment(cfg, spatial_dims=len(shape) - 1)(images, masks, generator=gen(3))
    out = out[:, 0]
    assert out_masks.dtype == torch.long and set(out_masks.unique().tolist()) <= {0, 1}
    assert torch.equal(out_masks[out > 1 - 1e-5], torch.ones_like(out_masks[out > 1 - 1e-5]))
    assert not out_masks[out < 1e-5].any()
    disagree = (out.round().long() != out_masks).float().mean()
    assert disagree < 0.03
    assert not torch.equal(out_masks, masks)


def test_contrast_keeps_each_mean_and_scales_the_spread_by_the_factor():
    images = torch.rand(4, 1, 16, 16)
    aug = BatchAugment(AugmentConfig(contrast=0.5), spatial_dims=2)
    params = aug.sample(images.shape, gen())
    out, _ = aug.apply(images, None, params)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), images.std(dim=(1, 2, 3)) * params.contrast, rtol=1e-4, atol=0)
    assert ((params.contrast >= 0.5) & (params.contrast <= 1.5)).all()


def test_brightness_adds_its_fraction_of_each_images_std():
    images = torch.rand(4, 1, 16, 16) * 10
    aug = BatchAugment(AugmentConfig(brightness=0.3), spatial_dims=2)
    params = aug.sample(images.shape, gen())
    out, _ = aug.apply(images, None, params)
    expected = params.brightness * images.std(dim=(1, 2, 3))
    torch.testing.assert_close((out - images).mean(dim=(1, 2, 3)), expected, atol=1e-4, rtol=0)
    assert params.brightness.abs().max() <= 0.3


def test_gamma_keeps_mean_std_and_pixel_order_and_follows_the_power_law():
    images = torch.rand(6, 1, 16, 16) * 4 - 1
    aug = BatchAugment(AugmentConfig(gamma=0.5), spatial_dims=2)
    params = aug.sample(images.shape, gen())
    out, _ = aug.apply(images, None, params)
    assert ((params.gamma >= 1 / 1.5 - 1e-6) & (params.gamma <= 1.5 + 1e-6)).all()
    assert (params.gamma < 1).any() and (params.gamma > 1).any()
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), images.std(dim=(1, 2, 3)), atol=1e-5, rtol=1e-5)
    for before, after in zip(images.flatten(1), out.flatten(1), strict=True):
        assert torch.equal(before.argsort(), after.argsort())
    # example 0 by hand: scaled to [0, 1], raised to its exponent, then its mean and std restored
    x = images[0]
    unit = ((x - x.min()) / (x.max() - x.min())) ** params.gamma[0]
    expected = (unit - unit.mean()) / unit.std() * x.std() + x.mean()
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("exponent", "sign"), [(0.5, 1), (1.0, 0), (2.0, -1)])
def test_gamma_below_1_lifts_the_mid_tones_above_1_lowers_them_and_leaves_a_flat_image_alone(exponent, sign):
    ramp = torch.linspace(0, 1, 101).view(1, 1, 1, 101).repeat(2, 1, 1, 1)
    ramp[1] = 0.3
    aug = BatchAugment(AugmentConfig(gamma=1.0), spatial_dims=2)
    params = dataclasses.replace(aug.sample(ramp.shape, gen()), gamma=torch.tensor([exponent, exponent]))
    out, _ = aug.apply(ramp, None, params)
    offset = float(out[0, 0, 0, 50] - out[0].mean())  # the ramp's middle against its mean (0 before)
    assert offset == pytest.approx(0.0, abs=1e-6) if sign == 0 else sign * offset > 0.04
    torch.testing.assert_close(out[1], ramp[1], rtol=0, atol=0)


def test_color_scales_each_channel_around_its_own_mean_by_its_own_factor():
    images = torch.rand(4, 3, 16, 16)
    aug = BatchAugment(AugmentConfig(color=0.3), spatial_dims=2)
    params = aug.sample(images.shape, gen())
    out, _ = aug.apply(images, None, params)
    assert params.color.shape == (4, 3)
    assert ((params.color >= 0.7) & (params.color <= 1.3)).all() and params.color.std() > 0
    torch.testing.assert_close(out.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3)), images.std(dim=(2, 3)) * params.color, rtol=1e-4, atol=0)


def test_gamma_color_and_elastic_leave_the_other_knobs_draws_unchanged():
    """Adding the newer knobs keeps every earlier knob's draw, so older configs keep their batches."""
    old = AugmentConfig(**{**EVERYTHING.model_dump(), "gamma": 0.0, "color": 0.0, "elastic": 0.0})
    new_params = BatchAugment(EVERYTHING, spatial_dims=2).sample((4, 3, 8, 8), gen(3))
    old_params = BatchAugment(old, spatial_dims=2).sample((4, 3, 8, 8), gen(3))
    for field in ("flip_h", "flip_v", "angle", "scale", "shift", "blur_sigma", "contrast", "brightness", "noise"):
        assert torch.equal(getattr(new_params, field), getattr(old_params, field)), field
    assert torch.equal(old_params.gamma, torch.ones(4)) and torch.equal(old_params.color, torch.ones(4, 3))
    assert old_params.elastic is None and new_params.elastic.shape == (4, 2, 2, 2)


def test_a_uniform_elastic_displacement_is_a_shift_and_a_zero_one_changes_nothing():
    images = torch.zeros(1, 1, 8, 8)
    images[0, 0, :, 2] = 1.0
    aug = BatchAugment(AugmentConfig(elastic=4.0), spatial_dims=2)
    params = aug.sample(images.shape, gen())
    still, _ = aug.apply(images, None, dataclasses.replace(params, elastic=torch.zeros_like(params.elastic)))
    torch.testing.assert_close(still, images, atol=1e-5, rtol=0)
    right = torch.zeros_like(params.elastic)
    right[:, 0] = 2.0  # every control point samples 2 px to the right (channel 0 is x)
    moved, _ = aug.apply(images, None, dataclasses.replace(params, elastic=right))
    torch.testing.assert_close(moved[0, 0, :, 0], torch.ones(8), atol=1e-5, rtol=0)  # the line moved 2 px left
    assert moved.sum() == pytest.approx(8.0, abs=1e-4)


@pytest.mark.parametrize("shape", [(4, 1, 40, 40), (2, 1, 20, 24, 24)])
def test_elastic_moves_no_pixel_further_than_configured_and_bends_the_image(shape):
    aug = BatchAugment(AugmentConfig(elastic=3.0), spatial_dims=len(shape) - 2)
    params = aug.sample(shape, gen(5))
    pixels = elastic_displacement(params.elastic, shape[2:]) / torch.tensor(
        [2.0 / s for s in reversed(shape[2:])]
    )
    assert pixels.abs().max() <= 3.0 + 1e-4 and pixels.abs().max() > 2.0
    images = torch.rand(shape)
    out, _ = aug.apply(images, None, params)
    assert out.shape == images.shape and not torch.allclose(out, images, atol=1e-2)


def test_elastic_per_axis_bounds_leave_a_zero_axis_still():
    """[0, 3, 3] on a 3D batch: no displacement across slices, up to 3 px within them."""
    shape = (2, 1, 20, 24, 24)
    params = BatchAugment(AugmentConfig(elastic=[0.0, 3.0, 3.0]), spatial_dims=3).sample(shape, gen(5))
    pixels = elastic_displacement(params.elastic, shape[2:]) / torch.tensor([2.0 / s for s in shape[:1:-1]])
    assert pixels[..., 2].abs().max() == 0  # the grid's last channel is D
    assert 2.0 < pixels[..., :2].abs().max() <= 3.0 + 1e-4
    same = BatchAugment(AugmentConfig(elastic=[3.0, 3.0, 3.0]), spatial_dims=3).sample(shape, gen(5))
    scalar = BatchAugment(AugmentConfig(elastic=3.0), spatial_dims=3).sample(shape, gen(5))
    assert torch.equal(same.elastic, scalar.elastic)  # one number means that number on every axis
    assert not BatchAugment(AugmentConfig(elastic=[0.0, 0.0]), spatial_dims=2).enabled


def test_elastic_bounds_that_do_not_fit_are_refused():
    with pytest.raises(ConfigError, match=r"augment.elastic=\[1.0, 2.0, 3.0\]: gives 3 bounds for 2D images; "
                                          r"give one number for every axis, or 2 \(H, W\)"):
        BatchAugment(AugmentConfig(elastic=[1.0, 2.0, 3.0]), spatial_dims=2)
    for bad in ([0.0, 9.0], -1.0, [1.0, 1.0, 1.0, 1.0], [4.0]):
        with pytest.raises(ValueError, match="elastic must be a number of pixels in \\[0, 8\\]"):
            AugmentConfig(elastic=bad)


def test_noise_std_stays_within_the_configured_bound():
    images = torch.zeros(8, 1, 32, 32)
    out, _ = BatchAugment(AugmentConfig(noise_std=0.1), spatial_dims=2)(images, generator=gen())
    stds = out.std(dim=(1, 2, 3))
    assert stds.max() < 0.11 and stds.min() >= 0 and stds.std() > 0


@pytest.mark.parametrize("shape", [(2, 1, 15, 15), (2, 1, 15, 15, 15)])
def test_blur_keeps_total_intensity_and_sigma_0_changes_nothing(shape):
    images = torch.zeros(shape)
    centre = tuple(s // 2 for s in shape[2:])
    images[(slice(None), 0, *centre)] = 1.0
    aug = BatchAugment(AugmentConfig(blur_sigma=1.5), spatial_dims=len(shape) - 2)
    params = dataclasses.replace(aug.sample(images.shape, gen()), blur_sigma=torch.tensor([0.0, 1.5]))
    out, _ = aug.apply(images, None, params)
    torch.testing.assert_close(out[0], images[0], atol=1e-6, rtol=0)
    assert out[1].sum() == pytest.approx(1.0, abs=1e-4)
    assert out[1][(0, *centre)] < 0.2


@pytest.mark.parametrize(
    ("images", "masks", "message"),
    [
        (torch.zeros(2, 8, 8), None, r"images of shape \(2, 8, 8\): expected a 2D batch \(N, C, H, W\)"),
        (torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 9), r"masks of shape \(2, 8, 9\): .*; pass one mask per image"),
    ],
)
def test_wrongly_shaped_batches_raise_config_error_with_the_fix(images, masks, message):
    with pytest.raises(ConfigError, match=message):
        BatchAugment(EVERYTHING, spatial_dims=2)(images, masks, generator=gen())


def test_spatial_dims_other_than_2_or_3_is_a_config_error():
    with pytest.raises(ConfigError, match="spatial_dims=1: .*; pass 2 or 3"):
        BatchAugment(EVERYTHING, spatial_dims=1)
