"""The data inspector on planted problems, on a MedMNIST-style npz and on the real brain MRI set."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medsight.data.inspect import inspect_dataset, render_inspection

SECRET_NAME = "DOE^JANE^SECRETNAME"


def _texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    smooth = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 3)
    return np.clip(128 + smooth / smooth.std() * 30, 0, 255).astype(np.uint8)


def _dicom(path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName = "OT", SECRET_NAME
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = _texture(np.random.default_rng(99)).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """A manifest data set with one of each problem; returns the report and the planted names."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        Image.fromarray(_texture(rng)).save(root / f"img{i:02d}.png")
        rows.append((f"img{i:02d}.png", "normal" if i % 2 else "abnormal", "val" if i >= 12 else "train"))
    shutil.copy(root / "img00.png", root / "copy_of_00.png")  # exact, same split and label
    rows.append(("copy_of_00.png", "abnormal", "train"))
    Image.open(root / "img01.png").save(root / "img01_resaved.jpg", quality=85)  # near duplicate
    rows.append(("img01_resaved.jpg", "normal", "train"))
    shutil.copy(root / "img02.png", root / "leak_of_02.png")  # exact, crosses into val
    rows.append(("leak_of_02.png", "abnormal", "val"))
    shutil.copy(root / "img04.png", root / "relabelled_04.png")  # exact, other label
    rows.append(("relabelled_04.png", "normal", "train"))
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(root / "white.png")
    rows.append(("white.png", "normal", "train"))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows.append(("broken.png", "normal", "train"))
    _dicom(root / "scan.dcm")
    rows.append(("scan.dcm", "abnormal", "train"))
    (root / "manifest.csv").write_text("path,label,split\n" + "".join(f"{p},{lab},{s}\n" for p, lab, s in rows))
    out = root / "report.json"
    report = inspect_dataset(root / "manifest.csv", out=out, progress=False)
    return {"report": report, "root": root, "json": out.read_text()}


def _names(groups) -> list[set[str]]:
    return [{Path(p).name for p in group} for group in groups]


def test_counts_sizes_and_modes(planted):
    r = planted["report"]
    assert r["layout"] == "csv" and r["n_items"] == 23 and r["n_readable"] == 22
    assert r["class_counts"] == {"abnormal": 11, "normal": 12}
    assert r["splits"]["val"]["n"] == 5
    assert r["sizes"] == {"64x64": 22}
    assert r["modes"]["L"] == 21 and r["modes"]["MONOCHROME2"] == 1


def test_exact_near_leakage_and_label_conflicts(planted):
    r = planted["report"]
    assert sorted(map(sorted, _names(r["exact_duplicates"]))) == [
        ["copy_of_00.png", "img00.png"], ["img02.png", "leak_of_02.png"], ["img04.png", "relabelled_04.png"]]
    assert _names(r["near_duplicates"]) == [{"img01.png", "img01_resaved.jpg"}]
    assert [(c["kind"], {Path(p).name for p in c["paths"]}) for c in r["cross_split_duplicates"]] == [
        ("exact", {"img02.png", "leak_of_02.png"})]
    assert [sorted(c["labels"]) for c in r["conflicting_labels"]] == [["abnormal", "normal"]]
    assert r["summary"]["redundant_copies"] == 3


def test_outlier_unreadable_and_phi(planted):
    r = planted["report"]
    white = [o for o in r["intensity_outliers"] if o["path"].endswith("white.png")]
    assert {o["stat"] for o in white} == {"mean", "std"}
    assert white[0]["robust_z"] > 4 and r["summary"]["intensity_outliers"] == 1
    assert [Path(u["path"]).name for u in r["unreadable"]] == ["broken.png"]
    assert "broken.png" in r["unreadable"][0]["reason"]
    assert [(Path(p["path"]).name, p["fields"]) for p in r["phi"]] == [("scan.dcm", ["PatientName"])]


def test_report_never_holds_patient_values(planted):
    assert "SECRETNAME" not in planted["json"] and json.loads(planted["json"]) == planted["report"]


def test_render_prints_the_problems(planted):
    from rich.console import Console

    console = Console(record=True, width=200)
    render_inspection(planted["report"], console)
    text = console.export_text()
    assert "duplicates across splits (leakage)" in text and "leak_of_02.png" in text
    assert "SECRETNAME" not in text


