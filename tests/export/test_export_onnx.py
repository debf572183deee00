"""`medsight export`: ONNX (fp32 + int8) and TorchScript of a trained classifier, checked on real images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from medsight.cli.export_cmd import export
from medsight.hashing import file_sha256


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("export")(export)
    app.command("unused")(lambda: None)  # two commands, so "export" stays a subcommand name
    return app


@pytest.fixture(scope="module")
def stripes_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Horizontal vs vertical stripes (24 + 24 noisy 32 px PNGs) and a 2-epoch compact_cnn run on them.

    The classes separate completely (val AUC 1.0), so the int8 AUC cannot move by chance.
    """
    from medsight.config import load_config
    from medsight.workflows.train import run_training

    root = tmp_path_factory.mktemp("stripes")
    rng = np.random.default_rng(0)
    for name, axis in (("horizontal", 0), ("vertical", 1)):
        (root / "data" / name).mkdir(parents=True)
        for k in range(24):
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * np.arange(32) / rng.integers(4, 9) + rng.uniform(0, 6.3))
            image = np.repeat(wave[:, None], 32, 1) if axis == 0 else np.repeat(wave[None, :], 32, 0)
            pixels = np.clip(image * 160 + 40 + rng.normal(0, 25, (32, 32)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "data" / name / f"{name}_{k}.png")
    cfg = load_config(recipe="demo", overrides={
        "data.path": str(root / "data"), "data.class_names": ["horizontal", "vertical"],
        "preprocess.size": [32, 32], "preprocess.normalize": "minmax",
        "train.epochs": 2, "train.batch_size": 16, "eval.bootstrap": 0,
    })
    run_training(cfg, out=root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def exported(stripes_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the bundle exported with `medsight export BUNDLE --format onnx --int8`, and the output."""
    bundle = tmp_path_factory.mktemp("onnx") / "model"
    shutil.copytree(stripes_run / "model", bundle)
    result = CliRunner().invoke(_cli(), ["export", str(bundle), "--format", "onnx", "--int8", "--no-progress"])
    assert result.exit_code == 0, result.output
    return bundle, result.output


def _val_images(bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    """The fully preprocessed validation images and the bundle's PyTorch probabilities on them."""
    from medsight.bundle import load_bundle
    from medsight.classification.prepare import load_tensors
    from medsight.config import DataConfig
    from medsight.data.layouts import open_dataset
    from medsight.data.splits import resolve_splits
    from medsight.inference.predictor import Predictor

    model = load_bundle(bundle)
    ds = open_dataset(model.provenance["data"], class_names=model.label_names)
    val = resolve_splits(ds, DataConfig.model_validate(model.provenance["data_config"]))["val"]
    tensors, _ = load_tensors(ds, val, model.preprocess, progress=False)
    return tensors.images.numpy(), Predictor(model, backend="torch").predict_tensors(tensors.images)


def test_onnx_export_records_opset_signature_and_parity(exported: tuple[Path, str]) -> None:
    bundle, output = exported
    record = json.loads((bundle / "export.json").read_text())["formats"]["onnx"]
    assert record["opset"] == 20
    assert record["inputs"] == [{"name": "image", "shape": ["batch", 1, 32, 32], "dtype": "float32"}]
    assert [o["name"] for o in record["outputs"]] == ["probabilities", "logits"]
    assert record["outputs"][0]["shape"] == ["batch", 2]
    assert record["sha256"] == file_sha256(bundle / "model.onnx")
    assert record["weights_sha256"] == file_sha256(bundle / "weights.safetensors")
    parity = record["parity"]
    assert parity["samples"] >= 6 and "val split" in parity["source"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["tolerance"] == 1e-4
    assert parity["batch_sizes"][0] == 1
    assert "parity: max |p - p_torch| =" in output and "opset 20" in output
    # minmax moved into the graph; the rest is described for any runtime
    assert record["input_preprocess"]["normalize"] == "none"
    assert record["preprocessing"]["in_graph"][0].startswith("min-max per image")
    assert any(step.startswith("resize to [32, 32]") for step in record["preprocessing"]["outside_graph"])
    assert not list(bundle.glob(".export-*"))  # the staging folder is gone


def test_onnx_runs_batches_of_1_and_5_like_pytorch(exported: tuple[Path, str]) -> None:
    import onnxruntime as ort

    bundle, _ = exported
    images, reference = _val_images(bundle)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.concatenate([images, images])[:5]  # the graph normalises normalised images to themselves
    five = session.run(["probabilities"], {"image": batch})[0]
    one = session.run(["probabilities"], {"image": batch[:1]})[0]
    assert five.shape == (5, 2) and one.shape == (1, 2)
    expected = np.concatenate([reference, reference])[:5]
    assert np.abs(five - expected).max() <= 1e-4
    assert np.abs(one - expected[:1]).max() <= 1e-4
    assert np.allclose(five.sum(axis=1), 1.0, atol=1e-6)


def test_int8_export_prints_and_records_the_metric_loss(exported: tuple[Path, str]) -> None:
    bundle, output = exported
    int8 = json.loads((bundle / "export.json").read_text())["formats"]["onnx"]["int8"]
    assert int8["metric"] == "auc" and int8["fp32"] == pytest.approx(1.0)
    assert int8["loss"] == pytest.approx(int8["fp32"] - int8["int8"])
    assert int8["loss"] <= 0.01 and int8["max_loss"] == 0.01
    assert int8["sha256"] == file_sha256(bundle / "model.int8.onnx")
    line = next(line for line in output.splitlines() if line.startswith("int8:"))
    assert f"val auc {int8['fp32']:.4f} -> {int8['int8']:.4f}, loss {int8['loss_points']:.2f} points" in line
    assert (bundle / "model.int8.onnx").stat().st_size < (bundle / "model.onnx").stat().st_size / 2


def test_torchscript_export_matches_pytorch_at_batch_1_and_5(exported: tuple[Path, str]) -> None:
    bundle, _ = exported
    result = CliRunner().invoke(_cli(), ["export", str(bundle), "--format", "torchscript", "--no-progress"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "export.json").read_text())
    assert set(manifest["formats"]) == {"onnx", "torchscript"}  # the ONNX record is kept
    record = manifest["formats"]["torchscript"]
    assert record["file"] == "model.torchscript.pt" and record["parity"]["max_abs_diff"] <= 1e-4
    module = torch.jit.load(str(bundle / "model.torchscript.pt"))
    images, reference = _val_images(bundle)
    for n in (1, 5):
        batch = np.concatenate([images, images])[:n]
        probs, logits = module(torch.from_numpy(batch))
        assert probs.shape == (n, 2) and logits.shape == (n, 2)
        assert np.abs(probs.numpy() - np.concatenate([reference, reference])[:n]).max() <= 1e-4


def test_a_new_fp32_export_removes_the_stale_int8_model(exported: tuple[Path, str], tmp_path: Path) -> None:
    bundle = tmp_path / "model"
    shutil.copytree(exported[0], bundle)
    result = CliRunner().invoke(_cli(), ["export", str(bundle), "--format", "onnx", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert not (bundle / "model.int8.onnx").exists()
    assert "int8" not in json.loads((bundle / "export.json").read_text())["formats"]["onnx"]


@pytest.mark.parametrize("mode", ["minmax", "zscore", "none"])
def test_in_graph_normalisation_equals_the_numpy_preprocessing(mode: str) -> None:
    from medsight.export.graph import normalize_batch
    from medsight.transforms.intensity import normalize

    rng = np.random.default_rng(1)
    images = [rng.normal(100, 30, (2, 16, 16)), np.full((2, 16, 16), 7.0), rng.uniform(-1000, 400, (2, 16, 16))]
    images[2][1] = 5.0  # one constant channel
    batch = np.stack(images).astype(np.float32)
    ours = normalize_batch(torch.from_numpy(batch), mode).numpy()
    expected = np.stack([normalize(x, mode) for x in batch])
    assert np.abs(ours - expected).max() <= 1e-5


def test_export_json_describes_the_temperature_the_graph_divides_the_logits_by(
    exported: tuple[Path, str], tmp_path: Path
) -> None:
    """A calibrated bundle (T = 2.5): the graph's 'probabilities' are softmax(logits / T), which the predictor
    and the threshold use, and export.json says so; without a temperature it says that and why."""
    import onnxruntime as ort

    from medsight.inference.predictor import Predictor

    plain = json.loads((exported[0] / "export.json").read_text())
    assert plain["temperature"] is None and plain["formats"]["onnx"]["calibration"]["in_graph"] is False
    assert plain["formats"]["onnx"]["calibration"]["why"].startswith("not fitted: ")  # 48 images: too few
    bundle = tmp_path / "model"
    shutil.copytree(exported[0], bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["temperature"] = 2.5
    manifest["provenance"]["calibration"] = {"reason": "fitted T = 2.500 lowered the validation NLL 0.5 -> 0.4"}
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(_cli(), ["export", str(bundle), "--format", "onnx", "--no-progress"])
    assert result.exit_code == 0, result.output
    written = json.loads((bundle / "export.json").read_text())
    assert written["temperature"] == 2.5 and written["threshold"] == manifest["threshold"]
    calibration = written["formats"]["onnx"]["calibration"]
    assert calibration["temperature"] == 2.5 and calibration["in_graph"] is True
    assert calibration["how"].startswith("the graph divides the logits by T = 2.5 before the softmax, so "
                                         "'probabilities' are calibrated and the threshold applies to them")
    assert calibration["why"] == "fitted T = 2.500 lowered the validation NLL 0.5 -> 0.4"
    steps = written["formats"]["onnx"]["preprocessing"]
    assert "temperature scaling: logits / 2.5 before the head" in steps["in_graph"][2]
    assert steps["after_graph"][0].endswith("(the calibrated probability)")
    images, _ = _val_images(bundle)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    probs, logits = session.run(["probabilities", "logits"], {"image": images})
    scaled = np.exp(logits / 2.5 - (logits / 2.5).max(axis=1, keepdims=True))
    assert np.abs(probs - scaled / scaled.sum(axis=1, keepdims=True)).max() <= 1e-5
    torch_probs = Predictor(bundle, backend="torch").predict_arrays(images)
    assert np.abs(probs - torch_probs).max() <= 1e-4  # what medsight itself predicts with T = 2.5
