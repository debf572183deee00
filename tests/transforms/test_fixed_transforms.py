"""The fixed image operations: each against a value worked out by hand, and BatchAugment as their composition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medsight.config import AugmentConfig
from medsight.transforms import BatchAugment
from medsight.transforms.fixed import (
    add_gaussian_noise,
    adjust_gamma,
    affine_matrix,
    elastic_displacement,
    flip,
    gaussian_blur,
    rotate,
    sampling_grid,
    scale_contrast,
    shift_brightness,
    warp,
    warp_labels,
)

F32 = torch.finfo(torch.float32).eps  # 1.19e-7
F64 = torch.finfo(torch.float64).eps  # 2.2e-16


def test_flip_mirrors_only_the_flagged_examples():
    images = torch.tensor([[[[1, 2], [3, 4]]], [[[5, 6], [7, 8]]]])
    out = flip(images, torch.tensor([True, False]), axis=-1)
    assert out.tolist() == [[[[2, 1], [4, 3]]], [[[5, 6], [7, 8]]]]
    assert flip(images, torch.tensor([False, False]), axis=-2) is images


def test_gaussian_blur_of_an_impulse_is_the_normalised_kernel_and_sigma_0_is_the_identity():
    """sigma 1, radius 3: the kernel sums to 1 + 2 (e^-1/2 + e^-2 + e^-9/2) = 2.50595; the centre is 1 / 2.50595^2."""
    impulse = torch.zeros(2, 1, 9, 9, dtype=torch.float64)
    impulse[:, 0, 4, 4] = 1.0
    out = gaussian_blur(impulse, torch.tensor([1.0, 0.0], dtype=torch.float64), radius=3)
    kernel_sum = 1 + 2 * (math.exp(-0.5) + math.exp(-2) + math.exp(-4.5))
    assert kernel_sum == pytest.approx(2.50595, abs=1e-5)
    assert out[0, 0, 4, 4].item() == pytest.approx(1 / kernel_sum**2, rel=1e-12)
    assert out[0, 0, 4, 5].item() == pytest.approx(math.exp(-0.5) / kernel_sum**2, rel=1e-12)
    assert out[0].sum().item() == pytest.approx(1.0, rel=1e-12)  # the kernel fits inside: nothing is lost
    assert torch.equal(out[1], impulse[1])  # sigma 0 (floored at 1e-3): e^-500000 is 0


def test_gaussian_blur_with_truncate_4_is_scipys_gaussian_filter():
    """float64 on both sides; each output sums 2 x 9 products of values <= 1, so a few eps separate them."""
    from scipy import ndimage

    image = np.random.default_rng(0).random((2, 17, 13))
    sigma = 1.1
    expected = ndimage.gaussian_filter(image, sigma=(0, sigma, sigma), mode="nearest")
    got = gaussian_blur(torch.from_numpy(image)[:, None], sigma, radius=int(4 * sigma + 0.5))[:, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=2 * 9 * 4 * F64)


def test_scale_contrast_over_the_example_and_per_channel():
    images = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]])  # mean 3
    assert scale_contrast(images, 0.5).tolist() == [[[[1.5, 2.5], [3.5, 4.5]]]]
    two = torch.tensor([[[[0.0, 2.0]], [[10.0, 20.0]]]])  # channel means 1 and 15
    out = scale_contrast(two, torch.tensor([[2.0, 0.0]]), per_channel=True)
    assert out.tolist() == [[[[-1.0, 3.0]], [[15.0, 15.0]]]]


def test_shift_brightness_and_noise_add_per_example_amounts():
    images = torch.zeros(2, 1, 1, 2)
    assert shift_brightness(images, torch.tensor([1.0, -2.0])).flatten().tolist() == [1.0, 1.0, -2.0, -2.0]
    draw = torch.tensor([[[[1.0, -1.0]]], [[[2.0, 0.5]]]])
    assert add_gaussian_noise(images, torch.tensor([0.5, 2.0]), draw).flatten().tolist() == [0.5, -0.5, 4.0, 1.0]


def test_adjust_gamma_keeps_mean_and_std_and_an_exponent_above_1_darkens_the_mid_tones():
    ramp = torch.arange(5.0).view(1, 1, 1, 5)  # 0..4: mean 2, std sqrt(2.5)
    same = adjust_gamma(ramp, 1.0)
    torch.testing.assert_close(same, ramp, rtol=0, atol=16 * 4 * F32)  # ~10 float32 ops on values <= 4
    dark = adjust_gamma(ramp, 2.0)  # unit ramp 0, .25, .5, .75, 1 -> 0, .0625, .25, .5625, 1
    assert dark.mean().item() == pytest.approx(2.0, abs=1e-5)
    assert dark.std().item() == pytest.approx(math.sqrt(2.5), abs=1e-5)
    assert dark[0, 0, 0, 2] < 2.0  # the middle value falls below the mean
    flat = torch.full((1, 1, 2, 2), 7.0)
    assert torch.equal(adjust_gamma(flat, 3.0), flat)


def test_rotate_90_degrees_is_rot90_and_turns_counter_clockwise():
    image = torch.zeros(1, 1, 3, 3)
    image[0, 0, 1, 2] = 1.0  # right of the centre
    out = rotate(image, 90.0)
    assert out[0, 0, 0, 1].item() == pytest.approx(1.0, abs=1e-6)  # now above it
    torch.testing.assert_close(out, torch.rot90(image, 1, (-2, -1)), rtol=0, atol=1e-6)


def test_rotate_with_border_padding_is_scipys_rotate():
    """float64: the grids differ in the last bits of each coordinate (~10 ops x eps x 30 px), times a slope <= 1."""
    from scipy import ndimage

    image = np.random.default_rng(1).random((2, 30, 26))
    expected = ndimage.rotate(image, -7.0, axes=(-2, -1), reshape=False, order=1, mode="nearest")
    got = rotate(torch.from_numpy(image)[:, None], -7.0, padding="border")[:, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=10 * 30 * F64 * 4)


def test_the_identity_affine_changes_nothing_and_labels_keep_their_dtype():
    n = 2
    theta = affine_matrix((5, 6), torch.zeros(n), torch.ones(n), torch.zeros(n, 2),
                          torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))
    assert theta[0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    images = torch.rand(n, 1, 5, 6)
    grid = sampling_grid(theta, images)
    torch.testing.assert_close(warp(images, grid), images, rtol=0, atol=4 * F32)
    labels = torch.randint(0, 3, (n, 5, 6))
    out = warp_labels(labels, grid)
    assert out.dtype == torch.int64 and torch.equal(out, labels)


def test_elastic_displacement_of_a_constant_field_is_that_many_pixels_everywhere():
    control = torch.zeros(1, 2, 3, 3)
    control[:, 0] = 2.0  # 2 px along W
    field = elastic_displacement(control, (8, 8))
    assert field.shape == (1, 8, 8, 2)
    assert torch.allclose(field[..., 0], torch.full((1, 8, 8), 2 * 2 / 8)) and field[..., 1].abs().max() == 0


@pytest.mark.parametrize("dims", [2, 3])
def test_batch_augment_is_the_fixed_operations_applied_with_the_sampled_parameters(dims):
    cfg = AugmentConfig(flip_h=0.5, flip_v=0.5, rotate_deg=20, scale=0.1, shift=0.1, elastic=2.0,
                        blur_sigma=1.2, gamma=0.5, contrast=0.2, color=0.1, brightness=0.2, noise_std=0.05)
    shape = (4, 3, 12, 10) if dims == 2 else (4, 3, 6, 12, 10)
    images, masks = torch.rand(shape), torch.randint(0, 2, (shape[0], *shape[2:]))
    aug = BatchAugment(cfg, spatial_dims=dims)
    p = aug.sample(shape, torch.Generator().manual_seed(3))
    spatial = shape[2:]
    grid = sampling_grid(affine_matrix(spatial, p.angle, p.scale, p.shift, p.flip_h, p.flip_v), images,
                         elastic_displacement(p.elastic, spatial))
    x, m = warp(images, grid), warp_labels(masks, grid)
    x = gaussian_blur(x, p.blur_sigma, radius=math.ceil(3 * cfg.blur_sigma))
    x = scale_contrast(scale_contrast(adjust_gamma(x, p.gamma), p.contrast), p.color, per_channel=True)
    x = shift_brightness(x, p.brightness * x.std(dim=tuple(range(1, x.ndim))))
    x = add_gaussian_noise(x, p.noise_std, p.noise)
    out, out_masks = aug(images, masks, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, x) and torch.equal(out_masks, m)


def test_batch_augment_without_resampling_flips_by_indexing():
    aug = BatchAugment(AugmentConfig(flip_h=0.5, flip_v=0.5, contrast=0.3), spatial_dims=2)
    images, masks = torch.rand(6, 1, 5, 4), torch.randint(0, 3, (6, 5, 4))
    p = aug.sample(images.shape, torch.Generator().manual_seed(1))
    x, m = flip(flip(images, p.flip_h, -1), p.flip_v, -2), flip(flip(masks, p.flip_h, -1), p.flip_v, -2)
    out, out_masks = aug(images, masks, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, scale_contrast(x, p.contrast)) and torch.equal(out_masks, m)
    assert p.flip_h.any() and not p.flip_h.all()  # the seed mirrors some examples, not all