def test_npz_rows_compared_by_pixels(tmp_path):
    rng = np.random.default_rng(1)
    train = np.stack([_texture(rng, 28) for _ in range(30)])
    val = np.stack([_texture(rng, 28) for _ in range(6)])
    val[0] = train[5]
    np.savez(tmp_path / "tiny.npz", train_images=train, train_labels=np.zeros((30, 1)),
             val_images=val, val_labels=np.ones((6, 1)))
    r = inspect_dataset(tmp_path / "tiny.npz", progress=False)
    assert r["modes"] == {"npz": 36} and r["splits"]["val"]["n"] == 6
    leak = r["cross_split_duplicates"]
    assert [(c["kind"], c["splits"]) for c in leak] == [("exact", ["train", "val"])]
    assert leak[0]["paths"][0].endswith("tiny.npz#train/5") and leak[0]["paths"][1].endswith("#val/0")


def test_brain_mri_exact_duplicates(shared_data):
    """The README's "25 exact duplicate files" are 25 redundant copies: 47 files in 22 groups."""
    root = shared_data / "brain_mri_tumor"
    digests = Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file())
    r = inspect_dataset(root, progress=False)
    s = r["summary"]
    assert (s["exact_duplicate_groups"], s["exact_duplicate_files"], s["redundant_copies"]) == (22, 47, 25)
    assert s["redundant_copies"] == sum(n - 1 for n in digests.values())
    assert r["class_counts"] == {"no": 98, "yes": 155} and s["unreadable"] == 0
    assert not any(c["kind"] == "exact" for c in r["conflicting_labels"])  # duplicates are within classes


def test_pneumoniamnist_inspects_in_seconds(shared_data):
    start = time.perf_counter()
    r = inspect_dataset(shared_data / "medmnist" / "pneumoniamnist.npz", progress=False)
    assert time.perf_counter() - start < 10
    assert r["n_items"] == 5232 and r["class_counts"] == {"normal": 1349, "pneumonia": 3883}
    assert r["summary"]["near_duplicate_groups"] < 20  # the centred hash does not lump chest X-rays together


def test_a_manifest_with_many_problems_lists_every_one_and_inspects_the_rest(tmp_path):
    from rich.console import Console

    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png"):
        Image.fromarray(_texture(rng)).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png,x\ngone1.png,x\nb.png,y\ngone2.png,y\nbroken.png,x\n,y\ngone3.png,x\n")
    report = inspect_dataset(manifest, out=tmp_path / "r.json", progress=False)
    assert [p["path"] for p in report["manifest_problems"]] == [f"{manifest}:{n}" for n in (3, 5, 7, 8)]
    assert [p["reason"].split(": ", 1)[1][:20] for p in report["manifest_problems"]] == [
        "names gone1.png, whi", "names gone2.png, whi", "the path is empty; f", "names gone3.png, whi"]
    assert report["summary"]["manifest_problems"] == 4 and report["n_items"] == 3 and report["n_readable"] == 2
    assert [Path(u["path"]).name for u in report["unreadable"]] == ["broken.png"]
    assert json.loads((tmp_path / "r.json").read_text())["manifest_problems"] == report["manifest_problems"]
    console = Console(record=True, width=300)
    render_inspection(report, console)
    text = console.export_text()
    assert "manifest rows left out" in text
    assert all(name in text for name in ("gone1.png", "gone2.png", "gone3.png", "m.csv:7", "broken.png"))


def test_a_decoders_own_exception_is_listed_and_the_inspection_goes_on(tmp_path, monkeypatch):
    import medsight.io

    rng = np.random.default_rng(2)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(_texture(rng)).save(tmp_path / name)
    real = medsight.io.read_image

    def choke(path, *args, **kwargs):
        if Path(path).name == "b.png":
            raise NotImplementedError("Unknown Value Representation 'CQ' in tag (0010,0040)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(medsight.io, "read_image", choke)
    report = inspect_dataset(tmp_path, progress=False)
    assert report["n_items"] == 3 and report["n_readable"] == 2 and report["sizes"] == {"64x64": 2}
    (unreadable,) = report["unreadable"]
    assert unreadable["reason"] == (
        f"{tmp_path / 'b.png'}: cannot be read (NotImplementedError: Unknown Value Representation 'CQ' in tag "
        "(0010,0040)); check that the file is complete and is the type its name says; re-export it, or leave it out")


def test_a_dicom_folder_with_a_corrupt_header_is_inspected_file_by_file(tmp_path):
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        _dicom(tmp_path / name)
    data = (tmp_path / "b.dcm").read_bytes()
    (tmp_path / "b.dcm").write_bytes(data[:300])  # cut inside the header
    report = inspect_dataset(tmp_path, progress=False)
    assert report["layout"] == "dicom" and report["n_items"] == 3 and report["n_readable"] == 2
    assert [Path(u["path"]).name for u in report["unreadable"]] == ["b.dcm"]
    assert "b.dcm" in report["unreadable"][0]["reason"] and "\n" not in report["unreadable"][0]["reason"]
