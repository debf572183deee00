"""preprocess(): the deterministic pipeline saved in the bundle."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medsight.config import PreprocessConfig
from medsight.errors import ConfigError, InvalidImageError
from medsight.sample import Sample
from medsight.transforms import preprocess, resize
from medsight.transforms.preprocess import aspect_padding


def sample(array: np.ndarray, path: str = "scan.png", **meta) -> Sample:
    array = np.asarray(array, np.float32)
    return Sample(array, spacing=(1.0,) * (array.ndim - 1), meta={"path": path, **meta})


@pytest.mark.parametrize(
    ("shape", "size"),
    [((1, 28, 28), [28, 28]), ((1, 64, 48), [32, 32]), ((3, 20, 20), [40, 40]), ((1, 12, 20, 24), [8, 16, 16])],
)
def test_output_is_float32_channel_first_at_the_configured_size(shape, size):
    image = preprocess(sample(np.random.default_rng(0).random(shape) * 100), PreprocessConfig(
        size=size, channels=shape[0]
    ))
    assert image.shape == (shape[0], *size)
    assert image.dtype == np.float32 and image.flags.c_contiguous
    assert image.min() == 0.0 and image.max() == pytest.approx(1.0)


def test_minmax_maps_the_image_range_to_0_1_and_a_constant_image_to_0():
    cfg = PreprocessConfig(size=[4, 4], normalize="minmax")
    ramp = np.array([[[-100.0, 0, 100, 300]] * 4])
    np.testing.assert_allclose(preprocess(sample(ramp), cfg)[0, 0], [0.0, 0.25, 0.5, 1.0])
    assert not preprocess(sample(np.full((1, 4, 4), 7.0)), cfg).any()


def test_zscore_gives_each_channel_mean_0_std_1_and_a_flat_channel_0():
    rng = np.random.default_rng(1)
    array = np.stack([rng.normal(50, 10, (16, 16)), np.full((16, 16), 3.0), rng.normal(-5, 2, (16, 16))])
    image = preprocess(sample(array), PreprocessConfig(size=[16, 16], channels=3, normalize="zscore"))
    np.testing.assert_allclose(image.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(image.std(axis=(1, 2)), [1.0, 0.0, 1.0], atol=1e-5)


def test_ct_window_maps_hounsfield_units_through_the_preset():
    hu = np.array([[[-1000.0, 40.0, 1000.0, 240.0]] * 4])
    cfg = PreprocessConfig(size=[4, 4], normalize="ct_window", window="abdomen")  # center 40, width 400
    np.testing.assert_allclose(preprocess(sample(hu), cfg)[0, 0], [0.0, 0.50125, 1.0, 1.0], atol=1e-5)
    custom = PreprocessConfig(size=[4, 4], normalize="ct_window", window=[0.0, 2001.0])
    np.testing.assert_allclose(preprocess(sample(hu), custom)[0, 0], [0.00025, 0.52025, 1.0, 0.62025], atol=1e-5)


def test_a_sample_the_reader_already_windowed_is_not_windowed_twice():
    already = np.array([[[0.0, 0.5, 1.0, 0.25]] * 4])
    cfg = PreprocessConfig(size=[4, 4], normalize="ct_window", window="abdomen")
    out = preprocess(sample(already, window=[40.0, 400.0]), cfg)
    np.testing.assert_allclose(out[0, 0], [0.0, 0.5, 1.0, 0.25])
    with pytest.raises(ConfigError, match=r"ct\.dcm.*already applied the window \[-600.0, 1500.0\].*window=None"):
        preprocess(sample(already, "ct.dcm", window=[-600.0, 1500.0]), cfg)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (PreprocessConfig(size=[4, 4], normalize="ct_window"), r"no window is set; set preprocess\.window"),
        (PreprocessConfig(size=[4, 4], window="lung"), r"only applied with normalize=ct_window.*set preprocess"),
        (PreprocessConfig(size=[4, 4], normalize="ct_window", window="kidney"), r"unknown window preset.*lung"),
        (PreprocessConfig(size=[4, 4, 4]), r"scan\.png: the image is 2D \(4, 4\) but preprocess\.size \[4, 4, 4\] "
         r"is 3D; set preprocess\.size to 2 values"),
        (PreprocessConfig(size=[4, 4], channels=2), r"scan\.png: cannot convert .* 1 channel.*to 2; set"),
    ],
)
def test_inconsistent_settings_raise_config_error_with_the_fix(cfg, message):
    with pytest.raises(ConfigError, match=message):
        preprocess(sample(np.zeros((1, 4, 4))), cfg)


def test_a_3d_volume_with_a_2d_size_names_both_sizes():
    with pytest.raises(ConfigError, match=r"vol\.nii\.gz: the image is 3D \(4, 5, 6\) but preprocess\.size \[8, 8\]"):
        preprocess(sample(np.zeros((1, 4, 5, 6)), "vol.nii.gz"), PreprocessConfig(size=[8, 8]))


def test_nan_pixels_raise_invalid_image_error_naming_the_file():
    array = np.zeros((1, 8, 8))
    array[0, 3, 3] = np.nan
    with pytest.raises(InvalidImageError, match=r"broken\.png: .*NaN.*; fix or exclude"):
        preprocess(sample(array, "broken.png"), PreprocessConfig(size=[8, 8]))


def test_channels_are_converted_grey_to_rgb_and_rgb_to_luminance():
    grey = np.arange(16.0).reshape(1, 4, 4)
    rgb = preprocess(sample(grey), PreprocessConfig(size=[4, 4], channels=3, normalize="none"))
    np.testing.assert_array_equal(rgb, np.repeat(grey, 3, axis=0))
    red = np.zeros((3, 4, 4))
    red[0] = 100.0
    lum = preprocess(sample(red), PreprocessConfig(size=[4, 4], channels=1, normalize="none"))
    np.testing.assert_allclose(lum, 29.9, rtol=1e-3)  # ITU-R 601: 0.299 R


@pytest.mark.parametrize("size", [[16, 16], [16, 16, 16]])
def test_downsizing_a_checkerboard_is_antialiased_to_mid_grey(size):
    grid = np.indices([64] * len(size)).sum(axis=0) % 2
    out = resize(grid[None].astype(np.float32), size)
    assert out.shape == (1, *size)
    np.testing.assert_allclose(out[0][(slice(2, -2),) * len(size)], 0.5, atol=0.02)


def test_a_mask_is_resized_nearest_keeping_labels_dtype_and_position():
    labels = np.zeros((32, 32), np.uint8)
    labels[8:16, 8:16] = 1
    labels[20:28, 4:12] = 2
    image, mask = preprocess(sample(labels[None] * 50.0), PreprocessConfig(size=[16, 16]), mask=labels)
    assert mask.dtype == np.uint8 and mask.shape == (16, 16)
    assert set(np.unique(mask)) == {0, 1, 2}
    assert (mask == 1).sum() == 16 and (mask == 2).sum() == 16
    assert (mask[4:8, 4:8] == 1).all() and (mask[10:14, 2:6] == 2).all()
    np.testing.assert_allclose(image[0, 5:7, 5:7], 0.5, atol=1e-6)
    _, channelled = preprocess(sample(labels[None]), PreprocessConfig(size=[64, 64]), mask=labels[None])
    assert channelled.shape == (1, 64, 64) and (channelled == 1).sum() == 4 * 64


def test_a_mask_on_another_grid_raises_naming_the_file_and_fix():
    with pytest.raises(InvalidImageError, match=r"case7\.nii: the mask's shape \(8, 9\) .* \(8, 8\); pair each"):
        preprocess(sample(np.zeros((1, 8, 8)), "case7.nii"), PreprocessConfig(size=[8, 8]), mask=np.zeros((8, 9)))


def test_denoise_median_removes_salt_and_gaussian_spreads_it():
    salt = np.zeros((1, 9, 9))
    salt[0, 4, 4] = 1.0
    median = PreprocessConfig(size=[9, 9], normalize="none", denoise="median", denoise_size=1)
    assert not preprocess(sample(salt), median).any()
    gauss = PreprocessConfig(size=[9, 9], normalize="none", denoise="gaussian", denoise_size=1.0)
    blurred = preprocess(sample(salt), gauss)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-4)
    assert blurred[0, 4, 4] == pytest.approx(1 / (2 * np.pi), abs=0.01)


@pytest.mark.parametrize("shape", [(1, 64, 64), (1, 16, 32, 32)])
def test_clahe_stretches_a_low_contrast_image_into_0_1(shape):
    rng = np.random.default_rng(2)
    dull = 0.45 + 0.1 * rng.random(shape)
    out = preprocess(sample(dull), PreprocessConfig(size=list(shape[1:]), clahe=True, normalize="none"))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 5 * dull.std()


def test_preprocess_is_pure_and_leaves_the_sample_alone():
    array = np.random.default_rng(3).random((1, 8, 8)).astype(np.float32)
    s = sample(array.copy())
    cfg = PreprocessConfig(size=[8, 8], normalize="none")
    first = preprocess(s, cfg)
    first[:] = -1
    np.testing.assert_array_equal(s.array, array)
    np.testing.assert_array_equal(preprocess(s, cfg), array)


def test_medmnist_sized_images_preprocess_at_well_over_5000_per_second():
    samples = [sample(np.random.default_rng(i).random((1, 28, 28)) * 255) for i in range(2000)]
    cfg = PreprocessConfig(size=[28, 28], normalize="minmax")
    start = time.perf_counter()
    for s in samples:
        preprocess(s, cfg)
    rate = len(samples) / (time.perf_counter() - start)
    assert rate > 10_000, f"{rate:.0f} images/s"


def test_a_higher_clahe_clip_limit_brings_out_a_faint_line_more():
    """A line 0.03 brighter than its surroundings on a strong gradient (a thin vessel on a
    fundus photograph's uneven illumination): each clip limit raises its contrast, a higher
    one more; preprocess passes ``clahe_clip`` on."""
    image = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (1, 64, 1))
    image[0, 32] += 0.03

    def line_contrast(clip: float | None) -> float:
        cfg = PreprocessConfig(size=[64, 64], clahe=clip is not None, normalize="none",
                               **({} if clip is None else {"clahe_clip": clip}))
        out = preprocess(sample(image.copy()), cfg)[0]
        return float((out[32] - (out[29] + out[35]) / 2).mean())

    raw, default, harder = line_contrast(None), line_contrast(0.01), line_contrast(0.05)
    assert raw == pytest.approx(0.03, abs=1e-3)
    assert default > 1.3 * raw and harder > 1.5 * default  # measured: 0.045 and 0.080


def test_the_default_clahe_clip_is_scikit_images_default_so_existing_bundles_are_unchanged():
    from skimage.exposure import equalize_adapthist

    image = np.random.default_rng(4).random((1, 48, 48)).astype(np.float32)
    out = preprocess(sample(image.copy()), PreprocessConfig(size=[48, 48], clahe=True, normalize="none"))
    scaled = (image[0] - image.min()) / (image.max() - image.min())
    np.testing.assert_allclose(out[0], equalize_adapthist(scaled), atol=1e-6)


def test_a_clahe_clip_outside_0_1_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="clahe_clip"):
        PreprocessConfig(clahe_clip=0.0)


def test_keep_aspect_pads_with_the_smallest_value_instead_of_squashing():
    """A 100 x 50 image to 32 x 32: 25 columns of padding each side, so the object keeps its shape."""
    image = np.full((1, 100, 50), 5.0, np.float32)
    image[0, 0, 0] = 1.0  # the smallest value: what the padding is filled with
    mask = np.ones((100, 50), np.uint8)
    cfg = PreprocessConfig(size=[32, 32], keep_aspect=True, normalize="none")
    out, resized_mask = preprocess(Sample(image, (1.0, 1.0)), cfg, mask=mask)
    assert out.shape == (1, 32, 32) and resized_mask.shape == (32, 32)
    # the middle row: 8 padded columns each side (25 of 100 -> 8 of 32), image in between
    np.testing.assert_allclose(out[0, 16, :7], 1.0, atol=1e-5)
    np.testing.assert_allclose(out[0, 16, 9:23], 5.0, atol=1e-5)
    assert resized_mask[16, :8].sum() == 0 and resized_mask[16, 8:24].all() and resized_mask[16, 24:].sum() == 0
    squashed = preprocess(Sample(image, (1.0, 1.0)), cfg.model_copy(update={"keep_aspect": False}))
    assert squashed[0, 16, 1:].min() > 4.9  # without it the image fills the width


def test_aspect_padding_is_none_for_a_matching_aspect():
    assert aspect_padding((64, 64), (32, 32)) is None
    assert aspect_padding((100, 50), (64, 64)) == [(0, 0), (25, 25)]
    assert aspect_padding((10, 30, 30), (20, 20, 20)) == [(10, 10), (0, 0), (0, 0)]


def test_dataset_normalisation_clips_then_applies_one_global_z_score():
    hu = np.kron(np.array([[-1000.0, 0.0], [40.0, 3000.0]], np.float32), np.ones((2, 2), np.float32))[None]
    cfg = PreprocessConfig(size=[4, 4], normalize="dataset", intensity_clip=[-100.0, 300.0],
                           intensity_mean=50.0, intensity_std=100.0)
    out = preprocess(Sample(hu, (1.0, 1.0)), cfg)
    np.testing.assert_allclose(out[0, ::2, ::2], [[-1.5, -0.5], [-0.1, 2.5]], atol=1e-6)


def test_dataset_normalisation_without_its_statistics_is_a_clear_error():
    with pytest.raises(ConfigError, match="needs preprocess.intensity_clip"):
        preprocess(Sample(np.zeros((1, 4, 4), np.float32), (1.0, 1.0)), PreprocessConfig(size=[4, 4],
                                                                                         normalize="dataset"))
