"""Export of other classifier shapes: 3D volumes, a sigmoid head, a CT window outside the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsight.bundle import Bundle
from medsight.config import ModelConfig, PreprocessConfig
from medsight.export import export_bundle


@pytest.fixture(scope="module")
def ct_volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 + 8 small NIfTI volumes in HU (folder per class)."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("ct")
    rng = np.random.default_rng(0)
    for name, shift in (("clear", 0.0), ("dense", 80.0)):
        (root / name).mkdir()
        for k in range(8):
            volume = (rng.normal(-600 + shift, 300, (20, 24, 18))).astype(np.float32)
            nib.save(nib.Nifti1Image(volume, np.diag([2.0, 1.5, 1.5, 1.0])), root / name / f"{k}.nii.gz")
    return root


@pytest.mark.parametrize(
    ("normalize", "window", "first_in_graph"),
    [
        ("ct_window", "lung", "no normalisation (the CT window already mapped the image to [0, 1])"),
        ("zscore", None, "z-score per image and channel"),
    ],
)
def test_3d_sigmoid_classifier_exports_with_parity(
    ct_volumes: Path, tmp_path: Path, normalize: str, window: str | None, first_in_graph: str
) -> None:
    import torch

    from medsight.inference.predictor import Predictor
    from medsight.models import create_model

    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=1, spatial_dims=3, width=8)
    folder = Bundle(
        task="classification", model=ModelConfig(name="compact_cnn", kwargs={"width": 8}, head="sigmoid"),
        preprocess=PreprocessConfig(size=[16, 16, 16], normalize=normalize, window=window, denoise="median"),
        label_names=["clear", "dense"], threshold=0.5, state_dict=net.state_dict(),
        provenance={"data": str(ct_volumes), "data_config": {"val_fraction": 0.5, "test_fraction": 0.0}},
    ).save(tmp_path / "model")
    record = export_bundle(bundle=folder, fmt="onnx", progress=False)
    assert record["inputs"][0]["shape"] == ["batch", 1, 16, 16, 16]
    assert record["outputs"][0]["shape"] == ["batch", 2] and record["outputs"][1]["shape"] == ["batch", 1]
    assert record["parity"]["max_abs_diff"] <= 1e-4 and record["parity"]["samples"] == 8
    steps = record["preprocessing"]
    assert steps["in_graph"][0].startswith(first_in_graph)
    assert steps["in_graph"][-1] == "sigmoid head: probabilities = [1 - sigmoid(logit), sigmoid(logit)]"
    assert any(s.startswith("median filter 3 pixels wide") for s in steps["outside_graph"])
    assert any(s.startswith("CT window lung (center -600.0, width 1500.0)") for s in steps["outside_graph"]) == (
        window is not None
    )
    volume = next((ct_volumes / "dense").glob("*.nii.gz"))
    a = Predictor(folder, backend="torch").predict_file(volume)
    b = Predictor(folder, backend="onnx").predict_file(volume)
    assert a["label"] == b["label"]
    assert b["probabilities"]["dense"] == pytest.approx(a["probabilities"]["dense"], abs=1e-4)
