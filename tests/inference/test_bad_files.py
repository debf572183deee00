"""One bad file never stops a batch (issue 31): any exception from one file is that file's one-line error row;
a volume for a 2D model (or the reverse) says so at prediction time; each row carries its decision threshold."""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import medsight.io
from medsight.bundle import Bundle
from medsight.config import ModelConfig, PreprocessConfig
from medsight.errors import ConfigError, InvalidImageError
from medsight.inference.predictor import Predictor, predict_to_file
from medsight.inference.segmenter import Segmenter, segment_row
from medsight.models import create_model


def classifier(folder: Path, dims: int = 2, threshold: float | None = 0.3172) -> Path:
    """An untrained compact CNN classifier bundle (no, yes) with a stored threshold."""
    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=dims)
    return Bundle(task="classification", model=ModelConfig(name="compact_cnn"),
                  preprocess=PreprocessConfig(size=[16] * dims, normalize="zscore"), label_names=["no", "yes"],
                  threshold=threshold, state_dict=net.state_dict()).save(folder)


def segmenter(dims: int) -> Segmenter:
    """An untrained UNet segmenter (background, organ) of 2D images or of volumes."""
    torch.manual_seed(0)
    net = create_model("unet", in_channels=1, num_outputs=2, spatial_dims=dims)
    return Segmenter(Bundle(task="segmentation", model=ModelConfig(name="unet"),
                            preprocess=PreprocessConfig(size=[16] * dims, normalize="none"),
                            label_names=["background", "organ"], state_dict=net.state_dict(),
                            segmentation={"normalization": {"scheme": "zscore"}}))


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """Three 2D PNGs (b.png is the one a decoder will choke on) and a 3D NIfTI volume."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = {}
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(folder / name)
        files[name] = folder / name
    files["vol.nii.gz"] = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(20, 18, 12)).astype(np.float32), np.eye(4)), files["vol.nii.gz"])
    return files


@pytest.fixture
def choking_reader(monkeypatch: pytest.MonkeyPatch):
    """medsight.io.read_image raising a decoding library's own exception (not a MedsightError) for b.png."""
    real = medsight.io.read_image

    def read(path, *args, **kwargs):
        if Path(path).name == "b.png":
            raise zlib.error("Error -3 while decompressing data:\ninvalid stored block lengths")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(medsight.io, "read_image", read)


def test_a_foreign_exception_is_the_files_one_line_error_row_and_the_batch_goes_on(tmp_path, images, choking_reader):
    out = tmp_path / "preds.csv"
    counts = predict_to_file(bundle=classifier(tmp_path / "model"), inputs=[images["a.png"].parent], out=out,
                             progress=False)
    assert counts == {"ok": 2, "errors": 1, "skipped": 0}
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert list(rows) == ["a.png", "b.png", "c.png"]
    assert rows["b.png"]["error"] == (
        f"{images['b.png']}: cannot be read (error: Error -3 while decompressing data: invalid stored block "
        "lengths); check that the file is complete and is the type its name says; re-export it, or leave it out")
    assert rows["b.png"]["label"] == "" and rows["b.png"]["prob_yes"] == ""
    for name in ("a.png", "c.png"):
        assert rows[name]["error"] == "" and rows[name]["label"] in {"no", "yes"}
        assert float(rows[name]["prob_no"]) + float(rows[name]["prob_yes"]) == pytest.approx(1, abs=1e-6)


def test_a_segmenter_gives_the_same_error_row(tmp_path, images, choking_reader):
    row = segment_row(segmenter(2), images["b.png"], tmp_path / "masks")
    assert row["mask"] == "" and "cannot be read (error: Error -3 while decompressing data: invalid" in row["error"]
    assert "\n" not in row["error"] and row["error"].startswith(str(images["b.png"]))
    assert segment_row(segmenter(2), images["a.png"], tmp_path / "masks")["error"] == ""


