"""Data sets a classifier cannot learn from are refused before anything is trained or written (issue 33, bad input)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.data.phantoms import make_chest_phantoms


def _train(data: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["train", "--task", "classification", "--data", str(data), "--out", str(out),
                                    "--epochs", "1", "--no-progress", *extra])


def test_a_single_class_is_refused_before_training(tmp_path: Path) -> None:
    data = make_chest_phantoms(tmp_path / "data", n_per_class=6, size=16, seed=1)
    shutil.rmtree(data / "nodule")
    result = _train(data, tmp_path / "run")
    assert result.exit_code == 2
    assert f"{data}: has one class ('normal')" in result.output and "at least two" in result.output
    assert not (tmp_path / "run").exists()  # nothing written


def test_fewer_images_in_a_class_than_folds_is_refused_with_the_count(tmp_path: Path) -> None:
    data = make_chest_phantoms(tmp_path / "data", n_per_class=6, size=16, seed=1)
    for file in sorted((data / "nodule").iterdir())[3:]:
        file.unlink()
    result = _train(data, tmp_path / "run", "--folds", "5")
    assert result.exit_code == 2
    assert "'nodule' has 3 images, fewer than the 5 folds" in result.output
    assert "use --folds 3 or fewer" in result.output
    assert not (tmp_path / "run").exists()


def test_patients_not_images_count_for_the_folds(tmp_path: Path) -> None:
    """Four images of the minority class from two patients cannot fill three patient-grouped folds."""
    from medsight.classification.split import check_classes
    from medsight.data.layouts import open_dataset
    from medsight.errors import DatasetError

    data = make_chest_phantoms(tmp_path / "data", n_per_class=4, size=16, seed=1)
    rows = ["path,label,patient_id"]
    for k, file in enumerate(sorted((data / "normal").iterdir())):
        rows.append(f"{file},normal,n{k}")
    for k, file in enumerate(sorted((data / "nodule").iterdir())):
        rows.append(f"{file},nodule,p{k % 2}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    ds = open_dataset(tmp_path / "manifest.csv")
    check_classes(ds, folds=2)  # two patients per class: two folds are fine
    with pytest.raises(DatasetError, match="'nodule' has 2 patients, fewer than the 3 folds"):
        check_classes(ds, folds=3)


def test_a_data_set_that_mixes_modalities_is_refused_with_the_counts(tmp_path: Path) -> None:
    """CT slices and MR slices in one data set: refused before training, each modality with its count."""
    import pydicom

    from medsight.data.ct_phantoms import make_ct_vessel_phantoms

    data = make_ct_vessel_phantoms(tmp_path / "data", n_per_class=3, size=32, seed=0)
    for file in sorted((data / "enhanced").iterdir())[:2]:  # two of the six become MR
        ds = pydicom.dcmread(file)
        ds.Modality = "MR"
        ds.save_as(file)
    result = _train(data, tmp_path / "run")
    assert result.exit_code == 2
    assert f"{data}: mixes modalities (CT: 4, MR: 2 images)" in result.output
    assert "train one model per modality" in result.output
    assert not (tmp_path / "run").exists()


def test_one_modality_and_pictures_pass_the_check(tmp_path: Path) -> None:
    from medsight.data.ct_phantoms import make_ct_vessel_phantoms
    from medsight.data.layouts import open_dataset
    from medsight.data.modalities import check_one_modality, dicom_modalities

    ct = open_dataset(make_ct_vessel_phantoms(tmp_path / "ct", n_per_class=2, size=32, seed=0))
    assert dicom_modalities(ct) == {"CT": 4}
    check_one_modality(ct)
    pictures = open_dataset(make_chest_phantoms(tmp_path / "png", n_per_class=2, size=16, seed=1))
    assert dicom_modalities(pictures) == {}
    check_one_modality(pictures)
