"""The service and the domain check: /v1/predict's out_of_domain and domain_reasons under flag, refuse (422) and
off, the model card's record, and an older bundle without a record served as before."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from domain_bundles import make_domain_bundle
from PIL import Image

from medsight.inference.domain import NO_RECORD


@pytest.fixture(scope="module")
def domain_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_domain_bundle(tmp_path_factory.mktemp("domain"))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


BLANK = _png(np.zeros((200, 200)))


def _client(bundle: Path, api_key: str, **settings):
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    return TestClient(create_app(ServeSettings(bundle=bundle, api_keys=(api_key,), **settings)),
                      headers={"X-API-Key": api_key})


def _predict(client, data: bytes):
    return client.post("/v1/predict", files={"file": ("case.png", data, "image/png")})


def test_flag_answers_with_the_reasons(domain_bundle: Path, api_key: str) -> None:
    inside = (domain_bundle.parent / "train" / "t00.png").read_bytes()
    with _client(domain_bundle, api_key) as client:
        flagged, fine = _predict(client, BLANK), _predict(client, inside)
        card = client.get("/v1/model").json()
    assert flagged.status_code == 200 and fine.status_code == 200
    body = flagged.json()
    assert body["label"] in ("normal", "nodule") and body["out_of_domain"] is True
    assert body["domain_reasons"][0] == "the image is blank: every pixel is 0"
    assert (fine.json()["out_of_domain"], fine.json()["domain_reasons"]) == (False, [])
    assert card["domain"]["action"] == "flag" and card["domain"]["channels"] == [1]
    assert card["domain"]["features"]["n_reference"] == 40 and "reference" not in card["domain"]


def test_refuse_answers_422_with_the_reasons_and_no_class(domain_bundle: Path, api_key: str) -> None:
    with _client(domain_bundle, api_key, out_of_domain="refuse") as client:
        refused = _predict(client, BLANK)
        fine = _predict(client, (domain_bundle.parent / "train" / "t01.png").read_bytes())
    assert refused.status_code == 422
    body = refused.json()
    assert "label" not in body and "probabilities" not in body
    assert body["error"]["type"] == "OutOfDomainError"
    assert body["error"]["problem"].startswith("outside the model's training domain: the image is blank")
    assert body["out_of_domain"] is True and body["domain_reasons"][0] == "the image is blank: every pixel is 0"
    assert fine.status_code == 200 and fine.json()["out_of_domain"] is False


def test_off_checks_nothing(domain_bundle: Path, api_key: str) -> None:
    with _client(domain_bundle, api_key, out_of_domain="off") as client:
        body = _predict(client, BLANK).json()
        card = client.get("/v1/model").json()
    assert (body["out_of_domain"], body["domain_reasons"]) == (None, [])
    assert card["domain"] == {"action": "off", "note": "the out-of-domain check is off"}


def test_an_old_bundle_is_served_as_before_and_its_card_says_why_nothing_is_checked(client) -> None:
    body = _predict(client, BLANK).json()
    assert body["label"] in ("normal", "nodule") and (body["out_of_domain"], body["domain_reasons"]) == (None, [])
    assert client.get("/v1/model").json()["domain"] == {"action": "off", "note": NO_RECORD}


def test_an_unknown_action_is_refused_before_the_service_starts(domain_bundle: Path, tmp_path: Path) -> None:
    from medsight.errors import ConfigError
    from medsight.serve.server import _checked_settings

    with pytest.raises(ConfigError, match="--out-of-domain warn: is not an action"):
        _checked_settings(bundle=domain_bundle, registry=None, feedback=None, host="127.0.0.1", api_keys_file=None,
                          no_auth=True, max_body_mb=1, max_voxels=None, auth_failures_per_minute=None, device="cpu",
                          mixed_precision=False, out_of_domain="warn")
