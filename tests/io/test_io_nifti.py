"""NIfTI: layout, spacing and affine as nibabel gives them, NaN and dimension checks, writing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsight.errors import InvalidImageError, UnreadableFileError
from medsight.io import read_image, read_nifti, write_nifti


def _save(data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def test_example_ct_keeps_shape_spacing_and_affine(shared_data: Path) -> None:
    path = shared_data / "nifti/example_ct_sm.nii.gz"
    sample = read_nifti(path)
    assert sample.array.shape == (1, 122, 101, 30) and sample.array.dtype == np.float32
    assert sample.spacing == (3.0, 3.0, 3.0)
    np.testing.assert_allclose(sample.affine, nib.load(path).affine)
    assert sample.array.min() == -1100.0 and sample.array.max() == 1207.0  # HU
    assert sample.meta["format"] == "nifti" and sample.meta["dtype"] == "int16"


def test_oblique_affine_round_trips(tmp_path: Path) -> None:
    rotation = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-100.0, 20.5, 7.25]
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = write_nifti(data, affine, tmp_path / "oblique.nii.gz")
    sample = read_nifti(path)
    np.testing.assert_array_equal(sample.array[0], data)
    np.testing.assert_allclose(sample.affine, affine, atol=1e-5)
    assert sample.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert nib.load(path).header.get_data_dtype() == np.int16


def test_bool_mask_is_written_as_uint8(tmp_path: Path) -> None:
    mask = np.zeros((3, 3, 2), dtype=bool)
    mask[1, 1, 0] = True
    path = write_nifti(mask, np.eye(4), tmp_path / "mask.nii")
    assert nib.load(path).get_data_dtype() == np.uint8
    assert read_nifti(path).array.sum() == 1.0


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((6, 7), (1, 6, 7)), ((6, 7, 8), (1, 6, 7, 8)), ((6, 7, 8, 2), (2, 6, 7, 8))],
)
def test_layout_is_channel_first(tmp_path: Path, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    sample = read_nifti(_save(data, tmp_path / "x.nii.gz"))
    assert sample.array.shape == expected
    assert len(sample.spacing) == sample.spatial_dims == min(len(shape), 3)
    if len(shape) == 4:
        np.testing.assert_array_equal(sample.array[1], data[..., 1])


@pytest.mark.parametrize("fill", ["one", "all"])
def test_nan_voxels_are_refused(tmp_path: Path, fill: str) -> None:
    data = np.zeros((4, 4, 4), dtype=np.float32)
    if fill == "one":
        data[1, 2, 3] = np.nan
    else:
        data[:] = np.nan
    path = _save(data, tmp_path / "nan.nii.gz")
    with pytest.raises(InvalidImageError) as err:
        read_image(path)
    bad = 1 if fill == "one" else 64
    assert str(path) in str(err.value) and f"{bad} NaN" in str(err.value) and "nan_to_num" in str(err.value)


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4, 5, 6)], ids=["1D", "5D"])
def test_wrong_number_of_dimensions(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = _save(np.zeros(shape, dtype=np.float32), tmp_path / "odd.nii")
    with pytest.raises(InvalidImageError) as err:
        read_nifti(path)
    assert str(path) in str(err.value) and f"{len(shape)} dimension(s)" in str(err.value)
    assert "save it as (X, Y[, Z[, channels]])" in str(err.value)


@pytest.mark.parametrize("cut", ["empty", "half"])
def test_empty_or_truncated_files_are_unreadable(tmp_path: Path, cut: str) -> None:
    data = np.random.default_rng(1).integers(-1000, 1000, (20, 20, 20)).astype(np.int16)
    path = _save(data, tmp_path / "ct.nii.gz")
    content = path.read_bytes()
    path.write_bytes(b"" if cut == "empty" else content[: len(content) // 2])
    with pytest.raises(UnreadableFileError) as err:
        read_image(path)
    assert str(path) in str(err.value) and "write the NIfTI file again" in str(err.value)
