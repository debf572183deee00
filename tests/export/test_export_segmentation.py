"""Segmentation export: dynamic batch and spatial axes, parity on patches of real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsight.bundle import Bundle, load_bundle
from medsight.config import ModelConfig, PreprocessConfig
from medsight.export import export_bundle


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 64 px disc images with masks, and an untrained 8-feature U-Net bundle (patch 48) that points at them."""
    from medsight.models import create_model

    root = tmp_path_factory.mktemp("seg")
    rng = np.random.default_rng(3)
    for sub in ("images", "masks"):
        (root / "discs" / sub).mkdir(parents=True)
    yy, xx = np.mgrid[:64, :64]
    for k in range(6):
        cy, cx = rng.integers(12, 52, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(5, 9) ** 2).astype(np.uint8)
        image = np.clip(60 + rng.normal(0, 20, (64, 64)) + 120 * mask, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "discs" / "images" / f"c{k}.png")
        Image.fromarray(mask * 255).save(root / "discs" / "masks" / f"c{k}.png")
    torch.manual_seed(0)
    net = create_model("unet", in_channels=1, num_outputs=2, spatial_dims=2, base_features=8)
    bundle = Bundle(
        task="segmentation", model=ModelConfig(name="unet", kwargs={"base_features": 8}),
        preprocess=PreprocessConfig(size=[48, 48], normalize="none"), label_names=["background", "disc"],
        provenance={"data": str(root / "discs"), "split": {"train": ["c0", "c1", "c2", "c3"], "val": ["c4", "c5"]}},
        state_dict=net.state_dict(),
        segmentation={"normalization": {"scheme": "zscore"}, "overlap": 0.5, "mirror_tta": False,
                      "largest_component": False, "thresholds": {}},
    )
    return bundle.save(root / "model")


def test_onnx_segmenter_has_dynamic_batch_and_spatial_axes(seg_bundle: Path) -> None:
    import onnxruntime as ort

    record = export_bundle(bundle=seg_bundle, fmt="onnx", progress=False)
    assert record["inputs"][0]["shape"] == ["batch", 1, "height", "width"]
    assert record["outputs"][0]["shape"] == ["batch", 2, "height", "width"]
    parity = record["parity"]
    assert parity["max_abs_diff"] <= 1e-4
    assert parity["samples"] == 4 and "2 case(s)" in parity["source"]  # 2 patches from each val case
    assert parity["input_shapes"] == [[1, 48, 48], [1, 96, 48]]
    steps = record["preprocessing"]["outside_graph"]
    assert any("sliding window of [48, 48] patches" in step for step in steps)
    session = ort.InferenceSession(str(seg_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    net = load_bundle(seg_bundle).build_model()
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 32, 64), (3, 1, 64, 80)]:
        x = rng.normal(size=shape).astype(np.float32)
        probs = session.run(["probabilities"], {"image": x})[0]
        with torch.inference_mode():
            expected = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
        assert probs.shape == (shape[0], 2, *shape[2:])
        assert np.abs(probs - expected).max() <= 1e-4


def test_torchscript_segmenter_passes_parity_on_two_patch_shapes(seg_bundle: Path) -> None:
    record = export_bundle(bundle=seg_bundle, fmt="torchscript", progress=False)
    assert record["parity"]["max_abs_diff"] <= 1e-4
    assert record["parity"]["input_shapes"] == [[1, 48, 48], [1, 96, 48]]
    assert json.loads((seg_bundle / "export.json").read_text())["formats"]["torchscript"]["file"] == record["file"]


def test_int8_segmenter_records_the_pooled_patch_dice(seg_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an untrained network: only the bookkeeping is checked here, not the quality of int8
    monkeypatch.setattr("medsight.export.exporter.MAX_INT8_LOSS", 1.0)
    record = export_bundle(bundle=seg_bundle, fmt="onnx", int8=True, progress=False)
    int8 = record["int8"]
    assert int8["metric"] == "dice" and 0.0 <= int8["fp32"] <= 1.0 and 0.0 <= int8["int8"] <= 1.0
    assert int8["loss"] == pytest.approx(int8["fp32"] - int8["int8"])
    assert (seg_bundle / "model.int8.onnx").is_file()


def test_instance_norm_on_a_zero_padded_patch_stays_precise_in_onnx(tmp_path: Path) -> None:
    """ONNX Runtime's own InstanceNormalization drifts ~2e-5 here (1e-3 on a DRIVE U-Net); the rewrite ~1e-6."""
    from torch import nn

    from medsight.export.graph import InferenceGraph
    from medsight.export.onnx_export import export_onnx
    from medsight.export.precise import PreciseInstanceNorm, with_precise_norms
    from medsight.inference.onnx_backend import onnx_session

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.PReLU(), nn.Conv2d(4, 2, 1)).eval()
    precise = with_precise_norms(net)
    assert isinstance(precise[1], PreciseInstanceNorm) and isinstance(net[1], nn.InstanceNorm2d)
    x = np.zeros((2, 1, 256, 256), np.float32)
    x[:, :, :24, :24] = np.random.default_rng(0).normal(0, 1, (2, 1, 24, 24))  # a small image, padded with zeros
    with torch.inference_mode():
        reference = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
        assert np.abs(torch.softmax(precise(torch.from_numpy(x)), dim=1).numpy() - reference).max() <= 1e-6
    export_onnx(InferenceGraph(precise, task="segmentation"), torch.from_numpy(x), tmp_path / "m.onnx",
                dynamic_spatial=True)
    probs = onnx_session(tmp_path / "m.onnx").run(["probabilities"], {"image": x})[0]
    assert np.abs(probs - reference).max() <= 5e-6


def test_the_described_centring_step_is_what_the_segmenter_does(seg_bundle: Path) -> None:
    """A bundle trained with ``segment.centre_logits``: the export names the step after the graph, with its level,
    and that formula, applied with numpy, gives the segmenter's probabilities."""
    from medsight.export.graph import describe_preprocessing
    from medsight.inference.segmenter import Segmenter

    bundle = load_bundle(seg_bundle)
    assert not any("centre" in step for step in describe_preprocessing(bundle)["outside_graph"])
    bundle.segmentation.logit_median = -4.25
    step = next(s for s in describe_preprocessing(bundle)["outside_graph"] if s.startswith("centre"))
    assert "sigmoid(logit(p1) - median(logit(p1)) + -4.25)" in step
    segmenter = Segmenter(bundle)
    raw = np.random.default_rng(0).uniform(0.001, 0.999, (64, 64)).astype(np.float32) ** 3
    logits = np.log(raw) - np.log1p(-raw)
    expected = 1 / (1 + np.exp(-(logits - np.median(logits) - 4.25)))
    centred = segmenter.centred(np.stack([1 - raw, raw]))
    np.testing.assert_allclose(centred[1], expected, atol=1e-5)
