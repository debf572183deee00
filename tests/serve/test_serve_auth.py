"""API keys: required on /v1 and /metrics, constant-time checked, and a service that will not start unprotected."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsight.errors import ConfigError
from medsight.serve.auth import check_auth_settings, key_from_headers, key_is_valid, load_api_keys

KEY = "test-key-0123456789abcdef"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/model", {}, 401),
        ("/v1/model", {"X-API-Key": "wrong-key-0123456789abcdef"}, 401),
        ("/v1/model", {"X-API-Key": KEY}, 200),
        ("/v1/model", {"Authorization": f"Bearer {KEY}"}, 200),
        ("/v1/model", {"Authorization": f"Basic {KEY}"}, 401),
        ("/metrics", {}, 401),
        ("/metrics", {"X-API-Key": KEY}, 200),
        ("/healthz", {}, 200),
        ("/readyz", {}, 200),
        ("/", {}, 200),
        ("/static/app.js", {}, 200),
        ("/openapi.json", {}, 200),
    ],
)
def test_which_endpoints_need_a_key(client, path: str, headers: dict, status: int) -> None:
    client.headers.clear()
    response = client.get(path, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"]["type"] == "UnauthorizedError"
        assert "X-API-Key" in response.json()["error"]["fix"]
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_predict_without_a_key_is_refused_before_reading_the_upload(client, png: bytes) -> None:
    client.headers.clear()
    assert client.post("/v1/predict", files={"file": ("a.png", png)}).status_code == 401
    assert client.post("/v1/explain", files={"file": ("a.png", png)}).status_code == 401


def test_keys_from_file_and_environment(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# ward 7 viewer\nfile-key-aaaaaaaaaaaaaaaa\n\n  file-key-bbbbbbbbbbbbbbbb  \n")
    keys = load_api_keys(keys_file, env={"MEDSIGHT_API_KEYS": "env-key-cccccccccccccccc, file-key-aaaaaaaaaaaaaaaa"})
    assert keys == ["env-key-cccccccccccccccc", "file-key-aaaaaaaaaaaaaaaa", "file-key-bbbbbbbbbbbbbbbb"]
    assert load_api_keys(None, env={}) == []


def test_a_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the API key file.*one key per line"):
        load_api_keys(tmp_path / "nope.txt", env={})


def test_key_checks() -> None:
    keys = ["first-key-0123456789", "second-key-0123456789"]
    assert key_is_valid("second-key-0123456789", keys)
    assert not key_is_valid("second-key-012345678", keys)
    assert not key_is_valid(None, keys) and not key_is_valid("", keys)
    assert not key_is_valid("anything", [])
    assert key_from_headers({"x-api-key": " k1 "}) == "k1"
    assert key_from_headers({"authorization": "bearer k2"}) == "k2"
    assert key_from_headers({"authorization": "Basic k3"}) is None


@pytest.mark.parametrize(
    ("keys", "no_auth", "host", "message"),
    [
        ([], False, "127.0.0.1", "no API key is configured.*--api-keys FILE.*MEDSIGHT_API_KEYS"),
        ([], True, "0.0.0.0", "--no-auth is only allowed on a loopback host"),
        ([KEY], True, "192.168.1.20", "loopback"),
        (["short"], False, "0.0.0.0", "shorter than 16 characters"),
    ],
)
def test_refuses_to_start_unprotected(keys, no_auth: bool, host: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_auth_settings(keys=keys, no_auth=no_auth, host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_no_auth_is_fine_on_loopback(host: str) -> None:
    check_auth_settings(keys=[], no_auth=True, host=host)


def test_create_app_checks_the_settings_too(tiny_bundle: Path) -> None:
    from medsight.serve.app import ServeSettings, create_app

    with pytest.raises(ConfigError, match="no API key"):
        create_app(ServeSettings(bundle=tiny_bundle))
