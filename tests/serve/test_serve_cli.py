"""`medsight serve`: refuses to start unprotected, and serves with several uvicorn workers."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
import typer
from live_server import live_service
from typer.testing import CliRunner

from medsight.cli.serve_cmd import serve

KEY = "cli-key-0123456789abcdef"


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


def test_two_workers_each_load_the_model_once(tiny_bundle: Path, png: bytes, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    with (live_service(tiny_bundle, keys, "--workers", "2") as service,
          httpx2.Client(base_url=service.base, headers={"X-API-Key": KEY}, timeout=30) as client):
        answers = [client.post("/v1/predict", files={"file": ("a.png", png)}) for _ in range(6)]
        assert all(a.status_code == 200 for a in answers)
        assert len({a.json()["label"] for a in answers}) == 1
        for _ in range(6):  # whichever worker answers has loaded the model exactly once
            assert "medsight_model_loads_total 1\n" in client.get("/metrics").text
        assert httpx2.get(f"{service.base}/metrics").status_code == 401
    output = service.output
    assert output.count("model loaded: classification compact_cnn") == 2  # one line per worker
    assert "Doe_Jane" not in output
