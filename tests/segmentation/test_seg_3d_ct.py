"""3D segmentation on the real CT volume: plan (CT normalisation), train a few iterations, predict a NIfTI."""

import csv
import json
import shutil
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


@pytest.fixture(scope="module")
def ct_run(ct_set, tmp_path_factory) -> Path:
    """A small 3D U-Net trained a few iterations on the body masks, through the CLI."""
    run = tmp_path_factory.mktemp("ct_run") / "run"
    result = CliRunner().invoke(app, [
        "train", "--task", "segmentation", "--data", str(ct_set), "--out", str(run), "--epochs", "3", "--lr", "0.01",
        "--set", "model.kwargs={base_features: 8, depth: 3}", "--set", "segment.patch_size=[48, 48, 16]",
        "--set", "segment.batch_size=2", "--set", "segment.steps_per_epoch=8", "--set", "data.val_fraction=0.5",
        "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    return run


def test_3d_unet_trains_on_ct_and_predicts_a_mask_on_the_source_grid(ct_set, ct_run, tmp_path):
    run = ct_run
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


def test_a_dicom_series_folder_is_segmented_as_one_volume_with_a_dicom_seg(ct_set, ct_run, shared_data, tmp_path):
    from medsight.io.dicom_seg import read_dicom_seg
    from medsight.io.dicom_series import read_dicom_series

    inputs = tmp_path / "in"
    shutil.copytree(shared_data / "dicom" / "dcmqi" / "segmentations" / "ct-3slice", inputs / "abdomen")
    shutil.copy(ct_set / "imagesTr" / "ct_b.nii.gz", inputs / "ct_b.nii.gz")
    mixed = inputs / "mixed"  # two series in one folder: which volume is meant?
    shutil.copytree(shared_data / "dicom" / "dcmqi" / "segmentations" / "ct-3slice", mixed / "a")
    shutil.copytree(shared_data / "dicom" / "dcmqi" / "paramaps" / "pm-example-dcm" / "701-ADCb500", mixed / "b")
    for f in mixed.rglob("*.dcm"):
        f.rename(mixed / f"{f.parent.name}_{f.name}")
    out = tmp_path / "masks"
    result = CliRunner().invoke(app, ["predict", str(ct_run / "model"), str(inputs), "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 3, result.output  # a file failed: every row is written, the exit code says so
    assert "wrote 2 mask(s)" in result.output  # the 3 slices are one volume
    assert "1 of 3 files failed (see the error column)" in result.output  # the folder of two series
    rows = {Path(r["path"]).name: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert sorted(rows) == ["abdomen", "ct_b.nii.gz", "mixed"] and not rows["ct_b.nii.gz"]["dicom_seg"]
    assert "holds 2 series" in rows["mixed"]["error"] and "a folder of its own" in rows["mixed"]["error"]
    assert not rows["mixed"]["mask"] and not list(out.glob("mixed*"))

    series = read_dicom_series(inputs / "abdomen")
    mask = nib.load(rows["abdomen"]["mask"])
    assert rows["abdomen"]["mask"] == str(out / "abdomen_mask.nii.gz")
    assert mask.shape == series.spatial_shape == (3, 512, 512)
    np.testing.assert_allclose(mask.affine, series.affine, atol=1e-6)
    labels = np.asarray(mask.dataobj)
    body = series.array[0] > -400  # HU: the body against the air around it
    assert 2 * (labels.astype(bool) & body).sum() / (labels.sum() + body.sum()) > 0.8  # measured 0.89

    image, seg_labels, names = read_dicom_seg(rows["abdomen"]["dicom_seg"], inputs / "abdomen")
    assert names == {1: "body"}
    np.testing.assert_array_equal(seg_labels, labels)  # the SEG holds the same mask, slice for slice
    assert image.meta["slice_files"] == series.meta["slice_files"]


def test_a_series_highdicom_cannot_encode_keeps_its_nifti_and_gets_an_error_row(ct_run, shared_data, tmp_path,
                                                                              monkeypatch):
    import highdicom

    def refuse(*args, **kwargs):
        raise ValueError("PatientName 'Doe^Jane' differs between the source images")

    monkeypatch.setattr(highdicom.seg, "Segmentation", refuse)
    inputs = tmp_path / "in"
    shutil.copytree(shared_data / "dicom" / "dcmqi" / "segmentations" / "ct-3slice", inputs / "abdomen")
    out = tmp_path / "masks"
    result = CliRunner().invoke(app, ["predict", str(ct_run / "model"), str(inputs), "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 3, result.output
    assert "1 of 1 files failed (see the error column)" in result.output
    (row,) = csv.DictReader((out / "predictions.csv").open())
    assert "could not build a DICOM SEG" in row["error"] and "(ValueError)" in row["error"]
    assert "Doe" not in row["error"] and "Doe" not in result.output  # header values are not repeated
    assert row["mask"] == str(out / "abdomen_mask.nii.gz") and nib.load(row["mask"]).shape == (3, 512, 512)
    assert not (out / "abdomen_seg.dcm").exists()
