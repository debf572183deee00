"""Corruptions keep shape and dtype, grow with severity, and are reproducible from the seed."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.errors import ConfigError, MedsightError
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
