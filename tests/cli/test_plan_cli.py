"""`medsight plan`: fingerprint + plan.json for segmentation data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from medsight.workflows.plan import plan_dataset


def write_msd(root: Path, spacings: list[tuple[float, float, float]]) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i, spacing in enumerate(spacings):
        image = rng.normal(-500, 50, (24, 24, 12)).astype(np.float32)
        label = np.zeros(image.shape, np.uint8)
        label[8:16, 8:16, 4:8] = 1
        image[label == 1] = rng.normal(60, 10, int(label.sum()))
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case{i}.nii.gz")
        training.append({"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/case{i}.nii.gz"})
    (root / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "liver"}, "modality": {"0": "CT"}, "training": training})
    )
    return root


def test_plan_msd_ct(tmp_path: Path) -> None:
    data = write_msd(tmp_path / "msd", [(1.0, 1.0, 2.0), (1.0, 1.0, 3.0), (1.0, 1.0, 2.5)])
    plan = plan_dataset(data=data, out=tmp_path / "plan", progress=False, overrides={"batch_size": 2})
    written = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert written == plan.to_json()
    assert plan.target_spacing == [1.0, 1.0, 2.5]
    assert plan.normalization["scheme"] == "ct"
    low, high = plan.normalization["clip"]
    assert 0 < low < 60 < high < 120  # foreground (liver ~60 HU) percentiles, not the -500 HU background
    assert plan.label_names == {"0": "background", "1": "liver"}
    assert plan.batch_size == 2
    assert json.loads((tmp_path / "plan" / "fingerprint.json").read_text())["n_cases"] == 3


def test_plan_drive_is_2d(shared_data: Path, tmp_path: Path) -> None:
    plan = plan_dataset(data=shared_data / "drive" / "training", out=tmp_path, progress=False)
    assert plan.spatial_dims == 2
    assert all(p % 2 ** plan.depth == 0 for p in plan.patch_size)
    assert plan.label_names["1"] == "vessel"


def test_plan_cli_bad_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "medsight.cli.main", "plan", str(tmp_path / "random"), "--out", str(tmp_path / "p")],
        capture_output=True, text=True,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "random" in result.stderr
    assert not (tmp_path / "p").exists()
