"""Segmentation layouts: pairs, DRIVE, MSD dataset.json and DICOM SEG folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsight.data.seg_layouts import case_id, open_seg_dataset
from medsight.errors import DatasetError


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def _pairs(root: Path, masks: dict[str, np.ndarray], size: tuple[int, int] = (8, 10)) -> Path:
    for name, mask in masks.items():
        _png(root / "images" / f"{name}.png", np.full(size, 100))
        _png(root / "masks" / f"{name}_mask.png", mask)
    return root


def _square(value: int, size: tuple[int, int] = (8, 10)) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    mask[2:5, 3:7] = value
    return mask


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("21_training.tif", "21"),
        ("21_manual1.gif", "21"),
        ("21_training_mask.gif", "21"),
        ("03_test_mask.gif", "03"),
        ("liver_7.nii.gz", "liver_7"),
        ("case-seg.nii.gz", "case"),
        ("a_label.png", "a"),
        ("mask.png", "mask"),
    ],
)
def test_case_id_drops_extensions_and_role_words(name: str, expected: str) -> None:
    assert case_id(name) == expected


def test_drive_training_set(shared_data: Path) -> None:
    ds = open_seg_dataset(shared_data / "drive" / "training")
    assert ds.kind == "drive"
    assert ds.label_names == {0: "background", 1: "vessel"}
    assert len(ds.items) == 20
    assert [it.case_id for it in ds.items] == [str(n) for n in range(21, 41)]
    image, labels, roi = ds.read(ds.items[0])
    assert image.array.shape == (3, 584, 565)
    assert labels.dtype == np.int64 and labels.shape == (584, 565)
    assert set(np.unique(labels).tolist()) == {0, 1}
    assert roi.dtype == bool
    assert roi.mean() == pytest.approx(0.684, abs=0.01)  # the FOV covers about 68% of the frame
    assert 0.05 < labels[roi].mean() < 0.2  # vessels are roughly a tenth of the FOV
    assert labels[~roi].mean() < 0.01  # the manual tracing barely leaves the FOV


def test_drive_test_folder_uses_the_first_observer(shared_data: Path, tmp_path: Path) -> None:
    """DRIVE's test/ folder names its files ``NN_test.tif`` / ``NN_test_mask.gif`` and adds a second
    observer's tracing (``2nd_manual/``): the cases pair with ``1st_manual``, the reference standard."""
    drive, test = shared_data / "drive" / "training", tmp_path / "test"
    for folder in ("images", "1st_manual", "2nd_manual", "mask"):
        (test / folder).mkdir(parents=True)
    for n in (21, 22):
        shutil.copy(drive / "images" / f"{n}_training.tif", test / "images" / f"{n}_test.tif")
        shutil.copy(drive / "1st_manual" / f"{n}_manual1.gif", test / "1st_manual" / f"{n}_manual1.gif")
        shutil.copy(drive / "mask" / f"{n}_training_mask.gif", test / "mask" / f"{n}_test_mask.gif")
        Image.new("L", (565, 584), 255).save(test / "2nd_manual" / f"{n}_manual2.gif")  # all vessel: must be unused
    ds = open_seg_dataset(test)
    assert ds.kind == "drive"
    assert [it.case_id for it in ds.items] == ["21", "22"]
    _, labels, roi = ds.read(ds.items[0])
    training = open_seg_dataset(drive)
    _, first, first_roi = training.read(training.items[0])
    assert np.array_equal(labels, first) and np.array_equal(roi, first_roi)
    assert 0.05 < labels[roi].mean() < 0.2


def test_pairs_binary_png_becomes_0_1(tmp_path: Path) -> None:
    ds = open_seg_dataset(_pairs(tmp_path, {"a": _square(255), "b": _square(255)}))
    assert ds.kind == "pairs"
    assert ds.label_names == {0: "background", 1: "foreground"}
    assert [it.case_id for it in ds.items] == ["a", "b"]
    _, labels, roi = ds.read(ds.items[0])
    assert roi is None
    assert labels.sum() == 12 and labels.max() == 1


