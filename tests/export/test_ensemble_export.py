"""Exporting a classification fold ensemble: one ONNX graph (and one TorchScript module) holding every member."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from class_ensemble import (
    TEMPERATURE,
    class_ensemble,
    member_probabilities,
    phantom_files,
    prepared,
    sigmoid_ensemble,
    with_flips,
)

from medsight.bundle import load_bundle
from medsight.config import PreprocessConfig
from medsight.export.exporter import PARITY_TOLERANCE, export_bundle
from medsight.inference.onnx_backend import onnx_session
from medsight.inference.predictor import Predictor


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return class_ensemble(tmp_path_factory)


def _inputs(built, folder: Path, fmt: str) -> tuple[np.ndarray, torch.Tensor]:
    """Six phantoms as the exported graph takes them (its normalisation inside, as export.json records)
    and as the bundle's own preprocessing gives them (normalised: what the networks see)."""
    record = json.loads((folder / "export.json").read_text())["formats"][fmt]
    files = phantom_files(built.data)
    graph_input = prepared(files, PreprocessConfig.model_validate(record["input_preprocess"])).numpy()
    return graph_input, prepared(files, load_bundle(folder).preprocess)


@pytest.mark.parametrize("flips", [[], [[-1]]], ids=["members", "members-and-flips"])
def test_onnx_is_one_graph_whose_probabilities_are_the_members_mean(built, tmp_path: Path, flips) -> None:
    import onnx

    folder = with_flips(built.bundle, tmp_path / "model", flips) if flips else \
        shutil.copytree(built.bundle, tmp_path / "model")
    record = export_bundle(bundle=folder, fmt="onnx", progress=False)
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["model.onnx"]
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["probabilities", "logits"]
    assert record["parity"]["max_abs_diff"] <= PARITY_TOLERANCE and record["parity"]["samples"] == 10
    assert "fold ensemble: the 2 member networks (compact_cnn)" in " ".join(record["preprocessing"]["in_graph"])
    graph_input, normalised = _inputs(built, folder, "onnx")
    by_hand = member_probabilities(built.members, normalised, flips)
    exported = onnx_session(folder / "model.onnx", threads=1).run(["probabilities"], {"image": graph_input})[0]
    np.testing.assert_allclose(exported, by_hand, atol=PARITY_TOLERANCE)
    served = Predictor(folder)  # auto: the current ONNX export
    assert served.backend == "onnx"
    np.testing.assert_allclose(served.predict_arrays(graph_input), by_hand, atol=PARITY_TOLERANCE)


def test_torchscript_is_one_module_with_the_same_probabilities(built, tmp_path: Path) -> None:
    from medsight.export.torchscript_export import load_torchscript

    folder = shutil.copytree(built.bundle, tmp_path / "model")
    record = export_bundle(bundle=folder, fmt="torchscript", progress=False)
    assert record["parity"]["max_abs_diff"] <= PARITY_TOLERANCE
    graph_input, normalised = _inputs(built, folder, "torchscript")
    with torch.inference_mode():
        probabilities, _ = load_torchscript(folder / "model.torchscript.pt")(torch.from_numpy(graph_input))
    np.testing.assert_allclose(probabilities.numpy(), member_probabilities(built.members, normalised),
                               atol=PARITY_TOLERANCE)


def test_a_sigmoid_ensemble_exports_the_logit_of_its_members_mean_probability(built, tmp_path: Path) -> None:
    folder, nets = sigmoid_ensemble(built.bundle, tmp_path / "model")
    record = export_bundle(bundle=folder, fmt="onnx", progress=False)
    assert record["parity"]["max_abs_diff"] <= PARITY_TOLERANCE
    assert "the logit of the mean of their sigmoid probabilities" in " ".join(record["preprocessing"]["in_graph"])
    graph_input, normalised = _inputs(built, folder, "onnx")
    exported = onnx_session(folder / "model.onnx", threads=1).run(["probabilities"], {"image": graph_input})[0]
    with torch.no_grad():
        mean = torch.stack([torch.sigmoid(net(normalised)[:, 0].double()) for net in nets]).mean(dim=0)
    positive = torch.sigmoid(torch.log(mean / (1 - mean)) / TEMPERATURE).numpy()
    np.testing.assert_allclose(exported, np.stack([1 - positive, positive], axis=1), atol=PARITY_TOLERANCE)
