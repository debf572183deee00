"""DCGAN: a few training steps on tiny data, sampling with a label, resume, quality figures, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from medsight.errors import BundleError, ConfigError

TINY = {"width": 8, "latent_dim": 8, "batch_size": 8, "progress": False}


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train / 8 val 28x28 images: class 0 a bright square, class 1 a bright disc."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:28, :28]

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 2
        square = (abs(yy - 14) < 6) & (abs(xx - 14) < 6)
        disc = (yy - 14) ** 2 + (xx - 14) ** 2 < 36
        out = np.stack([np.where(disc if k else square, 200, 30) + rng.integers(0, 20, (28, 28)) for k in labels])
        return out.astype(np.uint8), labels[:, None].astype(np.uint8)

    path = tmp_path_factory.mktemp("npz") / "tiny.npz"
    (ti, tl), (vi, vl) = images(24), images(8)
    np.savez(path, train_images=ti, train_labels=tl, val_images=vi, val_labels=vl)
    return path


@pytest.fixture(scope="module")
def trained_gan(tiny_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medsight.gan.dcgan import train_dcgan

    out = tmp_path_factory.mktemp("gan")
    train_dcgan(tiny_npz, out=out, size=(28, 28), epochs=2, seed=0, **TINY)
    return out


def test_training_writes_generator_folder_and_checkpoint(trained_gan: Path) -> None:
    info = json.loads((trained_gan / "generator" / "gan.json").read_text())
    assert info["kind"] == "dcgan"
    assert info["size"] == [28, 28] and info["channels"] == 1
    assert info["label_names"] == ["0", "1"]
    assert info["provenance"]["n_train"] == 20  # the train split less the default 15% test: never val or test
    assert info["provenance"]["epochs"] == 2
    assert (trained_gan / "generator" / "generator.safetensors").is_file()
    assert (trained_gan / "checkpoints" / "last.safetensors").is_file()
    history = json.loads((trained_gan / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(np.isfinite(row["d_loss"]) and np.isfinite(row["g_loss"]) for row in history)


def test_resume_continues_from_the_last_epoch(trained_gan: Path, tiny_npz: Path, tmp_path: Path) -> None:
    import shutil

    from medsight.gan.dcgan import train_dcgan

    out = tmp_path / "gan"
    shutil.copytree(trained_gan, out)
    train_dcgan(tiny_npz, out=out, size=(28, 28), epochs=3, seed=0, resume=True, **TINY)
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[:2] == json.loads((trained_gan / "history.json").read_text())
    assert json.loads((out / "generator" / "gan.json").read_text())["provenance"]["epochs"] == 3


def test_sample_with_a_label_gives_n_images_of_the_right_size(trained_gan: Path) -> None:
    from medsight.gan.dcgan import sample_images

    images = sample_images(trained_gan / "generator", n=5, label="1", seed=3)
    assert images.shape == (5, 1, 28, 28)
    assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_array_equal(images, sample_images(trained_gan / "generator", n=5, label=1, seed=3))
    assert not np.array_equal(images, sample_images(trained_gan / "generator", n=5, label="1", seed=4))


def test_cli_sample_writes_labelled_pngs(trained_gan: Path, tmp_path: Path) -> None:
    from medsight.cli import gan_cmd

    app = typer.Typer()
    app.add_typer(gan_cmd.app, name="gan")
    result = CliRunner().invoke(app, ["gan", "sample", str(trained_gan / "generator"), "--n", "4", "--label", "0",
                                      "--out", str(tmp_path / "png")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "png").glob("*.png"))
    assert [f.name for f in files] == ["0_0000.png", "0_0001.png", "0_0002.png", "0_0003.png"]
    assert Image.open(files[0]).size == (28, 28)
    bad = CliRunner().invoke(app, ["gan", "sample", str(trained_gan / "generator"), "--label", "cat",
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "not a label of this generator" in bad.output


def test_unknown_label_and_bad_folder_are_clear_errors(trained_gan: Path, tmp_path: Path) -> None:
    from medsight.gan.dcgan import sample_images

    with pytest.raises(ConfigError, match=r"labels: \['0', '1'\]"):
        sample_images(trained_gan / "generator", n=2, label="tumour")
    with pytest.raises(BundleError, match="not a generator folder"):
        sample_images(tmp_path, n=2, label="0")
    (tmp_path / "gan.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        sample_images(tmp_path, n=2, label="0")


def test_size_outside_the_supported_range_is_rejected(tiny_npz: Path, tmp_path: Path) -> None:
    from medsight.gan.dcgan import train_dcgan

    with pytest.raises(ConfigError, match="28 to 64 pixels"):
        train_dcgan(tiny_npz, out=tmp_path, size=(16, 16), epochs=1, **TINY)


def test_frechet_distance_of_known_gaussians() -> None:
    from medsight.gan.quality import frechet_distance

    x = np.random.default_rng(0).normal(size=(4000, 3))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, x + [2.0, 0.0, 0.0]) == pytest.approx(4.0, abs=1e-6)  # |mean shift|^2
    assert frechet_distance(x, 2 * x) == pytest.approx(3.0, abs=0.15)  # 3 axes: (sqrt(4) - 1)^2 each


def test_quality_report_with_a_real_data_classifier(small_phantoms: Path, trained_run: Path, tmp_path: Path) -> None:
    from medsight.gan.dcgan import train_dcgan
    from medsight.gan.quality import FD_NAME, gan_report

    gen = train_dcgan(small_phantoms, out=tmp_path / "gan", size=(32, 32), epochs=1, class_names=["normal", "nodule"],
                      **TINY)
    result = gan_report(generator=gen, data=str(small_phantoms), classifier=trained_run / "model",
                        out=tmp_path / "report", tstr_epochs=1, progress=False)
    fd = result["classifier_frechet_distance"]
    assert set(fd) == {"all", "real_train_vs_real_val", "normal", "nodule"}
    assert all(v >= 0 for v in fd.values())
    assert 0.0 <= result["tstr"]["accuracy"] <= 1.0 and result["tstr"]["n_real_val"] == result["n_real_val"]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "not Inception FID" in html and FD_NAME in json.loads((tmp_path / "report" / "quality.json").read_text())[
        "classifier_frechet_distance_note"]
    assert sorted(p.name for p in (tmp_path / "report").glob("samples_*.png")) == ["samples_nodule.png",
                                                                                  "samples_normal.png"]
