"""medsight pretrain: unlabelled images from every reader, SimCLR pieces, supervised and SimCLR weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medsight.config import PreprocessConfig
from medsight.errors import ConfigError, DatasetError
from medsight.models import create_model
from medsight.models.pretrained import load_pretrained
from medsight.workflows.pretrain import collect_unlabelled, nt_xent, run_pretrain, two_views

PRE = PreprocessConfig(size=[16, 16], channels=1, normalize="minmax")


def make_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    # test_images is an object array: reading it with allow_pickle=False would fail, so the test proves it is never read
    np.savez(path, train_images=rng.integers(0, 255, (6, 20, 20), dtype=np.uint8),
             train_labels=np.zeros((6, 1)), val_images=rng.integers(0, 255, (3, 20, 20), dtype=np.uint8),
             test_images=np.array([{"never": "read"}], dtype=object))
    return path


def make_folder(root: Path) -> Path:
    import nibabel as nib
    from PIL import Image

    rng = np.random.default_rng(1)
    (root / "a").mkdir(parents=True)
    (root / "test").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8)).save(root / "a" / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8)).save(root / "test" / "withheld.png")
    nib.save(nib.Nifti1Image(rng.random((20, 20, 5)).astype(np.float32), np.eye(4)), root / "vol.nii.gz")
    (root / "broken.png").write_bytes(b"not a png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_collect_unlabelled_from_npz_and_folders(tmp_path: Path) -> None:
    npz = make_npz(tmp_path / "set.npz")
    folder = make_folder(tmp_path / "images")
    images, info = collect_unlabelled([npz, folder], PRE)
    assert images.shape == (9 + 3 + 5, 1, 16, 16)  # 6 train + 3 val; 3 pictures + 5 NIfTI slices
    assert info["images_per_source"] == {str(npz): 9, str(folder): 8}
    assert [Path(s["file"]).name for s in info["skipped_files"]] == ["broken.png"]
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


@pytest.mark.parametrize(("source", "message"), [("missing_dir", "no such file or folder"),
                                                 ("empty", "no readable 2D image")])
def test_collect_unlabelled_errors(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=message):
        collect_unlabelled([tmp_path / source], PRE)


def test_two_views_are_seeded_and_different() -> None:
    images = torch.rand(4, 1, 16, 16)
    a1, a2 = two_views(images, torch.Generator().manual_seed(5))
    b1, b2 = two_views(images, torch.Generator().manual_seed(5))
    assert a1.shape == a2.shape == (4, 1, 16, 16)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.allclose(a1, a2)


def test_nt_xent_values() -> None:
    z = torch.eye(4) * 10
    # partner similarity 1 / 0.1 = 10, the 6 others 0: -log(e^10 / (e^10 + 6))
    assert float(nt_xent(z, z, temperature=0.1)) == pytest.approx(math.log1p(6 * math.exp(-10)), rel=1e-3)
    same = torch.ones(4, 3)
    assert float(nt_xent(same, same, temperature=0.5)) == pytest.approx(math.log(7))  # 2N-1 equal candidates


def test_simclr_weights_load_without_the_projection_head(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "images")
    info = run_pretrain(data=[folder, make_npz(tmp_path / "set.npz")], out=tmp_path / "pre", mode="simclr",
                        model="compact_cnn", model_kwargs={"width": 4}, size=16, epochs=2, batch_size=8,
                        progress=False)
    assert info["n_images"] == 17 and len(info["history"]) == 2
    assert all(math.isfinite(row["loss"]) for row in info["history"])
    assert json.loads((tmp_path / "pre" / "pretrain.json").read_text())["mode"] == "simclr"
    model = create_model("compact_cnn", in_channels=1, num_outputs=3, spatial_dims=2, width=4)
    report = load_pretrained(model, tmp_path / "pre" / "weights.safetensors")
    assert report.reinitialised == ["head.weight", "head.bias"]
    assert report.unused == [] and report.missing == []
    assert len(report.loaded) == len(model.state_dict()) - 2


def test_supervised_pretraining_copies_the_best_weights(tmp_path: Path, small_phantoms: Path) -> None:
    info = run_pretrain(data=[small_phantoms], out=tmp_path / "pre", mode="supervised", model="compact_cnn",
                        model_kwargs={"width": 4}, size=16, epochs=1, batch_size=16, progress=False)
    assert info["source_metrics"]["n"] > 0
    model = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2, width=4)
    report = load_pretrained(model, tmp_path / "pre" / "weights.safetensors")
    assert report.loaded == list(model.state_dict())


def test_cli_runs_and_reports_errors_in_one_line(tmp_path: Path) -> None:
    import typer

    from medsight.cli.pretrain_cmd import pretrain

    app = typer.Typer()
    app.command("pretrain")(pretrain)
    app.command("noop")(lambda: None)
    folder = make_folder(tmp_path / "images")
    result = CliRunner().invoke(app, ["pretrain", str(folder), "--out", str(tmp_path / "pre"), "--epochs", "1",
                                      "--size", "16", "--kwarg", "width=4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pre" / "weights.safetensors").is_file()
    bad = CliRunner().invoke(app, ["pretrain", str(folder), "--out", str(tmp_path / "x"), "--mode", "byol"])
    assert bad.exit_code == 2
    assert "unknown pretraining mode" in bad.output


def test_supervised_needs_one_data_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="takes one labelled data set"):
        run_pretrain(data=[tmp_path, tmp_path], out=tmp_path / "pre", mode="supervised")
