"""Data set layouts: class folders, CSV manifests, MedMNIST npz, DICOM folders, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.data.layouts import Item, item_id, open_dataset
from medsight.errors import DatasetError


def _png(path: Path, value: int = 100, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def _manifest(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_class_folders_sorted_recursive_hidden_ignored_text_skipped(tmp_path):
    _png(tmp_path / "yes" / "a.png", 10)
    _png(tmp_path / "yes" / "deeper" / "b.png", 20)
    _png(tmp_path / "no" / "c.png", 30)
    _png(tmp_path / "no" / ".hidden.png")
    _png(tmp_path / ".cache" / "x.png")
    (tmp_path / "no" / "notes.txt").write_text("not an image")
    ds = open_dataset(tmp_path)
    assert ds.kind == "folder" and ds.class_names == ["no", "yes"]
    assert sorted((Path(it.source).name, it.label) for it in ds.items) == [("a.png", 1), ("b.png", 1), ("c.png", 0)]
    assert ds.skipped_files == [str(tmp_path / "no" / "notes.txt")]
    assert ds.defined_splits() is None
    first = next(it for it in ds.items if it.source.endswith("c.png"))
    assert ds.read(first).array.mean() == 30
    np.testing.assert_array_equal(np.sort(ds.labels()), [0, 1, 1])


def test_split_folders_set_item_split(tmp_path):
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png")
    ds = open_dataset(tmp_path)
    assert ds.class_names == ["cat", "dog"]
    assert {k: len(v) for k, v in ds.defined_splits().items()} == {"train": 6, "val": 2, "test": 4}


def test_empty_class_folder_names_folder_and_fix(tmp_path):
    _png(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError) as err:
        open_dataset(tmp_path)
    assert str(tmp_path / "b") in str(err.value) and "add images" in str(err.value)


@pytest.mark.parametrize("make", ["missing", "empty", "single_file"])
def test_unusable_paths_list_the_supported_layouts(tmp_path, make):
    path = {"missing": tmp_path / "nope", "empty": tmp_path, "single_file": tmp_path / "x.png"}[make]
    if make == "single_file":
        _png(path)
    if make == "empty":
        (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError) as err:
        open_dataset(path)
    assert str(path) in str(err.value) and "CSV manifest" in str(err.value)


def test_folder_of_images_without_classes_is_unlabelled(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    ds = open_dataset(tmp_path)
    assert ds.class_names == [] and [it.label for it in ds.items] == [None, None]
    np.testing.assert_array_equal(ds.labels(), [-1, -1])


def test_manifest_with_string_labels_patients_and_splits(tmp_path):
    for name in ("a", "b", "c"):
        _png(tmp_path / "img" / f"{name}.png")
    csv = _manifest(tmp_path / "m.csv", "path,label,patient_id,split\nimg/a.png,pneumonia,p1,train\n"
                    "img/b.png,normal,p2,val\n\nimg/c.png,normal,,test\n")
    ds = open_dataset(csv)
    assert ds.kind == "csv" and ds.class_names == ["normal", "pneumonia"]
    assert [(it.label, it.patient_id, it.split) for it in ds.items] == [
        (1, "p1", "train"), (0, "p2", "val"), (0, None, "test")]
    assert ds.defined_splits() == {"train": [0], "val": [1], "test": [2]}


def test_manifest_integer_labels_sort_numerically(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png")
    ds = open_dataset(_manifest(tmp_path / "m.csv", "path,label\n0.png,10\n1.png,2\n2.png,02\n"))
    assert ds.class_names == ["2", "10"]
    assert [it.label for it in ds.items] == [1, 0, 0]


@pytest.mark.parametrize(
    "text, expect",
    [
        ("file,label\na.png,x\n", "lacks the column(s) path"),
        ("path,label\na.png,x\nmissing.png,y\n", "m.csv:3: names missing.png"),
        ("path,label\na.png,\n", "m.csv:2: the label is empty"),
        ("path,label,split\na.png,x,train\na.png,y,\n", "m.csv:3: has no split"),
        ("path,label,split\na.png,x,training\n", "m.csv:2: unknown split 'training'"),
        ("path,label\n", "lists no images"),
    ],
)
def test_manifest_errors_name_the_line_and_fix(tmp_path, text, expect):
    _png(tmp_path / "a.png")
    with pytest.raises(DatasetError) as err:
        open_dataset(_manifest(tmp_path / "m.csv", text))
    assert expect in str(err.value) and ";" in str(err.value)


def test_known_class_names_reject_an_unknown_label(tmp_path):
    _png(tmp_path / "a.png")
    csv = _manifest(tmp_path / "m.csv", "path,label\na.png,normal\na.png,tumour\n")
    with pytest.raises(DatasetError) as err:
        open_dataset(csv, class_names=["normal", "pneumonia"])
    assert "m.csv:3" in str(err.value) and "'tumour'" in str(err.value) and "pneumonia" in str(err.value)
    ok = _manifest(tmp_path / "ok.csv", "path,label\na.png,pneumonia\n")
    ds = open_dataset(ok, class_names=["normal", "pneumonia"])
    assert ds.class_names == ["normal", "pneumonia"] and ds.items[0].label == 1


def _npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for n, split in zip((10, 4), ("train", "val"), strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez(path, **arrays)
    return path


def test_npz_items_per_present_split_and_known_class_names(tmp_path):
    ds = open_dataset(_npz(tmp_path / "pneumoniamnist.npz"))
    assert ds.kind == "npz" and ds.class_names == ["normal", "pneumonia"]
    assert {k: len(v) for k, v in ds.defined_splits().items()} == {"train": 10, "val": 4}
    item = ds.items[11]
    assert (item.split, item.index, item.label) == ("val", 1, 1)
    np.testing.assert_array_equal(ds.read(item).array[0], ds.arrays()["val"][0][1])
    assert item_id(item).endswith("pneumoniamnist.npz#val/1")
    assert open_dataset(_npz(tmp_path / "other.npz")).class_names == ["0", "1"]


def test_dicom_folder_is_unlabelled_and_picks_a_series(tmp_path):
    from medsight.data.phantoms import make_chest_phantoms

    root = make_chest_phantoms(tmp_path / "p", n_per_class=2, size=16, seed=0, fmt="dcm")
    ds = open_dataset(root / "normal")
    assert ds.kind == "dicom" and len(ds.items) == 2 and ds.items[0].label is None
    from medsight.io import list_series

    uid = list_series(root / "normal")[0].series_uid
    one = open_dataset(root / "normal", series_uid=uid)
    assert len(one.items) == 1 and one.read(one.items[0]).spatial_shape == (16, 16)
    with pytest.raises(DatasetError, match="has no series 'nope'"):
        open_dataset(root / "normal", series_uid="nope")


def test_item_id_names_series():
    assert item_id(Item("study", None, series_uid="1.2.3")) == "study#1.2.3"


BROKEN_MANIFEST = ("path,label,split\na.png,x,train\nmissing1.png,x,train\na.png,,train\nmissing2.png,y,val\n"
                   "a.png,y,training\na.png,y,\nb.png,y,val\n")


def test_a_broken_manifest_is_refused_at_its_first_bad_row_by_default(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    with pytest.raises(DatasetError) as err:
        open_dataset(_manifest(tmp_path / "m.csv", BROKEN_MANIFEST))  # training: as before
    assert "m.csv:4: the label is empty" in str(err.value)


def test_a_lenient_opening_lists_every_bad_manifest_row_in_line_order_and_keeps_the_good_ones(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    csv = _manifest(tmp_path / "m.csv", BROKEN_MANIFEST)
    ds = open_dataset(csv, strict=False)
    assert [(Path(it.source).name, it.split) for it in ds.items] == [("a.png", "train"), ("b.png", "val")]
    assert ds.class_names == ["x", "y"] and [it.label for it in ds.items] == [0, 1]
    assert [p["path"] for p in ds.problems] == [f"{csv}:{line}" for line in (3, 4, 5, 6, 7)]
    reasons = [p["reason"] for p in ds.problems]
    assert reasons[0] == (f"{csv}:3: names missing1.png, which does not exist ({tmp_path / 'missing1.png'}); "
                          "fix the path (relative to the CSV's folder) or remove the row")
    assert reasons[1] == f"{csv}:4: the label is empty; fill in the label"
    assert reasons[2].startswith(f"{csv}:5: names missing2.png, which does not exist")
    assert reasons[3] == f"{csv}:6: unknown split 'training'; use one of train, val, test"
    assert reasons[4].startswith(f"{csv}:7: has no split while other rows have one")


def test_a_lenient_opening_lists_unknown_labels_too(tmp_path):
    _png(tmp_path / "a.png")
    csv = _manifest(tmp_path / "m.csv", "path,label\na.png,normal\na.png,tumour\na.png,cyst\n")
    ds = open_dataset(csv, class_names=["normal", "pneumonia"], strict=False)
    assert len(ds.items) == 1 and ds.items[0].label == 0
    assert [p["path"] for p in ds.problems] == [f"{csv}:3", f"{csv}:4"]
    assert "label 'tumour' is not one of the known labels ['normal', 'pneumonia']" in ds.problems[0]["reason"]