def test_keyboard_interrupt_still_stops_the_batch(tmp_path, images, monkeypatch):
    def interrupted(path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(medsight.io, "read_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_to_file(bundle=classifier(tmp_path / "model"), inputs=[images["a.png"]], out=tmp_path / "p.csv",
                        progress=False)


def test_a_volume_for_a_2d_classifier_names_the_file_and_2d_slices(tmp_path, images):
    out = tmp_path / "preds.csv"
    predict_to_file(bundle=classifier(tmp_path / "model"), inputs=[images["vol.nii.gz"], images["a.png"]], out=out,
                    progress=False)
    volume, flat = csv.DictReader(out.open())
    assert volume["error"] == (
        f"{images['vol.nii.gz']}: this model takes 2D images, and this is a 3D volume (20x18x12); pass 2D slices "
        "instead: medsight predicts no slice or projection of a volume, so export the slices you want as PNG or "
        "single-frame DICOM files and predict those")
    assert "preprocess.size" not in volume["error"] and flat["error"] == ""


def test_a_2d_image_for_a_3d_classifier_asks_for_volumes(tmp_path, images):
    predictor = Predictor(classifier(tmp_path / "model", dims=3))
    with pytest.raises(InvalidImageError) as err:
        predictor.predict_file(images["a.png"])
    assert str(err.value) == (
        f"{images['a.png']}: this model takes 3D volumes, and this is a 2D image (20x24); pass whole volumes (a NIfTI "
        "or NRRD file, or a multi-frame DICOM), not single slices")
    assert set(predictor.predict_file(images["vol.nii.gz"])["probabilities"]) == {"no", "yes"}


@pytest.mark.parametrize(("dims", "wrong", "words"), [
    (2, "vol.nii.gz", "this model takes 2D images, and this is a 3D volume (20x18x12); pass 2D slices instead"),
    (3, "a.png", "this model takes 3D volumes, and this is a 2D image (20x24); pass whole volumes (a NIfTI or NRRD "
                 "file, a multi-frame DICOM, or a folder of DICOM slices)"),
])
def test_a_segmenter_of_the_other_dimensionality_says_which_it_takes(tmp_path, images, dims, wrong, words):
    model = segmenter(dims)
    row = segment_row(model, images[wrong], tmp_path / "masks")
    assert row["error"].startswith(f"{images[wrong]}: {words}") and row["mask"] == ""
    right = "a.png" if wrong == "vol.nii.gz" else "vol.nii.gz"
    assert segment_row(model, images[right], tmp_path / "masks")["error"] == ""


def test_each_row_carries_the_threshold_that_decided_its_label(tmp_path, images):
    from medsight.inference.predictor import decision_rule

    out = tmp_path / "preds.csv"
    predict_to_file(bundle=classifier(tmp_path / "model", threshold=0.31996), inputs=[images["a.png"].parent],
                    out=out, progress=False)
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "label", "prob_no", "prob_yes", "threshold", "error"]
    for row in rows:
        assert float(row["threshold"]) == pytest.approx(0.31996, abs=1e-12)
        assert row["label"] == ("yes" if float(row["prob_yes"]) >= 0.31996 else "no")
    assert decision_rule(["no", "yes"], 0.31996) == "label yes when prob_yes >= 0.3200 (the threshold column), else no"
    assert decision_rule(["no", "yes"], None) == "label: the most probable class (the threshold column is empty)"
    argmax = tmp_path / "argmax.csv"
    predict_to_file(bundle=classifier(tmp_path / "plain", threshold=None), inputs=[images["a.png"]], out=argmax,
                    progress=False)
    assert next(csv.DictReader(argmax.open()))["threshold"] == ""


def test_resume_retries_a_file_that_failed_and_keeps_the_ones_that_succeeded(tmp_path, images, monkeypatch):
    bundle, out = classifier(tmp_path / "model"), tmp_path / "preds.csv"
    real = medsight.io.read_image

    def still_copying(path, *args, **kwargs):
        if Path(path).name == "b.png":
            raise OSError("b.png is still being copied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(medsight.io, "read_image", still_copying)
    first = predict_to_file(bundle=bundle, inputs=[images["a.png"].parent], out=out, progress=False)
    assert first == {"ok": 2, "errors": 1, "skipped": 0}
    before = {r["path"]: r for r in csv.DictReader(out.open())}
    monkeypatch.setattr(medsight.io, "read_image", real)  # the copy has finished
    again = predict_to_file(bundle=bundle, inputs=[images["a.png"].parent], out=out, progress=False, resume=True)
    assert again == {"ok": 1, "errors": 0, "skipped": 2}
    after = list(csv.DictReader(out.open()))
    assert [Path(r["path"]).name for r in after] == ["a.png", "c.png", "b.png"]  # the retried row comes last
    assert all(not r["error"] for r in after) and after[-1]["label"] in {"no", "yes"}
    assert after[0] == before[str(images["a.png"])] and after[1] == before[str(images["c.png"])]


def test_resume_into_a_csv_from_before_the_threshold_column_says_which_columns(tmp_path, images):
    old = tmp_path / "old.csv"
    old.write_text(f"path,label,prob_no,prob_yes,error\n{images['a.png']},no,0.9,0.1,\n")
    before = old.read_text()
    with pytest.raises(ConfigError) as err:
        predict_to_file(bundle=classifier(tmp_path / "model"), inputs=[images["a.png"]], out=old, resume=True,
                        progress=False)
    assert str(err.value) == (
        f"{old}: has the columns ['path', 'label', 'prob_no', 'prob_yes', 'error'], not ['path', 'label', 'prob_no', "
        "'prob_yes', 'threshold', 'error'] (another model or other options wrote it); resume with the model and "
        "options that started it, or choose a new --out")
    assert old.read_text() == before
