"""``medsight data inspect`` on detection sets: counts, box sizes, drops, missing annotations, EXIF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from det_sets import BOXES, picture, voc_xml, write_coco, write_csv, write_nifti_masks, write_voc
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.data.det_inspect import inspect_detection, wants_detection
from medsight.data.inspect import inspect_dataset
from medsight.errors import ConfigError


def _voc_with_problems(root: Path) -> Path:
    """BOXES on a.png, b.png negative, plus: a zero-area box, a box wholly outside, a box partly outside,
    an XML without its image (c), an image without its XML (d), and a JPEG turned by EXIF (e)."""
    write_voc(root)
    objects = [(label, [c1 + 1, r1 + 1, c2, r2]) for label, (r1, c1, r2, c2) in BOXES]
    objects += [("lesion", [5, 5, 5, 9]), ("nodule", [40, 1, 45, 5]), ("nodule", [26, 16, 35, 25])]
    (root / "Annotations" / "a.xml").write_text(voc_xml("a.png", objects))
    (root / "Annotations" / "c.xml").write_text(voc_xml("c.png", [("lesion", [1, 1, 4, 4])]))
    picture(root / "JPEGImages" / "d.png", offset=3)
    picture(root / "JPEGImages" / "e.jpg", fmt="JPEG", exif_orientation=8, offset=4)
    (root / "Annotations" / "e.xml").write_text(voc_xml("e.jpg", [("lesion", [1, 22, 10, 29])], shape=(30, 20)))
    return root


def test_inspect_counts_sizes_and_problems(tmp_path: Path) -> None:
    report = inspect_detection(_voc_with_problems(tmp_path / "set"), out=tmp_path / "r.json", progress=False)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert (report["layout"], report["n_images"], report["n_boxes"]) == ("voc", 3, 4)
    assert report["splits"] == {"all": {"images": 3, "boxes": 4, "negatives": 1,
                                        "boxes_per_class": {"lesion": 2, "nodule": 2}}}
    assert report["boxes_per_image"] == {"histogram": {"0": 1, "1": 1, "3": 1}, "mean": 1.333, "median": 1.0,
                                         "max": 3}
    assert report["dropped"] == {"clipped_to_image": 1, "missing_annotation": 1, "missing_image": 1,
                                 "outside_image": 1, "zero_area": 1}
    assert report["missing_annotations"] == [str(tmp_path / "set" / "JPEGImages" / "d.png")]
    assert report["negatives"] == ["JPEGImages/b.png"]
    assert report["exif_rotated"] == [{"id": "JPEGImages/e.jpg", "orientation": 8}]
    assert report["problems"]["zero_area"][0]["path"].endswith("a.xml: object 3")
    # lesion boxes: a's 4 x 7 and e's 8 x 10 (rows 21..29, columns 0..10 of the turned 30 x 20 image)
    lesion = report["box_sizes"]["lesion"]
    assert lesion["n"] == 2 and lesion["height_px"] == {"median": 6, "p10": 4.4, "p90": 7.6, "min": 4, "max": 8}
    assert lesion["width_px"]["min"] == 7 and lesion["width_px"]["max"] == 10
    # nodule: b's 5 x 8, and the clipped one rows 15..20, columns 25..30
    assert report["box_sizes"]["nodule"]["width_px"] == {"median": 6.5, "p10": 5.3, "p90": 7.7, "min": 5, "max": 8}
    assert report["unreadable"] == []


def test_inspect_lists_an_undecodable_image(tmp_path: Path) -> None:
    path = write_coco(tmp_path)
    png = (tmp_path / "images" / "b.png").read_bytes()
    (tmp_path / "images" / "b.png").write_bytes(png[: len(png) // 2])    # the header survives, the data not
    report = inspect_detection(path, progress=False)
    (entry,) = report["unreadable"]
    assert entry["path"] == "images/b.png" and "b.png" in entry["reason"]
    assert report["n_images"] == 2


def test_volume_box_sizes_in_voxels_and_millimetres(tmp_path: Path) -> None:
    report = inspect_detection(write_nifti_masks(tmp_path), progress=False)
    lesion = report["box_sizes"]["lesion"] if "lesion" in report["box_sizes"] else report["box_sizes"]["label_1"]
    # i 2..6, j 3..10, k 1..4 with 2 x 1 x 3 mm voxels
    assert [lesion[f"axis{a}_vox"]["median"] for a in range(3)] == [4, 7, 3]
    assert [lesion[f"{a}_mm"]["median"] for a in "xyz"] == [8, 7, 9]


def test_detection_is_recognised_from_the_path(tmp_path: Path) -> None:
    assert wants_detection(write_voc(tmp_path / "voc"))
    assert wants_detection(write_coco(tmp_path / "coco").parent)       # images/ alone would read as one class
    assert wants_detection(write_csv(tmp_path / "csv"))                # x1, y1, x2, y2 in the header
    for k, name in enumerate(("yes", "no")):
        picture(tmp_path / "classes" / name / "x.png", offset=k)
    assert not wants_detection(tmp_path / "classes")
    assert inspect_dataset(tmp_path / "classes", progress=False)["layout"] == "folder"


def test_unknown_task_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not 'segmentation'"):
        inspect_dataset(tmp_path, task="segmentation")


def test_cli_data_inspect_detection(tmp_path: Path) -> None:
    root = _voc_with_problems(tmp_path / "set")
    result = CliRunner().invoke(app, ["data", "inspect", str(root), "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "detection" in result.output and "zero area" in result.output and "a.xml: object 3" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["dropped"]["zero_area"] == 1
    csv_path = write_csv(tmp_path / "csv")
    forced = CliRunner().invoke(app, ["data", "inspect", str(csv_path), "--task", "detection",
                                      "--out", str(tmp_path / "c.json")])
    assert forced.exit_code == 0, forced.output
    assert json.loads((tmp_path / "c.json").read_text())["n_boxes"] == len(BOXES)


def test_bccd_inspection(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "detection" / "bccd"
    if not root.is_dir():
        pytest.skip(f"BCCD not found at {root}")
    report = inspect_dataset(root, out=tmp_path / "bccd.json", progress=False)
    assert report["task"] == "detection" and report["dropped"] == {"zero_area": 2}
    assert {k: v["images"] for k, v in report["splits"].items()} == {"train": 205, "val": 87}
    assert report["n_boxes"] == 3943 - 2 and report["negatives"] == [] and report["unreadable"] == []
    # the README's medians (w x h, as written): RBC 105 x 101, WBC 204 x 182, Platelets 39 x 39; VOC's
    # 1-based reading adds one pixel to every box
    sizes = report["box_sizes"]
    medians = {k: (sizes[k]["width_px"]["median"], sizes[k]["height_px"]["median"]) for k in sizes}
    assert np.allclose([medians["WBC"], medians["Platelets"]], [[205, 183], [40, 40]], atol=1)
    assert np.allclose(medians["RBC"], [106, 102], atol=1)