def test_pairs_multivalued_mask_keeps_values_and_roi(tmp_path: Path) -> None:
    mask = _square(1)
    mask[6, :] = 3
    root = _pairs(tmp_path, {"a": mask})
    _png(root / "roi" / "a_roi.png", np.pad(np.full((6, 8), 255), 1))
    ds = open_seg_dataset(root)
    assert ds.label_names == {0: "background", 1: "label_1", 3: "label_3"}
    _, labels, roi = ds.read(ds.items[0])
    assert labels[3, 4] == 1 and labels[6, 0] == 3
    assert roi.sum() == 48 and roi.dtype == bool


def test_label_names_argument_wins(tmp_path: Path) -> None:
    ds = open_seg_dataset(_pairs(tmp_path, {"a": _square(255)}), label_names={1: "lesion"})
    assert ds.label_names == {0: "background", 1: "lesion"}


def test_mask_value_outside_label_names_is_an_error(tmp_path: Path) -> None:
    ds = open_seg_dataset(_pairs(tmp_path, {"a": _square(2)}), label_names={1: "lesion"})
    with pytest.raises(DatasetError, match=r"a_mask\.png.*\[2\].*pass label_names"):
        ds.read(ds.items[0])


def test_image_without_mask(tmp_path: Path) -> None:
    root = _pairs(tmp_path, {"a": _square(255)})
    _png(root / "images" / "b.png", np.zeros((8, 10)))
    with pytest.raises(DatasetError, match=r"b\.png: has no mask .*add a mask named like the image"):
        open_seg_dataset(root)
    ds = open_seg_dataset(root, require_masks=False)
    assert [it.mask is None for it in ds.items] == [False, True]
    assert ds.read(ds.items[1])[1] is None


def test_mask_without_image_is_an_error(tmp_path: Path) -> None:
    root = _pairs(tmp_path, {"a": _square(255)})
    _png(root / "masks" / "z_mask.png", _square(255))
    with pytest.raises(DatasetError, match=r"z_mask\.png: .*no image.*add the image"):
        open_seg_dataset(root)


def test_mask_shape_differs_from_image(tmp_path: Path) -> None:
    root = _pairs(tmp_path, {"a": _square(255)})
    _png(root / "masks" / "a_mask.png", np.zeros((8, 9)))
    ds = open_seg_dataset(root, label_names={1: "x"})
    expected = r"a_mask\.png: the mask is \(8, 9\) but its image is \(8, 10\); use the mask"
    with pytest.raises(DatasetError, match=expected):
        ds.read(ds.items[0])


@pytest.mark.parametrize("bad", ["missing", "some_file.txt"])
def test_path_matching_no_layout(tmp_path: Path, bad: str) -> None:
    (tmp_path / "some_file.txt").write_text("x")
    with pytest.raises(DatasetError, match=rf"{bad}.*images/ with masks/.*dataset\.json.*DICOM SEG"):
        open_seg_dataset(tmp_path / bad)
    with pytest.raises(DatasetError, match=r"matches no segmentation layout; .*DRIVE"):
        open_seg_dataset(tmp_path)


def _msd(root: Path, labels: dict, extra: dict | None = None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(2):
        image = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
        label = np.zeros((4, 5, 6), np.uint8)
        label[1:3, 1:3, i + 1] = 1
        label[0, 0, 0] = 2
        nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 3.0, 1.0])), root / "imagesTr" / f"liver_{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.diag([2.0, 2.0, 3.0, 1.0])), root / "labelsTr" / f"liver_{i}.nii.gz")
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"})
    spec = {"name": "tiny", "labels": labels, "training": training, **(extra or {})}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


@pytest.mark.parametrize(
    ("labels", "extra", "modality"),
    [
        ({"0": "background", "1": "liver", "2": "cancer"}, {"modality": {"0": "CT"}}, "CT"),
        ({"background": 0, "liver": 1, "cancer": 2}, {"channel_names": {"0": "CT"}}, "CT"),
        ({"1": "liver", "2": "cancer"}, {}, None),
    ],
)
def test_msd_dataset_json(tmp_path: Path, labels: dict, extra: dict, modality: str | None) -> None:
    root = _msd(tmp_path, labels, extra)
    for path in (root, root / "dataset.json"):
        ds = open_seg_dataset(path)
        assert ds.kind == "msd" and ds.modality == modality
        assert ds.label_names == {0: "background", 1: "liver", 2: "cancer"}
        assert [it.case_id for it in ds.items] == ["liver_0", "liver_1"]
    image, labels_map, roi = ds.read(ds.items[1])
    assert image.array.shape == (1, 4, 5, 6) and labels_map.shape == (4, 5, 6)
    assert labels_map.dtype == np.int64 and roi is None
    assert (labels_map == 1).sum() == 4 and labels_map[1, 1, 2] == 1 and labels_map[0, 0, 0] == 2


