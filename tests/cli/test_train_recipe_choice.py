"""Which recipe ``medsight train`` loads: the one asked for, ``none`` for the defaults, and the
``drive`` recipe for segmentation of a DRIVE folder when neither a recipe nor a config is given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsight.cli.main", *args], capture_output=True, text=True,
                          timeout=600)


#: Keep the drive recipe's run to a few seconds: one fold, one epoch of two steps, no compile.
QUICK = [
    "--no-progress", "--set", "data.folds=1", "--set", "train.epochs=1", "--set", "train.compile=false",
    "--set", "segment.steps_per_epoch=2", "--set", "segment.patch_size=[16, 16]", "--set", "segment.batch_size=2",
    "--set", "segment.mirror_tta=false", "--set", "segment.transpose_tta=false",
]


def _drive_folder(root: Path, cases: int = 4) -> Path:
    """A tiny folder in DRIVE's layout: RGB images, vessel tracings in 1st_manual/, the FOV in mask/."""
    rng = np.random.default_rng(0)
    for folder in ("images", "1st_manual", "mask"):
        (root / folder).mkdir(parents=True)
    for n in range(1, cases + 1):
        vessels = np.zeros((40, 40), np.uint8)
        vessels[:, 10 + n : 13 + n] = 255
        image = rng.integers(0, 60, (40, 40, 3)).astype(np.uint8)
        image[vessels > 0] = 200
        Image.fromarray(image).save(root / "images" / f"{n:02d}_training.png")
        Image.fromarray(vessels).save(root / "1st_manual" / f"{n:02d}_manual1.png")
        Image.fromarray(np.full((40, 40), 255, np.uint8)).save(root / "mask" / f"{n:02d}_training_mask.png")
    return root


@pytest.fixture(scope="module")
def drive_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _drive_folder(tmp_path_factory.mktemp("drive"))


def _config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test_a_drive_folder_trains_the_drive_recipe(drive_folder: Path, tmp_path: Path) -> None:
    result = run_cli("train", "--task", "segmentation", "--data", str(drive_folder), "--out", str(tmp_path / "run"),
                     *QUICK)
    assert result.returncode == 0, result.stderr
    assert "is a DRIVE folder: training the drive recipe" in result.stderr
    cfg = _config(tmp_path / "run")
    assert cfg["name"] == "drive"
    assert cfg["preprocess"]["clahe"] is True and cfg["segment"]["centre_logits"] is True
    assert cfg["model"]["kwargs"]["norm"] == "batch"
    assert cfg["data"]["folds"] == 1 and cfg["train"]["epochs"] == 1  # the flags still win over the recipe
    assert (tmp_path / "run" / "model" / "bundle.json").is_file()


def test_recipe_none_keeps_the_defaults(drive_folder: Path, tmp_path: Path) -> None:
    result = run_cli("train", "--task", "segmentation", "--recipe", "none", "--data", str(drive_folder),
                     "--out", str(tmp_path / "run"), *QUICK)
    assert result.returncode == 0, result.stderr
    assert "DRIVE folder" not in result.stderr
    cfg = _config(tmp_path / "run")
    assert cfg["name"] == "run" and cfg["preprocess"]["clahe"] is False and cfg["segment"]["centre_logits"] is False


def test_a_config_file_or_another_layout_gets_no_recipe(drive_folder: Path, tmp_path: Path) -> None:
    from medsight.cli.train_cmd import _recipe_for

    config = tmp_path / "mine.yaml"
    config.write_text("name: mine\n")
    segmentation = {"task": "segmentation"}
    assert _recipe_for(None, None, str(drive_folder), segmentation) == "drive"
    assert _recipe_for(None, config, str(drive_folder), segmentation) is None  # the user's config says it all
    assert _recipe_for("demo_seg", None, str(drive_folder), segmentation) == "demo_seg"
    assert _recipe_for("none", None, str(drive_folder), segmentation) == "none"  # load_config: no recipe
    assert _recipe_for(None, None, str(drive_folder), {"task": "classification"}) is None
    assert _recipe_for(None, None, str(tmp_path), segmentation) is None  # not a DRIVE folder
