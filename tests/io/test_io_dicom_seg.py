"""DICOM SEG: labels aligned with the source series, names, overlaps, wrong series, bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medsight.errors import DatasetError, UnreadableFileError, UnsupportedFileError
from medsight.io.dicom_seg import read_dicom_seg
from medsight.io.nrrd import read_nrrd

SEGS = "dicom/dcmqi/segmentations"


def _frame_labels(seg_path: Path, slice_uids: list[str]) -> np.ndarray:
    """Labels rebuilt by hand from the raw SEG frames: later (higher) segments painted last."""
    seg = pydicom.dcmread(seg_path)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    labels = np.zeros((len(slice_uids), seg.Rows, seg.Columns), np.uint16)
    groups = seg.PerFrameFunctionalGroupsSequence
    order = sorted(range(len(groups)), key=lambda i: groups[i].SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    for i in order:
        number = groups[i].SegmentIdentificationSequence[0].ReferencedSegmentNumber
        uid = groups[i].DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        labels[slice_uids.index(uid)][frames[i] > 0] = number
    return labels


def _slice_uids(image_meta: dict) -> list[str]:
    return [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in image_meta["slice_files"]]


def test_liver_seg_on_ct(shared_data: Path) -> None:
    root = shared_data / SEGS
    image, labels, names = read_dicom_seg(root / "liver.dcm", root / "ct-3slice")
    assert image.array.shape == (1, 3, 512, 512)
    assert labels.shape == (3, 512, 512) and labels.dtype == np.uint16
    assert names == {1: "Liver"}
    assert 0 < np.median(image.array[0][labels == 1]) < 200  # soft-tissue HU
    expected = _frame_labels(root / "liver.dcm", _slice_uids(image.meta))
    np.testing.assert_array_equal((labels == 1).sum(axis=(1, 2)), (expected == 1).sum(axis=(1, 2)))
    np.testing.assert_array_equal(labels, expected)
    # The NRRD the SEG was made from, (column, row, slice) -> (slice, row, column): same voxels.
    source = read_nrrd(root / "liver_seg.nrrd").array[0].transpose(2, 1, 0)
    np.testing.assert_array_equal(labels, source)


def test_overlapping_segments_later_wins(shared_data: Path) -> None:
    root = shared_data / SEGS
    image, labels, names = read_dicom_seg(root / "partial_overlaps.dcm", root / "ct-3slice")
    assert names == {1: "GREEN", 2: "ORANGE", 3: "PURPLE", 4: "LIGHT_BLUE", 5: "DARK_BLUE"}
    expected = _frame_labels(root / "partial_overlaps.dcm", _slice_uids(image.meta))
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, 5}


def _copy_series(src: Path, dst: Path, keep: int = 3, series_uid: str | None = None) -> Path:
    dst.mkdir()
    for path in sorted(src.glob("*.dcm"))[:keep]:
        if series_uid is None:
            shutil.copy(path, dst / path.name)
        else:
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID = series_uid
            ds.save_as(dst / path.name)
    return dst


def test_seg_of_another_series_names_both_uids(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / SEGS
    folder = _copy_series(root / "ct-3slice", tmp_path / "other", series_uid="1.2.3.4.5")
    referenced = hd.seg.segread(root / "liver.dcm").ReferencedSeriesSequence[0].SeriesInstanceUID
    with pytest.raises(DatasetError) as info:
        read_dicom_seg(root / "liver.dcm", folder)
    text = str(info.value)
    assert referenced in text and "1.2.3.4.5" in text and "liver.dcm" in text and "pass the folder" in text


def test_missing_slice_is_refused(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / SEGS
    folder = _copy_series(root / "ct-3slice", tmp_path / "partial", keep=2)
    with pytest.raises(DatasetError, match="not found in .*copy the complete series"):
        read_dicom_seg(root / "liver.dcm", folder)


@pytest.mark.parametrize(
    ("make", "error", "fix"),
    [
        (lambda root, p: p.write_bytes(b""), UnreadableFileError, "empty"),
        (lambda root, p: shutil.copy(root / "ct-3slice/01.dcm", p), UnsupportedFileError, "pass the SEG file"),
    ],
    ids=["empty", "ct-not-seg"],
)
def test_bad_seg_file(shared_data: Path, tmp_path: Path, make, error: type, fix: str) -> None:
    root = shared_data / SEGS
    path = tmp_path / "seg.dcm"
    make(root, path)
    with pytest.raises(error) as info:
        read_dicom_seg(path, root / "ct-3slice")
    assert str(path) in str(info.value) and fix in str(info.value)


def test_seg_frame_off_its_slice_is_refused(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / SEGS
    folder = tmp_path / "shifted"
    folder.mkdir()
    for path in sorted((root / "ct-3slice").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 5.0, *ds.ImagePositionPatient[1:]]
        ds.save_as(folder / path.name)
    with pytest.raises(DatasetError, match="SEG frame 1 sits at .* mm but its source slice"):
        read_dicom_seg(root / "liver.dcm", folder)
