"""Image corruptions at graded severities: NumPy arrays in and out, reproducible from a NumPy generator.

Noise, blur, contrast, brightness and rotation are the fixed operations that augmentation
samples (:mod:`medsight.transforms.fixed`), run here in float64 at fixed severities; the
k-space artefacts, the bias field and JPEG exist only here.

Every corruption works on the **raw decoded image** (a :class:`~medsight.sample.Sample`'s
``array``: channel-first float, ``(C, H, W)`` or ``(C, D, H, W)``, in the file's own units),
before the bundle's preprocessing. That is where real artefacts happen (a noisier detector, a
JPEG-compressed export, a patient who moved), and the bundle's own preprocessing (resize,
normalisation) then sees them as it would in the clinic.

Intensity amounts are fractions of the image's own range ``max - min``, so a severity means
the same for 8-bit PNGs, MedMNIST arrays and CT in HU. Intensity corruptions (noise,
contrast, brightness, jpeg) are clipped to the image's original ``[min, max]``, as a
detector or an 8-bit export would saturate. Spatial sizes (blur sigma, motion translation) are
fractions of the smallest in-plane side, so they scale with the image. Rotations, JPEG and
motion act in the plane of the last two axes (slice by slice for volumes).

Severity 0 is the clean image; 1 (mild) to 5 (severe) follow the tables below.

MRI artefacts are simulated in k-space with ``numpy.fft`` (no torchio):

* ``bias_field``: a smooth multiplicative field ``exp(s * p(x))``, ``p`` a random cubic
  polynomial scaled to ``max |p| = 1``;
* ``ghosting``: every k-space line along the phase axis (the first in-plane axis) except each
  ``n``-th is damped by ``1 - s``, which adds ``n - 1`` shifted copies of the image;
* ``spike``: one bright k-space point away from the centre, which adds stripes;
* ``motion``: the outer k-space lines along the phase axis (20% to 60% of them, by severity)
  come from a slightly translated and rotated copy of the image, as if the patient moved
  part-way through the acquisition.

Example:
    >>> rng = np.random.default_rng(0)
    >>> image = np.random.default_rng(1).random((1, 64, 64)).astype(np.float32)
    >>> noisy = corrupt(image, "noise", 3, rng)
    >>> noisy.shape, noisy.dtype
    ((1, 64, 64), dtype('float32'))
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch

from medsight.errors import ConfigError
from medsight.transforms.fixed import add_gaussian_noise, gaussian_blur, rotate, scale_contrast, shift_brightness

MAX_SEVERITY = 5

# Index = severity (0 = clean). Intensity amounts are fractions of the image's range.
NOISE_STD = (0.0, 0.02, 0.04, 0.08, 0.12, 0.20)
"""Gaussian noise: standard deviation as a fraction of ``max - min``."""
BLUR_SIGMA = (0.0, 0.005, 0.01, 0.02, 0.03, 0.045)
"""Gaussian blur: sigma as a fraction of the smallest in-plane side (28 px: 0.14 to 1.3 px)."""
CONTRAST_FACTOR = (1.0, 0.8, 0.6, 0.45, 0.3, 0.2)
"""Contrast: deviations from the image mean are multiplied by this factor."""
BRIGHTNESS_SHIFT = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)
"""Brightness: this fraction of ``max - min`` is added (the sign is drawn from ``rng``)."""
JPEG_QUALITY = (100, 80, 50, 30, 15, 5)
"""JPEG: the quality of a Pillow round trip at 8 bits (severity 0 skips it)."""
ROTATION_DEG = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0)
"""Rotation: degrees in the plane of the last two axes (the sign is drawn from ``rng``)."""
BIAS_STRENGTH = (0.0, 0.1, 0.2, 0.3, 0.45, 0.6)
"""Bias field: ``s`` in ``exp(s * p(x))``; 0.6 means up to x1.8 or x0.55 across the image."""
GHOST_INTENSITY = (0.0, 0.1, 0.2, 0.3, 0.45, 0.6)
"""Ghosting: damping ``s`` of the non-kept k-space lines (ghost count drawn from 2 to 4)."""
SPIKE_INTENSITY = (0.0, 0.01, 0.02, 0.04, 0.07, 0.1)
"""Spike: magnitude of the k-space spike as a fraction of the k-space centre (DC) value."""
MOTION = ((0.0, 0.0, 0.0), (0.01, 1.0, 0.2), (0.02, 2.0, 0.3), (0.03, 3.0, 0.4), (0.05, 4.0, 0.5), (0.07, 6.0, 0.6))
"""Motion: (translation as a fraction of the in-plane side, rotation in degrees, fraction of the
k-space lines, the outermost along the phase axis, taken from the moved copy)."""

GENERIC_KINDS = ("noise", "blur", "contrast", "brightness", "jpeg", "rotation")
MRI_KINDS = ("bias_field", "ghosting", "spike", "motion")
KINDS = GENERIC_KINDS + MRI_KINDS


def corrupt(image: np.ndarray, kind: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply one corruption at one severity.

    Args:
        image: a raw decoded image, ``(C, H, W)`` or ``(C, D, H, W)``, any float or integer dtype.
        kind: one of :data:`KINDS`.
        severity: 0 (clean: returns a copy) to :data:`MAX_SEVERITY`.
        rng: the source of every random choice, so the same seed gives the same output.

    Returns:
        The corrupted image with the input's shape and dtype.

    Raises:
        ConfigError: an unknown kind, a severity outside 0..5, or an image that is not
            channel-first 2D or 3D.
    """
    check_kind(kind)
    check_severity(severity)
    image = np.asarray(image)
    if image.ndim not in (3, 4):
        raise ConfigError(
            f"corrupt({kind})", f"the image has shape {image.shape}",
            "pass a channel-first (C, H, W) or (C, D, H, W) array",
        )
    if severity == 0:
        return image.copy()
    work = image.astype(np.float64)
    out = _FUNCTIONS[kind](work, severity, rng)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(image.dtype, copy=False)


