"""Grad-CAM, Grad-CAM++ and occlusion: right place, every model, model untouched, files written."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.errors import ConfigError
from medsight.explain import capture, deletion_insertion, gradcam, occlusion, saliency
from medsight.models import create_model, list_models


@pytest.fixture(scope="module")
def square_task(tmp_path_factory):
    """Class 'square' has a bright 7x7 square somewhere; class 'plain' has none. Returns data, run, squares.

    No per-image normalisation: a z-score would let the square darken the whole background, a global
    shortcut the network can learn instead of looking at the square (it does: Grad-CAM shows it)."""
    from medsight.config import load_config
    from medsight.workflows.train import run_training

    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    squares = {}
    for label in ("plain", "square"):
        (root / "data" / label).mkdir(parents=True)
        for k in range(60):
            image = rng.normal(80, 12, (32, 32))
            if label == "square":
                r, c = rng.integers(2, 23, 2)
                image[r : r + 7, c : c + 7] += 110
                squares[f"{label}_{k}.png"] = (int(r), int(c))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "data" / label / f"{label}_{k}.png")
    cfg = load_config(recipe="demo", overrides={
        "data.path": str(root / "data"), "preprocess.size": [32, 32], "train.epochs": 8, "eval.bootstrap": 0,
        "train.batch_size": 16, "preprocess.normalize": "none",
        "augment.rotate_deg": 0, "augment.shift": 0, "augment.flip_h": 0, "data.class_names": ["plain", "square"],
    })
    run_training(cfg, out=root / "run", progress=False)
    assert json.loads((root / "run" / "metrics.json").read_text())["auc"] > 0.95  # it learnt the shapes
    return root / "data", root / "run", squares


def test_grad_cam_peaks_inside_the_square_that_decides_the_class(square_task, tmp_path):
    data, run, squares = square_task
    result = CliRunner().invoke(app, ["explain", str(run / "model"), str(data / "square"), "--out", str(tmp_path),
                                      "--target", "square", "--no-progress"])
    assert result.exit_code == 0, result.output
    hits = []
    for name, (r, c) in squares.items():
        heat = np.load(tmp_path / f"{name[:-4]}_gradcam.npy")
        assert heat.shape == (32, 32) and heat.max() == pytest.approx(1.0)
        pr, pc = np.unravel_index(np.argmax(heat), heat.shape)
        hits.append(r - 2 <= pr <= r + 8 and c - 2 <= pc <= c + 8)  # the square, 2 px of slack
    assert np.mean(hits) >= 0.8, np.mean(hits)


def test_faithfulness_report_on_the_val_split(square_task, tmp_path):
    """The report's shape and ranges; that a faithful map beats the random order is shown on a model whose
    evidence is known (test_deletion_of_the_decisive_pixels_drops_the_probability_first)."""
    data, run, _ = square_task
    result = CliRunner().invoke(app, ["explain", str(run / "model"), "--faithfulness", str(data), "--out",
                                      str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "deletion AUC" in result.output and "random" in result.output
    saved = json.loads((tmp_path / "faithfulness.json").read_text())
    assert saved["split"] == "val" and set(saved["methods"]) == {"gradcam", "gradcam++", "occlusion", "random"}
    for values in saved["methods"].values():
        assert values["n"] == 18 and 0 <= values["deletion_auc"] <= 1 and 0 <= values["insertion_auc"] <= 1


def test_explaining_leaves_the_model_exactly_as_it_was():
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, num_outputs=2, spatial_dims=2).eval()
    x = torch.randn(1, 1, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out_before = model(x)
    for method in ("gradcam", "gradcam++", "occlusion"):
        saliency(model, x, method=method, target=1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(x), out_before)


def test_hooks_are_removed_even_when_the_forward_pass_fails():
    model = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2)
    with pytest.raises(RuntimeError), capture(model, model.gradcam_layer):
        model(torch.randn(1, 3, 32, 32))  # wrong channel count
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("name", list_models("classification"))
@pytest.mark.parametrize("dims", [2, 3])
def test_every_classifier_gets_a_map_of_the_input_size(name, dims):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_outputs=2, spatial_dims=dims).eval()
    x = torch.randn(1, 1, *((32,) * dims))
    for plus_plus in (False, True):
        heat = gradcam(model, x, target=1, plus_plus=plus_plus)
        assert heat.shape == tuple(x.shape[2:]) and np.isfinite(heat).all()
        assert heat.min() >= 0.0 and heat.max() <= 1.0


def test_occlusion_finds_the_only_pixels_that_matter():
    class LooksAtCorner(torch.nn.Module):
        def forward(self, x):
            score = x[:, :, :8, :8].mean(dim=(1, 2, 3))
            return torch.stack([-score, score], dim=1)

    x = torch.zeros(1, 1, 32, 32)
    x[..., :8, :8] = 5.0
    heat = occlusion(LooksAtCorner(), x, target=1, patch=4, stride=4)
    assert heat[:8, :8].min() > 0.5 and heat[16:, 16:].max() == 0.0


def test_deletion_of_the_decisive_pixels_drops_the_probability_first():
    class LooksAtCorner(torch.nn.Module):
        def forward(self, x):
            score = 4 * x[:, :, :8, :8].mean(dim=(1, 2, 3))
            return torch.stack([-score, score], dim=1)

    x = torch.zeros(1, 1, 32, 32)
    x[..., :8, :8] = 3.0
    truth_map = np.zeros((32, 32), np.float32)
    truth_map[:8, :8] = 1
    good = deletion_insertion(LooksAtCorner(), x, truth_map, target=1)
    bad = deletion_insertion(LooksAtCorner(), x, 1 - truth_map, target=1)
    assert good[0] < bad[0] and good[1] > bad[1]


def test_3d_raw_map_is_nifti_on_the_volume_grid(tmp_path):
    from medsight.bundle import Bundle
    from medsight.config import ModelConfig, PreprocessConfig

    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=3)
    bundle = Bundle(task="classification", model=ModelConfig(name="compact_cnn"),
                    preprocess=PreprocessConfig(size=[16, 16, 16], normalize="zscore"),
                    label_names=["a", "b"], state_dict=net.state_dict()).save(tmp_path / "model")
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [10, -20, 5]
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 18, 12)).astype(np.float32), affine),
             tmp_path / "vol.nii.gz")
    result = CliRunner().invoke(app, ["explain", str(bundle), str(tmp_path / "vol.nii.gz"), "--method",
                                      "gradcam++", "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    raw = nib.load(tmp_path / "out" / "vol_gradcam++.nii.gz")
    assert raw.shape == (20, 18, 12) and np.allclose(raw.affine, affine)
    assert Image.open(tmp_path / "out" / "vol_gradcam++.png").size == (18, 20)  # the peak slice, RGB overlay


def test_bad_requests_are_clear_and_unreadable_files_get_error_rows(square_task, tmp_path):
    data, run, _ = square_task
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.png").write_bytes(b"nope")
    Image.open(next((data / "square").iterdir())).save(tmp_path / "in" / "ok.png")
    result = CliRunner().invoke(app, ["explain", str(run / "model"), str(tmp_path / "in"), "--out",
                                      str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 3 and "1 failed" in result.output, result.output
    assert result.output.splitlines()[-1] == "1 of 2 files failed (see the error column)"
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader((tmp_path / "out" / "explanations.csv").open())}
    assert rows["broken.png"]["error"] and rows["ok.png"]["overlay"].endswith("ok_gradcam.png")
    for args, words in ([["--method", "lime"], "unknown explanation method"],
                        [["--target", "cat"], "is not one of the model's classes"],
                        [["--layer", "nope"], "is not a layer of this model"]):
        bad = CliRunner().invoke(app, ["explain", str(run / "model"), str(tmp_path / "in" / "ok.png"), "--out",
                                       str(tmp_path / "bad"), *args])
        assert bad.exit_code != 0 and words in bad.output, bad.output
    with pytest.raises(ConfigError, match="unknown explanation method"):
        saliency(torch.nn.Identity(), torch.zeros(1, 1, 4, 4), method="lime", target=0)


def test_a_decoders_own_exception_or_a_volume_for_a_2d_model_is_the_files_error_row(tmp_path, monkeypatch):
    import zlib

    import medsight.io
    from medsight.bundle import Bundle
    from medsight.config import ModelConfig, PreprocessConfig
    from medsight.explain.run import explain_files

    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2)
    bundle = Bundle(task="classification", model=ModelConfig(name="compact_cnn"),
                    preprocess=PreprocessConfig(size=[16, 16], normalize="zscore"), label_names=["a", "b"],
                    state_dict=net.state_dict()).save(tmp_path / "model")
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        pixels = np.random.default_rng(0).integers(0, 255, (20, 24), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "in" / name)
    nib.save(nib.Nifti1Image(np.zeros((20, 18, 12), np.float32), np.eye(4)), tmp_path / "in" / "vol.nii.gz")
    real = medsight.io.read_image

    def choke(path, *args, **kwargs):
        if Path(path).name == "b.png":
            raise zlib.error("Error -3 while decompressing data: invalid stored block lengths")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(medsight.io, "read_image", choke)
    counts = explain_files(bundle=bundle, images=[tmp_path / "in"], method="gradcam", out=tmp_path / "out",
                           progress=False)
    assert counts == {"ok": 2, "errors": 2}
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader((tmp_path / "out" / "explanations.csv").open())}
    assert list(rows) == ["a.png", "b.png", "c.png", "vol.nii.gz"]
    assert rows["b.png"]["error"] == (
        f"{tmp_path / 'in' / 'b.png'}: cannot be read (error: Error -3 while decompressing data: invalid stored block "
        "lengths); check that the file is complete and is the type its name says; re-export it, or leave it out")
    assert rows["vol.nii.gz"]["error"].startswith(
        f"{tmp_path / 'in' / 'vol.nii.gz'}: this model takes 2D images, and this is a 3D volume (20x18x12); pass 2D "
        "slices instead")
    for name in ("a.png", "c.png"):
        assert not rows[name]["error"] and Path(rows[name]["overlay"]).is_file()
