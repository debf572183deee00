"""NRRD: layout, spacing and the RAS affine from space directions/origin/space; bad files."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest

from medsight.errors import UnreadableFileError
from medsight.io.dicom_series import read_dicom_series
from medsight.io.nrrd import read_nrrd

SEGS = "dicom/dcmqi/segmentations"


def test_slicer_label_map_matches_its_ct_series(shared_data: Path) -> None:
    sample = read_nrrd(shared_data / SEGS / "liver_seg.nrrd")
    assert sample.array.shape == (1, 512, 512, 3) and sample.array.dtype == np.float32
    assert sample.spacing == pytest.approx((0.810547, 0.810547, 1.0))
    assert int(sample.array.sum()) == 107098  # liver voxels
    assert sample.meta["format"] == "nrrd" and sample.meta["space"] == "left-posterior-superior"
    # NRRD axes are (column, row, slice); the DICOM series is (slice, row, column).
    ct = read_dicom_series(shared_data / SEGS / "ct-3slice")
    np.testing.assert_allclose(sample.affine[:, [2, 1, 0, 3]], ct.affine, atol=1e-4)


@pytest.mark.parametrize(
    ("space", "signs"),
    [
        ("left-posterior-superior", (-1, -1, 1)),
        ("left-anterior-superior", (-1, 1, 1)),
        ("right-anterior-superior", (1, 1, 1)),
    ],
)
def test_affine_is_ras(tmp_path: Path, space: str, signs: tuple[int, int, int]) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    directions = np.array([[0.5, 0.0, 0.0], [0.0, 0.75, 0.1], [0.0, 0.0, 2.0]])
    origin = np.array([10.0, -20.0, 30.0])
    path = tmp_path / "x.nrrd"
    header = {"space": space, "space directions": directions, "space origin": origin}
    nrrd.write(str(path), data, header, index_order="F")
    sample = read_nrrd(path)
    np.testing.assert_array_equal(sample.array[0], data)
    expected = np.eye(4)
    expected[:3, :3] = directions.T
    expected[:3, 3] = origin
    expected[:3] *= np.array(signs, dtype=float)[:, None]
    np.testing.assert_allclose(sample.affine, expected)
    assert sample.spacing == pytest.approx((0.5, np.hypot(0.75, 0.1), 2.0))


def test_vector_axis_becomes_channels(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((3, 7, 8)).astype(np.float32)
    path = tmp_path / "rgb.nrrd"
    header = {"kinds": ["RGB-color", "domain", "domain"], "spacings": [np.nan, 0.3, 0.4]}
    nrrd.write(str(path), data, header, index_order="F")
    sample = read_nrrd(path)
    assert sample.array.shape == (3, 7, 8) and sample.spacing == pytest.approx((0.3, 0.4))
    np.testing.assert_allclose(sample.array, data)


@pytest.mark.parametrize("content", [b"", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4\n", b"not nrrd at all"])
def test_bad_files_say_which_file_and_what_to_do(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.nrrd"
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError) as info:
        read_nrrd(path)
    assert str(path) in str(info.value) and "save the NRRD file again" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match="no such file; check the path"):
        read_nrrd(tmp_path / "nope.nrrd")


def test_read_image_dispatches_nrrd(shared_data: Path) -> None:
    from medsight.io import is_image_file, read_image

    path = shared_data / "dicom" / "dcmqi" / "segmentations" / "liver_seg.nrrd"
    assert is_image_file(path)
    sample = read_image(path)
    assert sample.meta["format"] == "nrrd" and sample.spatial_shape == (512, 512, 3)
