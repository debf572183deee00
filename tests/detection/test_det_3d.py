"""A 3D detector end to end: NIfTI volumes with label masks -> planned ``medsight train --task detection`` ->
``medsight predict`` boxes in voxels and in millimetres.

The set: 16 noise volumes of 20 x 24 x 24 voxels (spacing 1 x 1 x 2 mm), each with one bright 6-voxel cube whose
label mask gives its box. Two epochs cannot teach a detector, so the test checks the 3D path itself: the plan, the
bundle, and that every predicted box lies inside its volume, with its millimetre corners the affine of its voxel
edges.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medsight.cli.main import app

SHAPE = (20, 24, 24)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
SIDE = 6


def _write_cubes(root, n: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.normal(0, 1, SHAPE).astype(np.float32)
        mask = np.zeros(SHAPE, np.uint8)
        a, b, c = (int(rng.integers(0, s - SIDE)) for s in SHAPE)
        image[a:a + SIDE, b:b + SIDE, c:c + SIDE] += 6.0
        mask[a:a + SIDE, b:b + SIDE, c:c + SIDE] = 1
        nib.save(nib.Nifti1Image(image, AFFINE), root / "images" / f"v{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(mask, AFFINE), root / "masks" / f"v{i:03d}.nii.gz")
    return root


@pytest.fixture(scope="module")
def cube_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cubes")
    data = _write_cubes(root / "data")
    run = root / "run"
    result = CliRunner().invoke(app, ["train", "--task", "detection", "--data", str(data), "--out", str(run),
                                      "--time-budget", "1", "--set", "train.epochs=2", "--set", "eval.bootstrap=0",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    return data, run


def test_the_plan_and_the_bundle_are_3d(cube_run):
    _, run = cube_run
    plan = json.loads((run / "plan.json").read_text())
    assert plan["spatial_dims"] == 3 and len(plan["size"]) == 3
    assert all(len(level) == 3 for level in plan["anchor_sizes"])
    assert json.loads((run / "fingerprint.json").read_text())["boxes"]["all"]["n"] == 16  # one cube per volume
    bundle = json.loads((run / "model" / "bundle.json").read_text())
    assert bundle["task"] == "detection" and len(bundle["preprocess"]["size"]) == 3
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]


def test_predict_gives_boxes_inside_the_volume_in_voxels_and_millimetres(cube_run, tmp_path):
    data, run = cube_run
    volume = data / "images" / "v000.nii.gz"
    result = CliRunner().invoke(app, ["predict", str(run / "model"), str(volume), "--out", str(tmp_path / "found"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "found" / "boxes.csv").open()))
    assert rows and all(not row["error"] for row in rows)
    boxed = [row for row in rows if row["x1"]]
    for row in boxed:  # z = the first voxel axis, x = the last
        z1, y1, x1, z2, y2, x2 = (float(row[k]) for k in ("z1", "y1", "x1", "z2", "y2", "x2"))
        assert 0 <= z1 < z2 <= SHAPE[0] and 0 <= y1 < y2 <= SHAPE[1] and 0 <= x1 < x2 <= SHAPE[2]
        # the affine maps voxel index (i, j, k) to (i, j, 2k) mm; a pixel edge e is index e - 0.5
        corners_mm = [(z1 - 0.5), (y1 - 0.5), 2 * (x1 - 0.5), (z2 - 0.5), (y2 - 0.5), 2 * (x2 - 0.5)]
        written = [float(row[k]) for k in ("x1_mm", "y1_mm", "z1_mm", "x2_mm", "y2_mm", "z2_mm")]
        # both are written to 3 decimals: 5e-4 voxel x 2 mm spacing + 5e-4 mm of rounding = 1.5e-3 at most
        assert written == pytest.approx(corners_mm, abs=1.5e-3 + 1e-9)
