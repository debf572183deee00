"""HD95 and ASSD carry their unit: pixels for pictures (PNG has no spacing), millimetres for NIfTI, no pooled
mean for a set that mixes both; in the evaluate line, metrics.json, per_case.csv and the reports."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medsight.cli.main import app


def _disc(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(10, size - 10, 2)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(4, 7) ** 2).astype(np.uint8)
    image = np.clip(60 + rng.normal(0, 20, (size, size)) + 120 * mask, 0, 255).astype(np.uint8)
    return image, mask


def _save_nifti(array: np.ndarray, path: Path) -> None:
    """A 2D NIfTI with 1 mm pixels; medsight reads its (X, Y) as the PNG's (row, column)."""
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A segmenter trained briefly on PNG discs; the same three test discs as PNG, as NIfTI, and both mixed."""
    root = tmp_path_factory.mktemp("units")
    rng = np.random.default_rng(0)
    folders = {name: root / name for name in ("train", "png", "nifti", "mixed")}
    for folder in folders.values():
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
    for k in range(6):
        image, mask = _disc(rng)
        Image.fromarray(image).save(folders["train"] / "images" / f"t{k}.png")
        Image.fromarray(mask * 255).save(folders["train"] / "masks" / f"t{k}.png")
    for k in range(3):
        image, mask = _disc(rng)
        Image.fromarray(image).save(folders["png"] / "images" / f"c{k}.png")
        Image.fromarray(mask).save(folders["png"] / "masks" / f"c{k}.png")
        _save_nifti(image.astype(np.float32), folders["nifti"] / "images" / f"c{k}.nii.gz")
        _save_nifti(mask, folders["nifti"] / "masks" / f"c{k}.nii.gz")
        source = folders["nifti"] if k == 0 else folders["png"]  # c0 as NIfTI, c1 and c2 as PNG
        for sub in ("images", "masks"):
            for file in (source / sub).glob(f"c{k}.*"):
                shutil.copy(file, folders["mixed"] / sub / file.name)
    result = CliRunner().invoke(app, [
        "train", "--task", "segmentation", "--data", str(folders["train"]), "--out", str(root / "run"),
        "--epochs", "1", "--set", "model.kwargs={base_features: 4}", "--set", "segment.patch_size=[32, 32]",
        "--set", "segment.batch_size=2", "--set", "segment.steps_per_epoch=2", "--set", "data.val_fraction=0.34",
        "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    return {**folders, "bundle": root / "run" / "model", "train_output": result.output}


def test_training_on_pictures_prints_pixels(sets: dict) -> None:
    line = next(row for row in sets["train_output"].splitlines() if row.startswith("val: n="))
    assert " px" in line.split("hd95=")[1] and " mm" not in line


def _evaluate(sets: dict[str, Path], name: str, out: Path) -> tuple[str, dict, str, list[dict]]:
    result = CliRunner().invoke(app, ["evaluate", str(sets["bundle"]), "--data", str(sets[name]), "--out", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    with (out / "per_case.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return result.output, json.loads((out / "metrics.json").read_text()), (out / "report.html").read_text(), rows


def test_png_distances_are_pixels_and_nifti_distances_millimetres(sets: dict[str, Path], tmp_path: Path) -> None:
    png_text, png, png_report, png_rows = _evaluate(sets, "png", tmp_path / "png")
    mm_text, mm, mm_report, mm_rows = _evaluate(sets, "nifti", tmp_path / "nifti")
    assert png["distance_unit"] == "px" and mm["distance_unit"] == "mm"
    assert math.isfinite(png["hd95"]) and png["hd95"] == pytest.approx(mm["hd95"])  # the same pixels, 1 mm apart
    assert f"hd95={png['hd95']:.2f} px" in png_text and " mm" not in png_text
    assert f"hd95={mm['hd95']:.2f} mm" in mm_text
    assert "Distances (HD95, ASSD) are in pixels: these images carry no physical spacing" in png_report
    assert "millimetres" not in png_report and "hd95 (px)" in png_report and "assd (px)" in png_report
    assert "Distances (HD95, ASSD) are in millimetres" in mm_report and "hd95 (mm)" in mm_report
    assert [row["distance_unit"] for row in png_rows] == ["px"] * 3
    assert [row["distance_unit"] for row in mm_rows] == ["mm"] * 3
    assert all(row["distance_unit"] == "px" for row in png["per_case"])


def test_a_set_mixing_pictures_and_nifti_pools_no_distance(sets: dict[str, Path], tmp_path: Path) -> None:
    text, mixed, report, rows = _evaluate(sets, "mixed", tmp_path / "mixed")
    assert mixed["distance_unit"] == "mixed"
    assert mixed["hd95"] is None and mixed["assd"] is None  # null in metrics.json: no mean of px and mm
    assert all(entry["metrics"]["hd95"]["mean"] is None for entry in mixed["summary"].values())
    assert mixed["dice"] is not None and mixed["n"] == 3  # the overlap metrics are still pooled
    assert "hd95=n/a (the cases mix px and mm)" in text
    assert "some cases are pictures without physical spacing (pixels) and some carry it (millimetres)" in report
    units = {row["case_id"]: row["distance_unit"] for row in rows}
    assert units == {"c0": "mm", "c1": "px", "c2": "px"}
    assert all(row["foreground_hd95"] != "" for row in rows)  # each case keeps its own distances


def test_three_cases_are_too_few_to_read_the_uncertainty_correlation(sets: dict[str, Path], tmp_path: Path) -> None:
    _, metrics, report, _ = _evaluate(sets, "png", tmp_path / "png")
    assert metrics["uncertainty"]["n"] == 3
    assert metrics["uncertainty"]["reading"] == "too few cases to judge: 3, fewer than the 10 needed"
    assert "too few cases to judge: 3, fewer than the 10 needed" in report
    assert "the more uncertain cases are" not in report


def test_the_cv_report_labels_distances_with_the_folds_unit(tmp_path: Path) -> None:
    from medsight.classification.evaluate import aggregate_folds

    keys = ("dice", "hd95", "assd")
    folds = [{"n": 3, "dice": 0.8, "hd95": 2.0, "assd": 0.5, "distance_unit": "px"},
             {"n": 3, "dice": 0.9, "hd95": 4.0, "assd": 1.5, "distance_unit": "px"}]
    summary = aggregate_folds(folds, tmp_path / "px", title="px", keys=keys)
    assert summary["distance_unit"] == "px" and summary["hd95"] == pytest.approx(3.0)
    assert "hd95 (px)" in (tmp_path / "px" / "cv_report.html").read_text()
    folds[1]["distance_unit"] = "mm"
    summary = aggregate_folds(folds, tmp_path / "mixed", title="mixed", keys=keys)
    assert summary["distance_unit"] == "mixed" and summary["dice"] == pytest.approx(0.85)
    assert math.isnan(summary["hd95"]) and math.isnan(summary["assd"])
    written = json.loads((tmp_path / "mixed" / "cv_metrics.json").read_text())
    assert written["hd95"] is None and written["metrics"]["hd95"]["per_fold"] == [2.0, 4.0]
    assert "HD95 and ASSD have no mean" in (tmp_path / "mixed" / "cv_report.html").read_text()
