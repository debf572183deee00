"""A tiny classifier bundle with a domain record, for the domain-check tests (inference, serve).

The network is an untrained compact_cnn (fixed seed) on 32x32 grey PNGs of a bright blob on a dark noisy
background; its record comes from :func:`medsight.inference.domain.domain_record` on 40 such images (20 more
calibrate the threshold) and a fingerprint that says: PNG stored values 0 to 255, one channel, 32 to 64 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PREPROCESS = {"size": [32, 32], "channels": 1, "normalize": "minmax"}
FINGERPRINT = {
    "channels": {"1": 60},
    "sizes": {"min": [32, 32], "max": [64, 64]},
    "modality": {"value": "photo", "source": "guess", "reason": "PNG files"},
    "intensity": {"unit": "stored value", "p00_5": 0.0, "p99_5": 255.0, "min": 0.0, "max": 255.0},
}


def blob_pixels(seed: int, size: int = 40) -> np.ndarray:
    """A bright Gaussian blob at a seeded place on dark noise, uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
    blob = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 * size * size))
    image = 40 + blob + rng.normal(0, 8, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_domain_bundle(folder: Path, *, action: str = "flag", record: bool = True) -> Path:
    """The bundle (``folder``/model) and its training PNGs (``folder``/train/t*.png); ``record=False``: an older
    bundle without a domain record."""
    import torch

    from medsight.bundle import Bundle, provenance
    from medsight.config import ModelConfig, PreprocessConfig
    from medsight.inference.domain import domain_record
    from medsight.io import read_image
    from medsight.models import create_model
    from medsight.transforms import preprocess

    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2).eval()
    prep = PreprocessConfig(**PREPROCESS)
    files = [write_png(folder / "train" / f"t{k:02d}.png", blob_pixels(k)) for k in range(60)]
    images = torch.from_numpy(np.stack([preprocess(read_image(f), prep) for f in files]))
    domain = domain_record(net, images[:40], images[40:], FINGERPRINT, action=action) if record else None
    bundle = Bundle(task="classification", model=ModelConfig(name="compact_cnn"), preprocess=prep,
                    label_names=["normal", "nodule"], threshold=0.5, provenance=provenance(),
                    state_dict=net.state_dict(), domain=domain)
    return bundle.save(folder / "model")
