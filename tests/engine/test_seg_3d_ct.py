"""3D segmentation on the real CT volume: plan (CT normalisation), train a few iterations, predict a NIfTI."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medsight.cli.main import app


@pytest.fixture(scope="module")
def ct_set(tmp_path_factory, shared_data) -> Path:
    """A Decathlon-style set of the two halves (along z) of example_ct_sm with its body mask."""
    ct = nib.load(shared_data / "nifti" / "example_ct_sm.nii.gz")
    body = nib.load(shared_data / "nifti" / "example_ct_sm_T300_output.nii.gz")
    root = tmp_path_factory.mktemp("ct") / "ct_body"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for name, part in (("a", slice(0, 15)), ("b", slice(15, 30))):
        nib.save(ct.slicer[:, :, part], root / "imagesTr" / f"ct_{name}.nii.gz")
        nib.save(body.slicer[:, :, part], root / "labelsTr" / f"ct_{name}.nii.gz")
        training.append({"image": f"./imagesTr/ct_{name}.nii.gz", "label": f"./labelsTr/ct_{name}.nii.gz"})
    spec = {"name": "ct body", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "body"},
            "training": training}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_3d_unet_trains_on_ct_and_predicts_a_mask_on_the_source_grid(ct_set, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--task", "segmentation", "--data", str(ct_set), "--out", str(run), "--epochs", "3", "--lr", "0.01",
        "--set", "model.kwargs={base_features: 8, depth: 3}", "--set", "segment.patch_size=[48, 48, 16]",
        "--set", "segment.batch_size=2", "--set", "segment.steps_per_epoch=8", "--set", "data.val_fraction=0.5",
        "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    plan = json.loads((run / "plan.json").read_text())
    assert plan["spatial_dims"] == 3 and plan["normalization"]["scheme"] == "ct"
    low, high = plan["normalization"]["clip"]
    assert -1100 <= low < high <= 3100  # foreground (body) HU percentiles
    manifest = json.loads((run / "model" / "bundle.json").read_text())
    assert manifest["segmentation"]["normalization"] == plan["normalization"]  # replayed at inference

    source = nib.load(ct_set / "imagesTr" / "ct_b.nii.gz")
    result = CliRunner().invoke(app, ["predict", str(run / "model"), str(ct_set / "imagesTr" / "ct_b.nii.gz"),
                                      "--out", str(tmp_path / "masks"), "--no-progress"])
    assert result.exit_code == 0, result.output
    mask = nib.load(tmp_path / "masks" / "ct_b_mask.nii.gz")
    assert mask.shape == source.shape
    assert np.allclose(mask.affine, source.affine)
    truth = np.asarray(nib.load(ct_set / "labelsTr" / "ct_b.nii.gz").dataobj) > 0
    pred = np.asarray(mask.dataobj) > 0
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.8, dice  # the body is an easy, large target: a few steps already find it
