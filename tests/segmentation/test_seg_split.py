"""Segmentation cases are split by the one splitter (data/splits.py), grouped by patient, and
``medsight plan`` plans the samples training plans."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from disc_images import write_disc_folder
from phi_dicom import phi_dicom_bytes
from PIL import Image

from medsight.config import load_config
from medsight.data.seg_layouts import SegItem, open_seg_dataset
from medsight.errors import ConfigError
from medsight.segmentation.cases import split_cases, training_set
from medsight.segmentation.plan import read_plan
from medsight.workflows.plan import plan_dataset

#: 12 cases of 5 patients: p0 has cases 0-3, p1 cases 4-6, p2 cases 7-8, p3 cases 9-10, p4 case 11
PATIENT_OF_CASE = ["p0"] * 4 + ["p1"] * 3 + ["p2"] * 2 + ["p3"] * 2 + ["p4"]


def _cfg(data: Path | None = None, **overrides):
    return load_config(overrides={"task": "segmentation", "data.path": str(data or "unused"), **overrides})


def _assert_patients_never_straddle(items: list[SegItem]) -> None:
    """Every split and every fold of 2..5 keeps each patient's cases on one side, for several seeds."""
    patient = [item.patient_id for item in items]
    assert all(patient)
    for seed in range(4):
        for overrides in ({"data.val_fraction": 0.2}, {"data.val_fraction": 0.5},
                          *({"data.folds": k, "data.fold": f} for k in range(2, 6) for f in range(k))):
            train, val = split_cases(items, _cfg(**{"train.seed": seed, **overrides}))
            assert sorted(train + val) == list(range(len(items))) and val and train
            assert not {patient[i] for i in train} & {patient[i] for i in val}, (seed, overrides)
    folds = [split_cases(items, _cfg(**{"data.folds": 5, "data.fold": f}))[1] for f in range(5)]
    assert sorted(i for val in folds for i in val) == list(range(len(items)))  # each case validated once


def test_a_patients_cases_never_straddle_train_and_val_with_a_patients_csv(tmp_path: Path) -> None:
    data = write_disc_folder(tmp_path / "discs", n=12, size=32)
    rows = "".join(f"case{k:02d},{p}\n" for k, p in enumerate(PATIENT_OF_CASE))
    (data / "patients.csv").write_text("case_id,patient_id\n" + rows)
    items = open_seg_dataset(data).items
    assert [item.patient_id for item in items] == PATIENT_OF_CASE
    _assert_patients_never_straddle(items)
    with pytest.raises(ConfigError, match=r"data.folds=6: there are only 5 patients; use at most 5 folds"):
        split_cases(items, _cfg(**{"data.folds": 6}))


def test_a_patients_cases_never_straddle_train_and_val_with_an_msd_patient_id(tmp_path: Path) -> None:
    data = write_disc_folder(tmp_path / "discs", n=12, size=32)
    training = [{"image": f"images/case{k:02d}.png", "label": f"masks/case{k:02d}.png", "patient_id": p}
                for k, p in enumerate(PATIENT_OF_CASE)]
    (data / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "disc"}, "training": training}))
    items = open_seg_dataset(data).items
    assert [item.patient_id for item in items] == PATIENT_OF_CASE
    _assert_patients_never_straddle(items)


def test_a_patients_cases_never_straddle_train_and_val_by_dicom_patient_id(tmp_path: Path) -> None:
    """The DICOM PatientID is read when the set is opened and kept only as a hash."""
    import pydicom

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = np.zeros((16, 16), np.uint8)
    mask[4:9, 4:9] = 255
    for k, patient in enumerate(PATIENT_OF_CASE):
        ds = pydicom.dcmread(io.BytesIO(phi_dicom_bytes(np.full((16, 16), k, np.uint8))))
        ds.PatientID = f"MRN-{patient}"
        ds.save_as(tmp_path / "images" / f"case{k:02d}.dcm")
        Image.fromarray(mask).save(tmp_path / "masks" / f"case{k:02d}.png")
    items = open_seg_dataset(tmp_path).items
    expected = ["dicom:" + hashlib.sha256(f"MRN-{p}".encode()).hexdigest()[:16] for p in PATIENT_OF_CASE]
    assert [item.patient_id for item in items] == expected
    assert not any("MRN" in repr(item) for item in items)
    _assert_patients_never_straddle(items)


def test_a_dicom_seg_case_gets_its_patient_from_the_seg(shared_data: Path, tmp_path: Path) -> None:
    import pydicom

    source = shared_data / "dicom" / "dcmqi" / "segmentations"
    for file in (source / "ct-3slice").iterdir():
        shutil.copy(file, tmp_path / file.name)
    shutil.copy(source / "liver.dcm", tmp_path / "liver.dcm")
    patient = str(pydicom.dcmread(source / "liver.dcm", stop_before_pixels=True).PatientID)
    (item,) = open_seg_dataset(tmp_path).items
    assert item.patient_id == "dicom:" + hashlib.sha256(patient.encode()).hexdigest()[:16]


@pytest.mark.parametrize(("n", "seed", "overrides", "val"), [
    (40, 0, {"data.val_fraction": 0.2}, [2, 3, 4, 11, 23, 24, 27, 34]),
    (6, 0, {"data.val_fraction": 0.34}, [2, 3]),
    (10, 3, {"data.val_fraction": 0.0}, [9]),
    (10, 0, {"data.folds": 3, "data.fold": 1}, [3, 5, 9]),
])
def test_without_patient_ids_the_split_is_the_seeded_permutation_as_before(n, seed, overrides, val) -> None:
    """Each case its own patient: ``default_rng(train.seed).permutation(n)`` cut in order, validation
    first (at least one case), as segmentation split before it used data/splits.py."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = len(val)
    expected = sorted(np.array_split(order, 3)[1]) if "data.folds" in overrides else sorted(order[:n_val])
    assert val == expected
    items = [SegItem(f"c{i}", f"c{i}.png", f"m{i}.png") for i in range(n)]
    train, got = split_cases(items, _cfg(**{"train.seed": seed, **overrides}))
    assert got == val and train == sorted(set(range(n)) - set(val))


def test_medsight_plan_writes_the_plan_training_uses(tmp_path: Path) -> None:
    """RGB pictures: training plans the grey (preprocess.channels=1) samples; so does ``medsight plan``."""
    data = tmp_path / "rgb"
    write_disc_folder(data, n=4, size=32)
    for file in (data / "images").iterdir():
        grey = np.asarray(Image.open(file))
        Image.fromarray(np.stack([grey, grey // 2, 255 - grey], axis=-1)).save(file)
    cfg = _cfg(data, **{"segment.memory_budget_mb": 500, "segment.plan": {"batch_size": 3},
                        "data.class_names": ["background", "disc"]})
    planned = plan_dataset(data=data, out=tmp_path / "plan", config=cfg, progress=False)
    trained = training_set(cfg, plan_dir=tmp_path / "run", progress=False).plan
    assert planned == trained
    assert (tmp_path / "plan" / "plan.json").read_text() == (tmp_path / "run" / "plan.json").read_text()
    assert read_plan(tmp_path / "run" / "plan.json") == trained
    assert json.loads((tmp_path / "plan" / "fingerprint.json").read_text())["n_channels"] == 1
    assert trained.batch_size == 3 and trained.memory_budget_mb == 500
    assert trained.label_names == {"0": "background", "1": "disc"}