def check_kind(kind: str) -> None:
    """Raise :class:`ConfigError` for a kind not in :data:`KINDS`."""
    if kind not in KINDS:
        raise ConfigError(f"kind={kind}", "unknown corruption", f"choose from {', '.join(KINDS)}")


def check_severity(severity: int) -> None:
    """Raise :class:`ConfigError` for a severity outside 0..5."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= severity <= MAX_SEVERITY:
        raise ConfigError(
            f"severity={severity}", f"severity must be an integer from 0 to {MAX_SEVERITY}",
            "use 1 (mild) to 5 (severe); 0 is the clean image",
        )


def _range(image: np.ndarray) -> tuple[float, float, float]:
    lo, hi = float(image.min()), float(image.max())
    return lo, hi, max(hi - lo, 1e-8)


def _fixed(image: np.ndarray, operation: Callable[[torch.Tensor], torch.Tensor], *, planes: bool = False) -> np.ndarray:
    """Run a fixed operation of :mod:`medsight.transforms.fixed` on a float64 image.

    The image is one example ``(1, C, ...)``, or with ``planes`` every in-plane slice is an
    example ``(C * D, 1, H, W)``, so spatial operations act in the plane of the last two axes.
    """
    batch = image.reshape(-1, 1, *image.shape[-2:]) if planes else image[None]
    return operation(torch.from_numpy(np.ascontiguousarray(batch))).numpy().reshape(image.shape)


def _noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    lo, hi, span = _range(image)
    draw = torch.from_numpy(rng.standard_normal(image.shape)[None])
    return np.clip(_fixed(image, lambda x: add_gaussian_noise(x, NOISE_STD[severity] * span, draw)), lo, hi)


def _blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = BLUR_SIGMA[severity] * min(image.shape[-2:])
    radius = int(4 * sigma + 0.5)  # scipy.ndimage.gaussian_filter's truncate=4, which this corruption always used
    return _fixed(image, lambda x: gaussian_blur(x, sigma, radius=radius), planes=True)


def _contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    lo, hi, _ = _range(image)
    return np.clip(_fixed(image, lambda x: scale_contrast(x, CONTRAST_FACTOR[severity])), lo, hi)


def _brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    lo, hi, span = _range(image)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return np.clip(_fixed(image, lambda x: shift_brightness(x, sign * BRIGHTNESS_SHIFT[severity] * span)), lo, hi)


def _jpeg(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    lo, _, span = _range(image)
    planes = image.reshape(-1, *image.shape[-2:])
    out = np.empty_like(planes)
    for i, plane in enumerate(planes):
        pixels = np.clip(np.rint((plane - lo) / span * 255.0), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=JPEG_QUALITY[severity])
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer).convert("L"), dtype=np.float64)
        out[i] = decoded / 255.0 * span + lo
    return out.reshape(image.shape)


def _rotate_plane(image: np.ndarray, degrees: float) -> np.ndarray:
    """Bilinear rotation in the plane of the last two axes, the edges extended (``ndimage.rotate``'s ``nearest``)."""
    return _fixed(image, lambda x: rotate(x, degrees, padding="border"), planes=True)


def _rotation(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _rotate_plane(image, sign * ROTATION_DEG[severity])


def _bias_field(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    spatial = image.shape[1:]
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in spatial], indexing="ij")
    field = np.zeros(spatial)
    for powers in np.ndindex(*(4,) * len(spatial)):
        if 0 < sum(powers) <= 3:
            term = np.ones(spatial)
            for axis, power in zip(axes, powers, strict=True):
                term = term * axis**power
            field += rng.uniform(-1.0, 1.0) * term
    field /= max(float(np.abs(field).max()), 1e-8)
    lo = float(image.min())
    return (image - lo) * np.exp(BIAS_STRENGTH[severity] * field)[None] + lo


def _kspace_apply(image: np.ndarray, edit: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Edit the centred 2D k-space of every in-plane slice and return the magnitude image.

    Callers shift the image to be non-negative first (MR magnitudes are), and back afterwards.
    """
    kspace = np.fft.fftshift(np.fft.fft2(image, axes=(-2, -1)), axes=(-2, -1))
    kspace = edit(kspace)
    return np.abs(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), axes=(-2, -1)))


def _ghosting(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    ghosts = int(rng.integers(2, 5))
    lo = min(float(image.min()), 0.0)

    def edit(kspace: np.ndarray) -> np.ndarray:
        lines = np.arange(kspace.shape[-2]) % ghosts != 0
        kspace[..., lines, :] *= 1.0 - GHOST_INTENSITY[severity]
        return kspace

    return _kspace_apply(image - lo, edit) + lo


def _spike(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    lo = min(float(image.min()), 0.0)
    rows, cols = image.shape[-2:]

    def edit(kspace: np.ndarray) -> np.ndarray:
        centre = (rows // 2, cols // 2)
        dc = np.abs(kspace[..., centre[0], centre[1]])
        while True:
            r, c = int(rng.integers(rows)), int(rng.integers(cols))
            if max(abs(r - centre[0]), abs(c - centre[1])) >= 2:
                break
        kspace[..., r, c] += SPIKE_INTENSITY[severity] * dc * np.exp(1j * rng.uniform(0, 2 * np.pi))
        return kspace

    return _kspace_apply(image - lo, edit) + lo


def _motion(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    shift_fraction, degrees, moved_fraction = MOTION[severity]
    side = min(image.shape[-2:])
    shift = (0.0,) * (image.ndim - 2) + tuple(rng.choice([-1.0, 1.0], 2) * shift_fraction * side)
    lo = min(float(image.min()), 0.0)
    base = image - lo
    moved = ndimage.shift(_rotate_plane(base, float(rng.choice([-1.0, 1.0])) * degrees), shift, order=1,
                          mode="nearest")
    moved_k = np.fft.fftshift(np.fft.fft2(moved, axes=(-2, -1)), axes=(-2, -1))
    rows = image.shape[-2]
    outer = np.abs(np.arange(rows) - rows // 2) > (1.0 - moved_fraction) * rows / 2

    def edit(kspace: np.ndarray) -> np.ndarray:
        kspace[..., outer, :] = moved_k[..., outer, :]
        return kspace

    return _kspace_apply(base, edit) + lo


_FUNCTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "noise": _noise,
    "blur": _blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "jpeg": _jpeg,
    "rotation": _rotation,
    "bias_field": _bias_field,
    "ghosting": _ghosting,
    "spike": _spike,
    "motion": _motion,
}
