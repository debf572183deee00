"""Fixtures for the feedback tests: a tiny classifier bundle and a client with feedback on."""

from __future__ import annotations

from pathlib import Path

import pytest
from feedback_data import KEY


@pytest.fixture(scope="session")
def fb_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from medsight.bundle import Bundle, provenance
    from medsight.config import ModelConfig, PreprocessConfig
    from medsight.models import create_model

    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2)
    return Bundle(task="classification", model=ModelConfig(name="compact_cnn"),
                  preprocess=PreprocessConfig(size=[32, 32], channels=1, normalize="minmax"),
                  label_names=["normal", "nodule"], provenance=provenance(),
                  state_dict=net.state_dict()).save(tmp_path_factory.mktemp("fb") / "model")



@pytest.fixture
def feedback_client(fb_bundle: Path, tmp_path: Path):
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=fb_bundle, api_keys=(KEY,), feedback=tmp_path / "feedback"))
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        yield client
