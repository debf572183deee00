"""Detection bad input: each gets a clear error, or a counted drop listed with its reason, and every
other box is kept as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from det_sets import BOXES, CLASSES, SHAPE, picture, voc_xml, write_coco, write_csv, write_voc, write_yolo

from medsight.data.det_layouts import open_detection_set
from medsight.errors import DatasetError

EXPECTED = np.array([box for _, box in BOXES], dtype=np.float64)


def _case(ds, name: str):
    return next(c for c in ds.cases if c.id.endswith(name))


def _with_extra_coco_box(root: Path, bbox: list[float], category: int = 1) -> Path:
    path = write_coco(root)
    spec = json.loads(path.read_text())
    spec["annotations"].append({"id": 99, "image_id": 1, "category_id": category, "bbox": bbox})
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize(("bbox", "kind"), [
    ([40, 2, 5, 5], "outside_image"),        # x 40..45 on a 30-column image
    ([3, -9, 4, 5], "outside_image"),        # y -9..-4
    ([3, 2, 0, 4], "zero_area"),             # w = 0
])
def test_coco_box_dropped_and_counted(tmp_path: Path, bbox: list[float], kind: str) -> None:
    ds = open_detection_set(_with_extra_coco_box(tmp_path, bbox))
    assert ds.dropped == {kind: 1}
    (problem,) = ds.problems
    assert problem["kind"] == kind and problem["path"].endswith("annotations.json: annotation id 99")
    np.testing.assert_array_equal(_case(ds, "a.png").boxes.corners, EXPECTED)   # the others intact


def test_box_partly_outside_is_clipped_and_counted(tmp_path: Path) -> None:
    ds = open_detection_set(_with_extra_coco_box(tmp_path, [25, 15, 10, 10]))   # x 25..35, y 15..25
    assert ds.dropped == {"clipped_to_image": 1}
    a = _case(ds, "a.png")
    np.testing.assert_array_equal(a.boxes.corners, [*EXPECTED, [15, 25, 20, 30]])
    assert "clipped to [r 15-20, c 25-30]" in ds.problems[0]["reason"]


def test_voc_zero_area_box(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    objects = [(label, [c1 + 1, r1 + 1, c2, r2]) for label, (r1, c1, r2, c2) in BOXES] + [("lesion", [7, 8, 7, 8])]
    (root / "Annotations" / "a.xml").write_text(voc_xml("a.png", objects))
    ds = open_detection_set(root)
    assert ds.dropped == {"zero_area": 1}
    assert ds.problems[0]["path"].endswith("a.xml: object 3") and "xmin=7 xmax=7" in ds.problems[0]["reason"]
    np.testing.assert_array_equal(_case(ds, "a.png").boxes.corners, EXPECTED)


def test_unknown_label_with_given_class_names(tmp_path: Path) -> None:
    ds = open_detection_set(write_csv(tmp_path), class_names=["lesion"])
    assert ds.dropped == {"unknown_label": 1}
    assert "label 'nodule' is not one of the classes ['lesion']" in ds.problems[0]["reason"]
    assert ds.problems[0]["path"].endswith("boxes.csv:3")
    np.testing.assert_array_equal(_case(ds, "a.png").boxes.corners, EXPECTED[:1])


def test_unknown_label_under_strict_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"boxes.csv:3: label 'nodule' is not one of the classes \['lesion'\]"):
        open_detection_set(write_csv(tmp_path), class_names=["lesion"], strict=True)


def test_yolo_class_id_beyond_the_names(tmp_path: Path) -> None:
    root = write_yolo(tmp_path)
    with (root / "labels" / "a.txt").open("a") as handle:
        handle.write("5 0.5 0.5 0.1 0.1\n")
    ds = open_detection_set(root)
    assert ds.dropped == {"unknown_label": 1} and ds.class_names == CLASSES
    assert "class id 5 is beyond the 2 class names" in ds.problems[0]["reason"]
    assert len(_case(ds, "a.png").boxes) == 2


def test_coco_unknown_category(tmp_path: Path) -> None:
    ds = open_detection_set(_with_extra_coco_box(tmp_path, [1, 1, 3, 3], category=7))
    assert ds.dropped == {"unknown_label": 1} and "'category 7'" in ds.problems[0]["reason"]


def test_coco_image_file_missing(tmp_path: Path) -> None:
    path = write_coco(tmp_path)
    (tmp_path / "images" / "a.png").unlink()
    ds = open_detection_set(path)
    assert ds.dropped == {"missing_image": 1} and [c.id for c in ds.cases] == ["images/b.png"]
    assert "a.png, which does not exist (2 box(es) dropped)" in ds.problems[0]["reason"]


def test_coco_annotation_naming_an_unlisted_image(tmp_path: Path) -> None:
    path = write_coco(tmp_path)
    spec = json.loads(path.read_text())
    spec["annotations"].append({"id": 50, "image_id": 9, "category_id": 1, "bbox": [1, 1, 2, 2]})
    path.write_text(json.dumps(spec))
    ds = open_detection_set(path)
    assert ds.dropped == {"missing_image": 1} and "image id 9" in ds.problems[0]["reason"]
    np.testing.assert_array_equal(_case(ds, "a.png").boxes.corners, EXPECTED)


def test_voc_annotation_without_its_image_and_image_without_annotation(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    (root / "Annotations" / "c.xml").write_text(voc_xml("c.png", [("lesion", [1, 1, 4, 4])]))
    picture(root / "JPEGImages" / "d.png", offset=5)
    ds = open_detection_set(root)
    assert ds.dropped == {"missing_annotation": 1, "missing_image": 1}
    assert {Path(p["path"]).name: p["kind"] for p in ds.problems} == {
        "c.xml": "missing_image", "d.png": "missing_annotation"}
    assert [c.id for c in ds.cases] == ["JPEGImages/a.png", "JPEGImages/b.png"]


def test_csv_row_naming_a_missing_image(tmp_path: Path) -> None:
    rows = [f"images/a.png,{c1},{r1},{c2},{r2},{label}" for label, (r1, c1, r2, c2) in BOXES]
    path = write_csv(tmp_path, rows + ["images/gone.png,1,1,4,4,lesion"])
    ds = open_detection_set(path)
    assert ds.dropped == {"missing_image": 1} and [c.id for c in ds.cases] == ["images/a.png"]


@pytest.mark.parametrize("what", ["image", "annotation", "category"])
def test_coco_duplicate_ids(tmp_path: Path, what: str) -> None:
    path = write_coco(tmp_path)
    spec = json.loads(path.read_text())
    key = {"image": "images", "annotation": "annotations", "category": "categories"}[what]
    spec[key][1]["id"] = spec[key][0]["id"]
    path.write_text(json.dumps(spec))
    with pytest.raises(DatasetError, match=rf"annotations.json: {what} id {spec[key][0]['id']} appears twice"):
        open_detection_set(path)


def test_csv_3d_box_on_a_2d_image(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["images/a.png,3,2,10,6,lesion,0,4"], header="path,x1,y1,x2,y2,label,z1,z2")
    with pytest.raises(DatasetError, match=r"boxes.csv:2: a 3D box \(6 numbers\) on the 2D image .*a.png \(20x30\)"):
        open_detection_set(path)


def test_coco_6_number_bbox(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"annotation id 99: bbox has 6 numbers"):
        open_detection_set(_with_extra_coco_box(tmp_path, [1, 1, 1, 3, 3, 3]))


def test_2d_box_on_a_volume(tmp_path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    (tmp_path / "m.csv").write_text("path,x1,y1,x2,y2,label\nv.nii.gz,1,1,3,3,lesion\n")
    with pytest.raises(DatasetError, match=r"m.csv:2: a 2D box \(4 numbers\) on the 3D image"):
        open_detection_set(tmp_path / "m.csv")


def test_image_in_no_split_file_is_left_out_and_counted(tmp_path: Path) -> None:
    ds = open_detection_set(write_voc(tmp_path, splits={"train": ["a"]}))
    assert ds.dropped == {"not_in_split": 1} and [c.split for c in ds.cases] == ["train"]


def test_unknown_split_word(tmp_path: Path) -> None:
    rows = ["images/a.png,3,2,10,6,lesion,holdout"]
    with pytest.raises(DatasetError, match=r"boxes.csv:2: unknown split 'holdout'"):
        open_detection_set(write_csv(tmp_path, rows, header="path,x1,y1,x2,y2,label,split"))


def test_bad_numbers_are_counted(tmp_path: Path) -> None:
    root = write_yolo(tmp_path)
    with (root / "labels" / "a.txt").open("a") as handle:
        handle.write("0 0.5 zero 0.1 0.1\n1 0.5 0.5\n")
    ds = open_detection_set(root)
    assert ds.dropped == {"bad_box": 2} and len(_case(ds, "a.png").boxes) == 2


def test_unreadable_image_header(tmp_path: Path) -> None:
    path = write_coco(tmp_path)
    (tmp_path / "images" / "b.png").write_bytes(b"not a png")
    ds = open_detection_set(path)
    assert ds.dropped == {"unreadable_image": 1} and [c.id for c in ds.cases] == ["images/a.png"]
    assert ds.problems[0]["path"].endswith("b.png")


def test_exif_rotated_jpeg_boxes_checked_against_the_turned_image(tmp_path: Path) -> None:
    """Stored 20 rows x 30 columns with EXIF 6 (turn a quarter): read as 30 rows x 20 columns."""
    picture(tmp_path / "images" / "r.jpg", fmt="JPEG", exif_orientation=6)
    (tmp_path / "m.csv").write_text("path,x1,y1,x2,y2,label\nimages/r.jpg,2,22,18,29,lesion\n")
    ds = open_detection_set(tmp_path / "m.csv")
    (case,) = ds.cases
    assert (case.shape, case.exif_orientation, ds.dropped) == ((30, 20), 6, {})   # inside: not clipped
    sample = ds.read(case)
    assert sample.spatial_shape == (30, 20) and sample.meta["exif_orientation"] == 6
    # the header alone gives the turned size
    from medsight.io.image import picture_size

    assert picture_size(tmp_path / "images" / "r.jpg") == (30, 20, 6)


def test_declared_size_that_differs_is_listed_not_dropped(tmp_path: Path) -> None:
    path = write_coco(tmp_path)
    spec = json.loads(path.read_text())
    spec["images"][0]["width"] = SHAPE[1] * 2
    path.write_text(json.dumps(spec))
    ds = open_detection_set(path)
    assert ds.dropped == {} and ds.problems[0]["kind"] == "size_mismatch"
    assert "declares 20x60 (rows x columns), the image is 20x30" in ds.problems[0]["reason"]


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    path = write_coco(tmp_path)
    for name in ("a.png", "b.png"):
        (tmp_path / "images" / name).unlink()
    with pytest.raises(DatasetError, match=r"holds no usable image \(2 dropped"):
        open_detection_set(path)


@pytest.mark.parametrize(("content", "message"), [
    ("path,x1,y1,label\na.png,1,1,x\n", "the header lacks the column\\(s\\) x2, y2"),
    ("path,x1,y1,x2,y2,label,z1\na.png,1,1,2,2,x,0\n", "only one of the columns z1, z2"),
])
def test_bad_manifest_header(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        open_detection_set(tmp_path / "m.csv")


def test_path_matching_no_layout(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="matches no detection layout"):
        open_detection_set(tmp_path)
