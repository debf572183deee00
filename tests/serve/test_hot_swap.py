"""A promote in the registry swaps the served model while requests keep coming: none fails."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

KEY = "test-key-0123456789abcdef"  # the key of the client fixture in conftest.py


def _second_bundle(tiny_bundle: Path, out: Path) -> Path:
    import torch

    from medsight.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    torch.manual_seed(1)
    bundle.state_dict = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                         for k, v in bundle.state_dict.items()}
    return bundle.save(out / "model")


@pytest.fixture
def registry(tiny_bundle: Path, tmp_path: Path):
    from medsight.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "registry")
    reg.register(tiny_bundle)
    reg.register(_second_bundle(tiny_bundle, tmp_path / "run2"), parent=1)
    reg.promote(1)
    return reg


def _serve(registry, poll: float):
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(registry=registry.root, api_keys=(KEY,), registry_poll_s=poll))
    return TestClient(app, headers={"X-API-Key": KEY})


def test_promote_swaps_under_load_without_a_failed_request(registry, png: bytes) -> None:
    versions = {v["version"]: v["hash"] for v in registry.list()}
    assert versions[1] != versions[2]
    seen: list[tuple[int, str]] = []
    stop = threading.Event()
    data = png

    with _serve(registry, poll=0.2) as client:
        def fire() -> None:
            while not stop.is_set():
                answer = client.post("/v1/predict", files={"file": ("a.png", data, "image/png")})
                seen.append((answer.status_code, answer.json().get("model", {}).get("hash", "")))

        threads = [threading.Thread(target=fire) for _ in range(3)]
        for thread in threads:
            thread.start()
        while len(seen) < 6:
            time.sleep(0.05)
        registry.promote(2)  # the watcher sees registry.json change and swaps
        deadline = time.monotonic() + 60
        while not any(h == versions[2] for _, h in seen[-3:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        before = len(seen)
        while len(seen) < before + 6:
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join()
        model = client.get("/v1/model").json()

    statuses = [s for s, _ in seen]
    assert statuses.count(200) == len(seen), f"failed requests: {[s for s in statuses if s != 200]}"
    hashes = [h for _, h in seen]
    assert hashes[0] == versions[1] and hashes[-1] == versions[2]
    first_new = hashes.index(versions[2])
    assert set(hashes[first_new + 3:]) == {versions[2]}  # once swapped, only in-flight requests see the old one
    assert model["version"]["hash"] == versions[2]


def test_admin_reload_and_rollback(registry) -> None:
    with _serve(registry, poll=600) as client:  # no polling within the test: only the explicit reload
        assert client.post("/v1/admin/reload").json()["swapped"] is False
        registry.promote(2)
        answer = client.post("/v1/admin/reload").json()
        assert answer["swapped"] is True and answer["model"]["hash"] == registry.get(2)["hash"]
        registry.rollback()
        assert client.post("/v1/admin/reload").json()["model"]["hash"] == registry.get(1)["hash"]


def test_reload_without_a_registry_is_a_clear_error(client) -> None:
    answer = client.post("/v1/admin/reload")
    assert answer.status_code == 404 and "--registry DIR" in answer.json()["error"]["message"]


def test_empty_registry_is_a_clear_error(tmp_path: Path) -> None:
    from medsight.registry import ModelRegistry, RegistryError

    client = _serve(ModelRegistry(tmp_path / "empty"), poll=1)
    with pytest.raises(RegistryError, match="no production version.*registry promote"), client:
        pass


def test_registry_and_feedback_settings_reach_the_workers(tmp_path: Path) -> None:
    from medsight.serve.settings import SETTINGS_ENV, ServeSettings, settings_from_env, settings_to_env

    settings = ServeSettings(registry=tmp_path / "reg", feedback=tmp_path / "fb", api_keys=(KEY,))
    back = settings_from_env({SETTINGS_ENV: settings_to_env(settings, None), "MEDSIGHT_API_KEYS": KEY})
    assert back == settings and back.bundle is None and back.registry == tmp_path / "reg"


def test_neither_bundle_nor_registry_is_a_clear_error() -> None:
    from medsight.errors import ConfigError
    from medsight.serve.app import ServeSettings, create_app

    with pytest.raises(ConfigError, match="no model to serve.*--registry DIR"):
        create_app(ServeSettings(api_keys=(KEY,)))