def test_msd_missing_file(tmp_path: Path) -> None:
    root = _msd(tmp_path, {"0": "background", "1": "liver"})
    (root / "labelsTr" / "liver_1.nii.gz").unlink()
    expected = r"dataset\.json: training\[1\] names label .*liver_1.*does not exist.*fix the path"
    with pytest.raises(DatasetError, match=expected):
        open_seg_dataset(root)


@pytest.mark.parametrize(
    ("content", "fix"),
    [
        ("{not json", "fix the file"),
        (json.dumps({"labels": {}}), "list the training cases"),
        (json.dumps({"labels": {"x": [1, 2]}, "training": [{}]}), "write labels as"),
    ],
)
def test_msd_bad_dataset_json(tmp_path: Path, content: str, fix: str) -> None:
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(DatasetError, match=rf"dataset\.json: .*; {fix}"):
        open_seg_dataset(tmp_path)


def test_dicom_series_with_seg(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "dicom" / "dcmqi" / "segmentations"
    for file in (source / "ct-3slice").iterdir():
        shutil.copy(file, tmp_path / file.name)
    shutil.copy(source / "liver.dcm", tmp_path / "liver.dcm")
    ds = open_seg_dataset(tmp_path)
    assert ds.kind == "dicom_seg"
    assert ds.label_names == {0: "background", 1: "Liver"}
    assert [(it.case_id, Path(it.mask).name) for it in ds.items] == [("liver", "liver.dcm")]
    image, labels, roi = ds.read(ds.items[0])
    assert image.array.shape == (1, 3, 512, 512)
    assert labels.shape == (3, 512, 512) and labels.dtype == np.int64 and roi is None
    assert set(np.unique(labels).tolist()) == {0, 1}
    assert (labels == 1).sum() > 1000


def test_two_files_of_one_case_is_an_error(tmp_path: Path) -> None:
    root = _pairs(tmp_path, {"a": _square(255)})
    _png(root / "masks" / "a_seg.png", _square(255))
    with pytest.raises(DatasetError, match=r"a_seg\.png: has the same case id 'a' as a_mask\.png; rename one"):
        open_seg_dataset(root)


def test_colour_mask_is_an_error(tmp_path: Path) -> None:
    root = _pairs(tmp_path, {"a": _square(1)})
    _png(root / "masks" / "a_mask.png", np.stack([_square(1), _square(2), _square(1)], axis=-1))
    ds = open_seg_dataset(root, label_names={1: "x"})
    with pytest.raises(DatasetError, match=r"a_mask\.png: .*3 differing colour channels; save the mask as a single"):
        ds.read(ds.items[0])


def test_fractional_mask_is_an_error(tmp_path: Path) -> None:
    root = _msd(tmp_path, {"0": "background", "1": "liver"})
    nib.save(nib.Nifti1Image(np.full((4, 5, 6), 0.5, np.float32), np.eye(4)), root / "labelsTr" / "liver_0.nii.gz")
    ds = open_seg_dataset(root)
    with pytest.raises(DatasetError, match=r"liver_0\.nii\.gz: .*not labels.*; save masks losslessly"):
        ds.read(ds.items[0])


def test_mask_on_another_grid_is_an_error(tmp_path: Path) -> None:
    """Same shape, different geometry: a mask shifted by 5 mm would overlay the wrong voxels."""
    root = _msd(tmp_path, {"0": "background", "1": "liver", "2": "tumour"})
    image = nib.load(root / "imagesTr" / "liver_0.nii.gz")
    shifted = image.affine.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), shifted), root / "labelsTr" / "liver_0.nii.gz")
    ds = open_seg_dataset(root)
    with pytest.raises(DatasetError, match=r"liver_0\.nii\.gz: the mask lies on another grid .*resample the mask"):
        ds.read(ds.items[0])
    assert (ds.read(ds.items[1])[1] == 1).sum() == 4  # the other case still reads
