"""Pix2Pix: a few training steps on tiny image/mask pairs, translating masks, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from medsight.errors import ConfigError


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 cases of 32x32: a bright disc on a dark background, its mask 0/255."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:32, :32]
    for i in range(6):
        disc = (yy - 10 - 2 * i) ** 2 + (xx - 16) ** 2 < 30
        Image.fromarray(np.where(disc, 220, 40).astype(np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(disc.astype(np.uint8) * 255).save(root / "masks" / f"c{i}_mask.png")
    return root


@pytest.fixture(scope="module")
def trained(pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medsight.gan.pix2pix import train_pix2pix

    out = tmp_path_factory.mktemp("p2p")
    train_pix2pix(pairs, out=out, size=(32, 32), epochs=2, batch_size=3, width=8, progress=False)
    return out


def test_training_writes_a_pix2pix_generator(trained: Path) -> None:
    info = json.loads((trained / "generator" / "gan.json").read_text())
    assert info["kind"] == "pix2pix" and info["size"] == [32, 32]
    assert info["label_names"] == ["background", "foreground"]
    assert info["provenance"]["n_train"] == 6
    assert len(json.loads((trained / "history.json").read_text())) == 2
    assert (trained / "checkpoints" / "last.safetensors").is_file()


def test_translate_gives_one_image_per_mask(trained: Path) -> None:
    from medsight.gan.pix2pix import translate

    masks = np.zeros((3, 32, 32), dtype=np.int64)
    masks[:, 8:20, 8:20] = 1
    images = translate(trained / "generator", masks)
    assert images.shape == (3, 1, 32, 32)
    assert images.min() >= 0.0 and images.max() <= 1.0
    with pytest.raises(ConfigError, match=r"values outside 0..1"):
        translate(trained / "generator", masks * 3)
    with pytest.raises(ConfigError, match=r"\[32, 32\]"):
        translate(trained / "generator", np.zeros((1, 16, 16), dtype=np.int64))


def test_cli_sample_translates_a_mask_folder(trained: Path, pairs: Path, tmp_path: Path) -> None:
    from medsight.cli import gan_cmd

    app = typer.Typer()
    app.add_typer(gan_cmd.app, name="gan")
    runner = CliRunner()
    result = runner.invoke(app, ["gan", "sample", str(trained / "generator"), "--masks", str(pairs / "masks"),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "out").glob("*.png"))
    assert len(files) == 6 and files[0].name == "c0_mask_generated.png"
    assert Image.open(files[0]).size == (32, 32)
    missing = runner.invoke(app, ["gan", "sample", str(trained / "generator"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--masks" in missing.output


def test_label_sampling_from_a_pix2pix_generator_says_to_pass_masks(trained: Path) -> None:
    from medsight.gan.dcgan import sample_images

    with pytest.raises(ConfigError, match="--masks"):
        sample_images(trained / "generator", n=2, label="foreground")


def test_size_not_a_multiple_of_8_is_rejected(pairs: Path, tmp_path: Path) -> None:
    from medsight.gan.pix2pix import train_pix2pix

    with pytest.raises(ConfigError, match="multiples of 8"):
        train_pix2pix(pairs, out=tmp_path, size=(30, 30), epochs=1, progress=False)
