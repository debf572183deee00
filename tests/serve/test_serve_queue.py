"""The bounded inference queue: a worker holds at most ``max_queue`` requests for its model (running and waiting);
the next is answered 503 with ``Retry-After`` at once, nothing of it is run, and the service goes on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import png_bytes

from medsight.errors import ConfigError


def test_a_full_queue_answers_503_and_the_held_requests_finish(tiny_bundle: Path, api_key: str) -> None:
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=tiny_bundle, api_keys=(api_key,), max_queue=1))
    release, entered, answers = threading.Event(), threading.Event(), {}
    with TestClient(app, headers={"X-API-Key": api_key}) as client:
        service = app.state.service
        classify = service.classify
        calls = []

        def slow_classify(sample):
            calls.append(1)
            entered.set()
            assert release.wait(30), "the test never released the held request"
            return classify(sample)

        service.classify = slow_classify

        def held():
            answers["held"] = client.post("/v1/predict", files={"file": ("a.png", png_bytes(1), "image/png")})

        first = threading.Thread(target=held)
        first.start()
        assert entered.wait(30)  # the first request is on the model: the queue of 1 is full
        busy = client.post("/v1/predict", files={"file": ("b.png", png_bytes(2), "image/png")})
        release.set()
        first.join(30)
        after = client.post("/v1/predict", files={"file": ("c.png", png_bytes(3), "image/png")})
        assert app.state.queue.held == 0
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert busy.json()["error"]["type"] == "BusyError" and "--workers" in busy.json()["error"]["fix"]
    assert answers["held"].status_code == 200 and after.status_code == 200
    assert len(calls) == 2  # the refused request never reached the model


def test_a_queue_below_one_is_refused_before_the_service_starts(tiny_bundle: Path, tmp_path: Path) -> None:
    from medsight.serve.server import _checked_settings

    keys = tmp_path / "keys"
    keys.write_text("k" * 24 + "\n")
    with pytest.raises(ConfigError, match="--max-queue 0"):
        _checked_settings(bundle=tiny_bundle, registry=None, feedback=None, host="127.0.0.1", api_keys_file=keys,
                          no_auth=False, max_body_mb=1, max_voxels=None, auth_failures_per_minute=None,
                          device="cpu", mixed_precision=False, max_queue=0)
