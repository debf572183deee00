"""`medsight serve`: refuses to start unprotected, and serves with several uvicorn workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
import typer
from typer.testing import CliRunner

from medsight.cli.serve_cmd import serve

KEY = "cli-key-0123456789abcdef"
RUN_CLI = "import typer; from medsight.cli.serve_cmd import serve; app = typer.Typer(); app.command()(serve); app()"


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(serve)
    return app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no API key is configured"),
        (["--no-auth", "--host", "0.0.0.0"], "--no-auth is only allowed on a loopback host"),
        (["--api-keys", "missing-keys.txt"], "cannot read the API key file"),
        (["--no-auth", "--workers", "0"], "needs at least one worker"),
        (["--no-auth", "--mixed-precision"], "--mixed-precision: is for segmentation models"),  # a classifier
        (["--no-auth", "--max-voxels", "0"], "must be a positive whole number"),
        (["--no-auth", "--auth-failures-per-minute", "0"], "must be at least 1"),
    ],
)
def test_refuses_to_start_with_a_one_line_error(tiny_bundle: Path, args: list[str], message: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDSIGHT_API_KEYS", raising=False)
    result = CliRunner().invoke(_cli(), [str(tiny_bundle), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_non_ascii_key_is_refused_at_start(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSIGHT_API_KEYS", "schl\u00fcssel-0123456789abcdef")
    result = CliRunner().invoke(_cli(), [str(tiny_bundle)])
    assert result.exit_code == 2 and "outside printable ASCII" in result.output
    assert "schl" not in result.output and "Traceback" not in result.output


def test_mixed_precision_is_refused_for_a_registry_whose_production_model_is_a_classifier(
        tiny_bundle: Path, tmp_path: Path) -> None:
    from medsight.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "registry")
    registry.register(tiny_bundle)
    registry.promote(1)
    index = (registry.root / "registry.json").read_text()
    result = CliRunner().invoke(_cli(), ["--registry", str(registry.root), "--no-auth", "--mixed-precision"])
    assert result.exit_code == 2
    assert "--mixed-precision: is for segmentation models" in result.output
    assert "classification model" in result.output and "Traceback" not in result.output
    assert (registry.root / "registry.json").read_text() == index  # the registry is untouched


def test_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli(), [str(tmp_path), "--no-auth"])
    assert result.exit_code == 2 and "no bundle.json here" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_workers_each_load_the_model_once(tiny_bundle: Path, png: bytes, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MEDSIGHT_API_KEYS"}
    server = subprocess.Popen(
        [sys.executable, "-c", RUN_CLI, str(tiny_bundle), "--port", str(port), "--workers", "2",
         "--api-keys", str(keys)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx2.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the server did not become ready in 90 s"
            time.sleep(0.3)
        with httpx2.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=30) as client:
            answers = [client.post("/v1/predict", files={"file": ("a.png", png)}) for _ in range(6)]
            assert all(a.status_code == 200 for a in answers)
            assert len({a.json()["label"] for a in answers}) == 1
            for _ in range(6):  # whichever worker answers has loaded the model exactly once
                assert "medsight_model_loads_total 1\n" in client.get("/metrics").text
            assert httpx2.get(f"{base}/metrics").status_code == 401
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert output.count("model loaded: classification compact_cnn") == 2  # one line per worker
    assert "Doe_Jane" not in output
