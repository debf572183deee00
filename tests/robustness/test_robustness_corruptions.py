"""Corruptions keep shape and dtype, grow with severity, and are reproducible from the seed."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.errors import ConfigError, MedsightError
from medsight.robustness import corruptions
from medsight.robustness.corruptions import KINDS, corrupt


def _image(shape=(1, 48, 48)) -> np.ndarray:
    """An off-centre bright square with a gradient: no symmetry for rotation or motion to hide behind."""
    rng = np.random.default_rng(3)
    image = np.zeros(shape, np.float32) + 20.0
    image[..., 8:30, 12:26] = 200.0
    image += np.linspace(0, 30, shape[-1], dtype=np.float32)
    return image + rng.normal(0, 1, shape).astype(np.float32)


def _change(image: np.ndarray, kind: str, severity: int, seed: int = 0) -> float:
    return float(np.abs(corrupt(image, kind, severity, np.random.default_rng(seed)) - image).mean())


@pytest.mark.parametrize("kind", KINDS)
def test_shape_dtype_and_seed(kind: str) -> None:
    image = _image()
    out = corrupt(image, kind, 3, np.random.default_rng(7))
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, corrupt(image, kind, 3, np.random.default_rng(7)))
    assert not np.shares_memory(out, image)


@pytest.mark.parametrize("kind", KINDS)
def test_severity_grows(kind: str) -> None:
    image = _image()
    span = float(image.max() - image.min())
    changes = [_change(image, kind, s) for s in range(6)]
    assert changes[0] == 0.0
    assert changes[1] < 0.05 * span, f"{kind}: severity 1 should be a small change, got {changes}"
    assert changes[5] > 2 * changes[1], f"{kind}: severity 5 should change more than 1, got {changes}"
    assert changes[5] >= changes[3] >= changes[1], f"{kind}: not monotone {changes}"


@pytest.mark.parametrize("kind", ["noise", "jpeg", "rotation", "ghosting", "motion"])
def test_volumes_and_integers(kind: str) -> None:
    volume = _image((2, 4, 32, 32))
    out = corrupt(volume, kind, 2, np.random.default_rng(0))
    assert out.shape == volume.shape
    pixels = np.clip(_image(), 0, 255).astype(np.uint8)
    out8 = corrupt(pixels, kind, 5, np.random.default_rng(0))
    assert out8.dtype == np.uint8 and out8.shape == pixels.shape


def test_noise_std_follows_table() -> None:
    flat = np.full((1, 64, 64), 100.0, np.float32)
    flat[0, 0, 0], flat[0, 0, 1] = 0.0, 200.0  # range 200; noise std 0.08 * 200 = 16 (before clipping)
    out = corrupt(flat, "noise", 3, np.random.default_rng(0))
    assert 14.0 < float(out[0, 10:, 10:].std()) < 18.0


def test_contrast_keeps_mean_and_shrinks_spread() -> None:
    image = _image()
    out = corrupt(image, "contrast", 5, np.random.default_rng(0))
    assert abs(float(out.mean()) - float(image.mean())) < 1e-3 * float(image.mean())
    assert float(out.std()) == pytest.approx(0.2 * float(image.std()), rel=1e-3)


def _as_before(image: np.ndarray, kind: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """The corruption as it was written before it shared transforms.fixed: SciPy and NumPy, float64."""
    from scipy import ndimage

    lo, hi = image.min(), image.max()
    span, side = hi - lo, min(image.shape[-2:])
    in_plane = (0.0,) * (image.ndim - 2)
    if kind == "noise":
        return np.clip(image + rng.normal(0.0, corruptions.NOISE_STD[severity] * span, image.shape), lo, hi)
    if kind == "blur":
        sigma = corruptions.BLUR_SIGMA[severity] * side
        return ndimage.gaussian_filter(image, sigma=in_plane + (sigma, sigma), mode="nearest")
    if kind == "contrast":
        mean = image.mean()
        return np.clip(mean + (image - mean) * corruptions.CONTRAST_FACTOR[severity], lo, hi)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if kind == "brightness":
        return np.clip(image + sign * corruptions.BRIGHTNESS_SHIFT[severity] * span, lo, hi)
    degrees = sign * corruptions.ROTATION_DEG[severity]
    return ndimage.rotate(image, degrees, axes=(-2, -1), reshape=False, order=1, mode="nearest")


@pytest.mark.parametrize("shape", [(1, 48, 48), (2, 4, 32, 30)])
@pytest.mark.parametrize("kind", ["noise", "blur", "contrast", "brightness", "rotation"])
def test_corruptions_shared_with_augmentation_give_the_arrays_they_gave_before(kind: str, shape) -> None:
    """Noise, blur, contrast, brightness and rotation now run on transforms.fixed, in float64.

    Only the order of float64 sums and the grid's coordinate arithmetic differ (~10 roundings of
    eps x 48 px, times a slope of at most the range per pixel): 1e-12 of the range, 1e5 below float32's eps.
    """
    image = _image(shape).astype(np.float64)
    for severity in (1, 5):
        got = corrupt(image, kind, severity, np.random.default_rng(severity))
        expected = _as_before(image, kind, severity, np.random.default_rng(severity))
        span = float(image.max() - image.min())
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * span)


@pytest.mark.parametrize(
    ("kind", "severity", "text"),
    [("fog", 1, "unknown corruption"), ("noise", 6, "0 to 5"), ("blur", -1, "0 to 5"), ("noise", 2.5, "integer")],
)
def test_bad_requests(kind: str, severity, text: str) -> None:
    with pytest.raises(ConfigError, match=text) as info:
        corrupt(_image(), kind, severity, np.random.default_rng(0))
    assert isinstance(info.value, MedsightError) and info.value.fix


def test_bad_shape() -> None:
    with pytest.raises(ConfigError, match="channel-first"):
        corrupt(np.zeros((8, 8), np.float32), "noise", 1, np.random.default_rng(0))
