"""Predictor on PyTorch and on the exported ONNX model: same labels, probabilities within 1e-4."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medsight.bundle import load_bundle
from medsight.errors import BundleError, ConfigError
from medsight.inference.predictor import Predictor, predict_to_file


@pytest.fixture(scope="module")
def exported_bundle(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained phantom bundle (the shared one stays without an export), exported to ONNX."""
    from medsight.export import export_bundle

    bundle = tmp_path_factory.mktemp("backends") / "model"
    shutil.copytree(trained_run / "model", bundle)
    export_bundle(bundle=bundle, fmt="onnx", progress=False)
    return bundle


def _files(small_phantoms: Path) -> list[Path]:
    return sorted((small_phantoms / "normal").glob("*.png"))[:6] + sorted((small_phantoms / "nodule").glob("*.png"))[:6]


def test_onnx_and_torch_give_the_same_predictions(exported_bundle: Path, small_phantoms: Path) -> None:
    on_torch = Predictor(exported_bundle, backend="torch")
    on_onnx = Predictor(exported_bundle, backend="onnx")
    assert (on_torch.backend, on_onnx.backend) == ("torch", "onnx")
    for path in _files(small_phantoms):
        a, b = on_torch.predict_file(path), on_onnx.predict_file(path)
        assert a["threshold"] == b["threshold"]
        assert a["label"] == b["label"] or _on_the_threshold(a["probabilities"]["nodule"], a["threshold"])
        for name in on_torch.label_names:
            assert b["probabilities"][name] == pytest.approx(a["probabilities"][name], abs=1e-4)


def _on_the_threshold(probability: float, threshold: float) -> bool:
    """The threshold is a validation case's own probability; that case may flip on a 1e-7 difference."""
    return abs(probability - threshold) <= 1e-4


def test_predict_arrays_agree_on_fully_preprocessed_input(exported_bundle: Path, small_phantoms: Path) -> None:
    from medsight.io import read_image
    from medsight.transforms import preprocess

    on_torch = Predictor(exported_bundle, backend="torch")
    batch = np.stack([preprocess(read_image(p), on_torch.bundle.preprocess) for p in _files(small_phantoms)])
    on_onnx = Predictor(exported_bundle, backend="onnx")
    assert np.abs(on_onnx.predict_arrays(batch) - on_torch.predict_arrays(batch)).max() <= 1e-4


def test_auto_takes_onnx_only_for_a_folder_with_a_current_export(exported_bundle: Path, trained_run: Path) -> None:
    assert Predictor(exported_bundle).backend == "onnx"
    assert Predictor(trained_run / "model").backend == "torch"  # no export there
    assert Predictor(load_bundle(exported_bundle)).backend == "torch"  # a Bundle object has no folder
    onnx_predictor = Predictor(exported_bundle)
    assert type(onnx_predictor.model).__name__ == "CompactCNN"  # the PyTorch network is still there on demand


def test_predict_to_file_with_either_backend(exported_bundle: Path, small_phantoms: Path, tmp_path: Path) -> None:
    import csv

    files = _files(small_phantoms)
    rows = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.csv"
        assert predict_to_file(bundle=exported_bundle, inputs=files, out=out, progress=False, backend=backend) == {
            "ok": len(files), "errors": 0, "skipped": 0}
        with out.open() as handle:
            rows[backend] = list(csv.DictReader(handle))
    for a, b in zip(rows["torch"], rows["onnx"], strict=True):
        assert a["label"] == b["label"] or _on_the_threshold(float(a["prob_nodule"]), float(a["threshold"]))
        assert float(a["prob_nodule"]) == pytest.approx(float(b["prob_nodule"]), abs=1e-4)


def test_onnx_backend_without_an_export_says_how_to_make_one(trained_run: Path) -> None:
    with pytest.raises(BundleError, match=r"has no ONNX export; run `medsight export .* --format onnx`"):
        Predictor(trained_run / "model", backend="onnx")


def test_an_export_of_other_weights_is_never_used(exported_bundle: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    bundle = tmp_path / "model"
    shutil.copytree(exported_bundle, bundle)
    weights = load_file(str(bundle / "weights.safetensors"))
    weights["head.bias"] = weights["head.bias"] + 1.0
    save_file(weights, str(bundle / "weights.safetensors"))
    with pytest.raises(BundleError, match=r"model.onnx was exported from other weights than weights.safetensors"):
        Predictor(bundle, backend="onnx")
    with pytest.warns(UserWarning, match=r"exported from other weights.*using PyTorch"):
        assert Predictor(bundle).backend == "torch"


def test_a_changed_onnx_file_is_refused(exported_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "model"
    shutil.copytree(exported_bundle, bundle)
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes()[:-10])
    with pytest.raises(BundleError, match=r"model.onnx is missing or differs from the one export.json records"):
        Predictor(bundle, backend="onnx")


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"backend": "tensorrt"}, ConfigError, r"backend=tensorrt: unknown backend; use one of auto, torch, onnx"),
        ({"backend": "onnx", "device": "meta"}, ConfigError, r"the ONNX backend runs on the CPU"),
    ],
)
def test_bad_backend_arguments(exported_bundle: Path, kwargs: dict, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        Predictor(exported_bundle, **kwargs)


def test_onnx_backend_needs_the_folder_not_a_bundle_object(exported_bundle: Path) -> None:
    with pytest.raises(BundleError, match=r"an ONNX backend needs the bundle folder"):
        Predictor(load_bundle(exported_bundle), backend="onnx")
