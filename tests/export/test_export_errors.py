"""`medsight export` on bad input: one clear error, and the bundle folder left exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from medsight.bundle import Bundle
from medsight.cli.export_cmd import export
from medsight.config import ModelConfig, PreprocessConfig
from medsight.errors import BundleError, ConfigError, DatasetError
from medsight.export import ExportError, export_bundle


@pytest.fixture
def untrained(tmp_path: Path) -> Path:
    """An untrained 2-class compact_cnn bundle whose provenance points at 10 + 10 small PNGs."""
    import torch

    from medsight.models import create_model

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for k in range(10):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "data" / name / f"{k}.png")
    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2, width=8)
    bundle = Bundle(
        task="classification", model=ModelConfig(name="compact_cnn", kwargs={"width": 8}),
        preprocess=PreprocessConfig(size=[16, 16], normalize="zscore"), label_names=["a", "b"], threshold=0.5,
        provenance={"data": str(tmp_path / "data"), "data_config": {"val_fraction": 0.3, "test_fraction": 0.0}},
        state_dict=net.state_dict(),
    )
    return bundle.save(tmp_path / "model")


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("export")(export)
    app.command("unused")(lambda: None)
    return app


def test_unknown_format_is_a_one_line_error(untrained: Path) -> None:
    before = _listing(untrained)
    result = CliRunner().invoke(_cli(), ["export", str(untrained), "--format", "tflite"])
    assert result.exit_code == 2
    assert "--format tflite: unknown export format; use one of onnx, torchscript" in result.output
    assert "Traceback" not in result.output
    assert _listing(untrained) == before


def test_int8_with_torchscript_says_to_use_onnx(untrained: Path) -> None:
    with pytest.raises(ConfigError, match=r"int8 quantisation is for ONNX, not torchscript; use --format onnx"):
        export_bundle(bundle=untrained, fmt="torchscript", int8=True)


def test_unknown_int8_metric_lists_the_metrics(untrained: Path) -> None:
    with pytest.raises(ConfigError, match=r"--metric kappa: not a classification metric; use one of accuracy"):
        export_bundle(bundle=untrained, fmt="onnx", int8=True, metric="kappa")


def test_missing_bundle_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"nowhere: no bundle.json here"):
        export_bundle(bundle=tmp_path / "nowhere", fmt="onnx")


def test_unreachable_training_data_says_to_pass_data(untrained: Path, tmp_path: Path) -> None:
    (tmp_path / "data").rename(tmp_path / "moved")
    before = _listing(untrained)
    with pytest.raises(DatasetError, match=r"is not reachable; pass --data PATH") as info:
        export_bundle(bundle=untrained, fmt="onnx", progress=False)
    assert str(tmp_path / "data") in str(info.value)
    assert _listing(untrained) == before
    with pytest.raises(DatasetError, match=r"--data .*elsewhere does not exist; pass --data PATH"):
        export_bundle(bundle=untrained, fmt="onnx", data=str(tmp_path / "elsewhere"), progress=False)
    record = export_bundle(bundle=untrained, fmt="onnx", data=str(tmp_path / "moved"), progress=False)
    assert record["parity"]["max_abs_diff"] <= 1e-4 and "moved" in record["parity"]["source"]


def test_data_with_other_classes_is_refused(untrained: Path, tmp_path: Path) -> None:
    (tmp_path / "data" / "b").rename(tmp_path / "data" / "c")
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['c'\] are not among the known classes \['a', 'b'\]"):
        export_bundle(bundle=untrained, fmt="onnx", progress=False)


def test_too_large_int8_loss_fails_with_the_numbers_and_writes_nothing(
    untrained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("medsight.export.exporter.MAX_INT8_LOSS", -1.0)  # any result loses "too much"
    before = _listing(untrained)
    with pytest.raises(ExportError, match=r"val auc drops from \d\.\d{4} \(PyTorch\) to \d\.\d{4} \(int8\): "
                                          r"a loss of -?\d+\.\d\d points, above the -100 allowed") as info:
        export_bundle(bundle=untrained, fmt="onnx", int8=True, progress=False)
    assert "nothing was written" in str(info.value)
    assert _listing(untrained) == before  # no model.onnx, no export.json, no staging folder


def test_failed_parity_writes_nothing(untrained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("medsight.export.exporter.PARITY_TOLERANCE", -1.0)
    before = _listing(untrained)
    with pytest.raises(ExportError, match=r"differ from PyTorch's by up to .* on 6 samples .*above the -1 allowed"):
        export_bundle(bundle=untrained, fmt="torchscript", progress=False)
    assert _listing(untrained) == before


def test_a_failed_export_keeps_the_previous_one(untrained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export_bundle(bundle=untrained, fmt="onnx", progress=False)
    before = _listing(untrained)
    manifest = json.loads((untrained / "export.json").read_text())
    monkeypatch.setattr("medsight.export.exporter.MAX_INT8_LOSS", -1.0)
    with pytest.raises(ExportError):
        export_bundle(bundle=untrained, fmt="onnx", int8=True, progress=False)
    assert _listing(untrained) == before
    assert json.loads((untrained / "export.json").read_text()) == manifest
