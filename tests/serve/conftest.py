"""Fixtures for the service tests: a tiny untrained classification bundle, keys, a test client."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from phi_dicom import phi_dicom_bytes
from PIL import Image

KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compact_cnn classifier (random weights, fixed seed) on 32x32 grey images, with provenance."""
    import torch

    from medsight.bundle import Bundle, provenance
    from medsight.config import ModelConfig, PreprocessConfig
    from medsight.models import create_model

    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2)
    bundle = Bundle(
        task="classification",
        model=ModelConfig(name="compact_cnn"),
        preprocess=PreprocessConfig(size=[32, 32], channels=1, normalize="minmax"),
        label_names=["normal", "nodule"],
        threshold=0.42,
        metrics={"val_auc": 0.91, "val_accuracy": 0.85},
        provenance=provenance(data="/data/chest", skipped_files=["/data/chest/Doe_Jane_001.dcm"], n_train=10,
                              split={"train": ["Doe_Jane_002", "case_7"], "val": ["case_9"]}),
        state_dict=net.state_dict(),
    )
    return bundle.save(tmp_path_factory.mktemp("bundle") / "model")


def _pixels(seed: int, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = (rng.random(size) * 60).astype(np.uint8)
    pixels[10:20, 12:24] = 220
    return pixels


def png_bytes(seed: int = 0, size: tuple[int, int] = (48, 40), fmt: str = "PNG") -> bytes:
    """A grey PNG (or JPEG) with a bright blob, as a file upload would carry it."""
    buffer = io.BytesIO()
    Image.fromarray(_pixels(seed, size), "L").save(buffer, format=fmt)
    return buffer.getvalue()


def dicom_bytes(patient_name: str = "Doe^Jane", seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    """A CT-like DICOM Part 10 file that still carries patient-identifying fields."""
    return phi_dicom_bytes(_pixels(seed, size), patient_name)


@pytest.fixture(scope="session")
def api_key() -> str:
    """The key :func:`client` sends (a fixture, because ``from conftest import`` finds another folder's
    conftest when several test folders are collected together)."""
    return KEY


@pytest.fixture
def png() -> bytes:
    return png_bytes()


@pytest.fixture
def make_png():
    return png_bytes


@pytest.fixture
def make_dicom():
    return dicom_bytes


@pytest.fixture
def client(tiny_bundle: Path):
    """A started app (the lifespan has loaded the model) that needs KEY."""
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=tiny_bundle, api_keys=(KEY,), max_body_bytes=2**20))
    with TestClient(app, headers={"X-API-Key": KEY}) as test_client:
        yield test_client


def _train_seg(root: Path, patch: list[int], kwargs: dict) -> Path:
    """A U-Net trained for 1 epoch of 2 steps on the image/mask pairs under ``root``: its bundle."""
    from medsight.config import load_config
    from medsight.segmentation.train import train_segmenter

    cfg = load_config(overrides={
        "task": "segmentation", "data.path": str(root), "model.name": "unet", "model.kwargs": kwargs,
        "segment.patch_size": patch, "segment.batch_size": 2, "segment.steps_per_epoch": 2, "train.epochs": 1,
    })
    return Path(train_segmenter(cfg, out=root.parent / "run", progress=False)["bundle"])


@pytest.fixture
def train_seg():
    return _train_seg


@pytest.fixture(scope="session")
def disc_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Image/mask PNG pairs: a bright disc on noise, 40x48."""
    root = tmp_path_factory.mktemp("discs") / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :48]
    for k in range(4):
        mask = ((yy - 20) ** 2 + (xx - 20 - 2 * k) ** 2 <= 64).astype(np.uint8)
        image = np.clip(60 + rng.normal(0, 20, mask.shape) + 120 * mask, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"c{k}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"c{k}.png")
    return root


@pytest.fixture(scope="session")
def seg_bundle(disc_images: Path) -> Path:
    """A tiny 2D segmentation bundle (32x32 patches) trained on :func:`disc_images`."""
    return _train_seg(disc_images, [32, 32], {"base_features": 8})
