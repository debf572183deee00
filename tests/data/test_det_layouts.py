"""Detection layouts: every format gives the same boxes for the same picture; the real shared sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from det_sets import (
    BOXES,
    CLASSES,
    SHAPE,
    VOLUME_AFFINE,
    VOLUME_BOXES,
    picture,
    write_coco,
    write_csv,
    write_nifti_masks,
    write_png_masks,
    write_voc,
    write_yolo,
)

from medsight.config import DataConfig
from medsight.data.det_layouts import detect_layout, open_detection_set
from medsight.data.det_masks import component_boxes
from medsight.data.splits import resolve_splits

EXPECTED = np.array([box for _, box in BOXES], dtype=np.float64)
# The YOLO fractions are k / 30 and k / 20 written with repr: back to pixels within a few float64 ulps of 30.
YOLO_TOLERANCE = 8 * np.finfo(np.float64).eps * 30


@pytest.mark.parametrize(("writer", "layout", "names"), [
    (write_coco, "coco", CLASSES),
    (write_voc, "voc", CLASSES),
    (write_yolo, "yolo", CLASSES),
    (write_csv, "csv", CLASSES),
    (write_png_masks, "masks", ["label_1", "label_2"]),
])
def test_every_layout_gives_the_same_boxes(tmp_path: Path, writer, layout: str, names: list[str]) -> None:
    written = writer(tmp_path)
    ds = open_detection_set(written)
    assert (ds.layout, ds.class_names, ds.spatial_dims, ds.dropped) == (layout, names, 2, {})
    by_id = {c.id: c for c in ds.cases}
    assert sorted(by_id) in (["images/a.png", "images/b.png"], ["JPEGImages/a.png", "JPEGImages/b.png"])
    a, b = (next(c for i, c in by_id.items() if i.endswith(n)) for n in ("a.png", "b.png"))
    np.testing.assert_allclose(a.boxes.corners, EXPECTED, rtol=0, atol=YOLO_TOLERANCE)
    assert a.boxes.labels.tolist() == [0, 1] and a.boxes.scores is None
    assert len(b.boxes) == 0 and b.boxes.spatial_dims == 2        # the negative is kept, with no box
    assert a.shape == SHAPE and ds.read(a).spatial_shape == SHAPE


def test_layout_is_detected_from_the_folder(tmp_path: Path) -> None:
    assert detect_layout(write_coco(tmp_path / "coco").parent) == "coco"
    assert detect_layout(write_voc(tmp_path / "voc")) == "voc"
    assert detect_layout(write_yolo(tmp_path / "yolo")) == "yolo"
    assert detect_layout(write_png_masks(tmp_path / "masks")) == "masks"


def test_volume_boxes_from_nifti_masks_and_from_a_csv_agree(tmp_path: Path) -> None:
    masks = open_detection_set(write_nifti_masks(tmp_path), class_names=None)
    # x is the last voxel axis (k), y the middle (j), z the first (i), as boxes.csv writes them
    rows = [f"images/v.nii.gz,{k1},{j1},{k2},{j2},{label},{i1},{i2}"
            for label, (i1, j1, k1, i2, j2, k2) in VOLUME_BOXES]
    (tmp_path / "boxes.csv").write_text("\n".join(["path,x1,y1,x2,y2,label,z1,z2", *rows]) + "\n")
    listed = open_detection_set(tmp_path / "boxes.csv")
    expected = np.array([box for _, box in VOLUME_BOXES], dtype=np.float64)
    for ds in (masks, listed):
        (case,) = ds.cases
        assert ds.spatial_dims == 3 and case.shape == (20, 30, 6)
        np.testing.assert_array_equal(case.boxes.corners, expected)
        assert case.boxes.labels.tolist() == [0, 1]
    # millimetres: 2 x 1 x 3 mm voxels whose centres the affine maps; the lesion covers voxels i 2..5, j 3..9,
    # k 1..3, so its outer faces are at index edges 1.5..5.5, 2.5..9.5, 0.5..3.5
    np.testing.assert_allclose(masks.cases[0].boxes.world(VOLUME_AFFINE)[0], [3, 2.5, 1.5, 11, 9.5, 10.5])
    np.testing.assert_allclose(masks.cases[0].affine, VOLUME_AFFINE)


def test_component_boxes_split_one_value_into_its_components() -> None:
    mask = np.zeros((8, 8), np.int64)
    mask[0:2, 0:2] = 1
    mask[5:8, 4:6] = 1       # a second component of value 1
    mask[2, 2] = 1           # touches the first diagonally: the same component (8-connectivity)
    assert component_boxes(mask) == [(1, [0.0, 0.0, 3.0, 3.0]), (1, [5.0, 4.0, 8.0, 6.0])]


def test_instance_mask_with_one_class_name(tmp_path: Path) -> None:
    ds = open_detection_set(write_png_masks(tmp_path), class_names=["cell"])
    a = next(c for c in ds.cases if c.id.endswith("a.png"))
    assert ds.class_names == ["cell"] and a.boxes.labels.tolist() == [0, 0]
    np.testing.assert_array_equal(a.boxes.corners, EXPECTED)


def test_official_split_files_and_resolve_splits(tmp_path: Path) -> None:
    root = write_voc(tmp_path, splits={"train": ["a"], "val": ["b"]})
    ds = open_detection_set(root)
    assert [(c.id, c.split) for c in ds.cases] == [("JPEGImages/a.png", "train"), ("JPEGImages/b.png", "val")]
    assert ds.labels().tolist() == [0, 2]      # a's rarest class (lesion and nodule tie: the first); b: negative
    parts = resolve_splits(ds, DataConfig(test_fraction=0.0))
    assert {k: v.tolist() for k, v in parts.items()} == {"train": [0], "val": [1], "test": []}


def test_yolo_split_folders(tmp_path: Path) -> None:
    for k, split in enumerate(("train", "valid")):
        picture(tmp_path / "images" / split / "x.png", offset=k)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ds = open_detection_set(tmp_path)
    assert [(c.id, c.split, len(c.boxes)) for c in ds.cases] == [
        ("images/train/x.png", "train", 1), ("images/valid/x.png", "val", 0)]
    assert ds.class_names == ["0"]
    np.testing.assert_allclose(ds.cases[0].boxes.corners, [[8, 12, 12, 18]], atol=1e-12)


def test_patient_ids_from_the_manifest_group_the_split(tmp_path: Path) -> None:
    rows = [f"images/{n}.png,1,1,5,5,lesion,p{k // 2}" for k, n in enumerate("abcdefgh")]
    for k, n in enumerate("abcdefgh"):
        picture(tmp_path / "images" / f"{n}.png", offset=k)
    (tmp_path / "m.csv").write_text("\n".join(["path,x1,y1,x2,y2,label,patient_id", *rows]) + "\n")
    ds = open_detection_set(tmp_path / "m.csv")
    assert [c.patient_id for c in ds.cases] == ["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3"]
    parts = resolve_splits(ds, DataConfig(val_fraction=0.25, test_fraction=0.25), seed=3)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [4, 2, 2]
    seen = [{ds.cases[i].patient_id for i in parts[k]} for k in ("train", "val", "test")]
    assert [len(s) for s in seen] == [2, 1, 1] and len(set.union(*seen)) == 4    # no patient in two parts


# ---- the real shared sets ----


def _boxes_by_image(ds) -> dict[str, np.ndarray]:
    return {Path(c.id).name: c.boxes.corners for c in ds.cases}


def test_fracatlas_from_voc_and_from_coco(shared_data: Path) -> None:
    root = shared_data / "detection" / "fracatlas"
    if not root.is_dir():
        pytest.skip(f"FracAtlas not found at {root}")
    coco, voc = open_detection_set(root), open_detection_set(root, layout="voc")
    for ds, layout in ((coco, "coco"), (voc, "voc")):
        splits = ds.defined_splits()
        assert (ds.layout, ds.class_names, len(ds.cases)) == (layout, ["fractured"], 656)
        assert {k: len(v) for k, v in splits.items()} == {"train": 574, "val": 82}
        assert {k: sum(len(ds.cases[i].boxes) for i in v) for k, v in splits.items()} == {"train": 764, "val": 91}
    assert coco.dropped == {}
    # FracAtlas's VOC corners are COCO's cut to integers (0-based), so four boxes at x or y = 0 reach
    # past the edge under VOC's 1-based reading and are clipped by one pixel.
    assert voc.dropped == {"clipped_to_image": 4}
    from_coco, from_voc = _boxes_by_image(coco), _boxes_by_image(voc)
    gaps = []
    for name, boxes in from_coco.items():
        other = from_voc[name]
        assert len(other) == len(boxes)
        for box in boxes:     # the nearest VOC box of the same image
            gaps.append((other - box)[np.argmin(np.abs(other - box).sum(axis=1))])
    gaps = np.array(gaps)
    # As written, VOC and COCO corners agree within about a pixel (the README; 1.15 px at most, measured);
    # VOC's 1-based reading puts the low edges one pixel further out (x1 = xmin - 1).
    as_written = gaps + np.array([1.0, 1.0, 0.0, 0.0])
    assert np.abs(as_written).max() <= 1.15
    centre_shift = (gaps[:, :2] + gaps[:, 2:]) / 2
    # the centres move by 1 px on average, 1.5 px at most (1e-9: float64 rounding of coordinates near 3000 px)
    assert np.abs(centre_shift).max() <= 1.5 + 1e-9 and abs(centre_shift.mean() + 1.0) < 0.1


def test_fracatlas_exif_rotated_image(shared_data: Path) -> None:
    path = shared_data / "detection" / "fracatlas" / "images" / "IMG0002628.jpg"
    if not path.is_file():
        pytest.skip(f"FracAtlas not found at {path.parent}")
    ds = open_detection_set(path.parent.parent)
    case = next(c for c in ds.cases if c.id == "images/IMG0002628.jpg")
    assert case.exif_orientation == 8 and case.shape == (373, 454)     # stored 373 wide x 454 high
    sample = ds.read(case)
    assert sample.spatial_shape == (373, 454)
    lo, hi = case.boxes.corners[:, :2], case.boxes.corners[:, 2:]
    assert np.all(lo >= 0) and np.all(hi <= np.array(sample.spatial_shape))
    assert not any(p["path"].endswith("IMG0002628.jpg") for p in ds.problems)   # sizes agree once turned


def test_bccd(shared_data: Path) -> None:
    root = shared_data / "detection" / "bccd"
    if not root.is_dir():
        pytest.skip(f"BCCD not found at {root}")
    ds = open_detection_set(root)
    splits = ds.defined_splits()
    assert (ds.layout, ds.class_names) == ("voc", ["Platelets", "RBC", "WBC"])
    assert {k: len(v) for k, v in splits.items()} == {"train": 205, "val": 87}
    assert ds.dropped == {"zero_area": 2}
    assert sorted(Path(p["path"].split(":")[0]).stem for p in ds.problems) == ["BloodImage_00338", "BloodImage_00343"]
    counts = {k: np.bincount(np.concatenate([ds.cases[i].boxes.labels for i in v]), minlength=3).tolist()
              for k, v in splits.items()}
    assert counts == {"train": [209, 2381, 214], "val": [83, 967, 87]}   # README counts less each zero-area RBC


def test_dicom_series_with_its_seg(shared_data: Path, tmp_path: Path) -> None:
    import shutil

    source = shared_data / "dicom" / "dcmqi" / "segmentations"
    if not source.is_dir():
        pytest.skip(f"the dcmqi DICOM SEG sample is not at {source}")
    for file in (source / "ct-3slice").iterdir():
        shutil.copy(file, tmp_path / file.name)
    shutil.copy(source / "liver.dcm", tmp_path / "liver.dcm")
    ds = open_detection_set(tmp_path)
    (case,) = ds.cases
    assert (ds.layout, ds.class_names, ds.spatial_dims, case.id) == ("masks", ["Liver"], 3, "liver.dcm")
    assert case.shape == (3, 512, 512) and case.series_uid is not None
    # the liver is one large component over the three slices (slice, row, column order) plus small islands
    extents = case.boxes.extents()
    assert extents.max(axis=0).tolist() == [3, 222, 272] and len(case.boxes) == 4
    assert ds.read(case).spatial_shape == (3, 512, 512)     # the CT series, not its SEG


def test_patients_csv_beside_a_voc_set(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    (root / "patients.csv").write_text("case_id,patient_id\na,p7\nb.png,p7\n")
    ds = open_detection_set(root)
    assert [c.patient_id for c in ds.cases] == ["p7", "p7"]
    parts = resolve_splits(ds, DataConfig(val_fraction=0.0, test_fraction=0.0))
    assert parts["train"].tolist() == [0, 1]
