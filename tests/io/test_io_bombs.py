"""Files that declare a huge image are refused from their header, before anything is decoded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from corrupt_files import nifti_bomb, png_bomb
from PIL import ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medsight.errors import ImageTooLargeError, UnreadableFileError
from medsight.io import SERVICE_MAX_VOXELS, read_image, read_image_file
from medsight.io.npz import read_medmnist

FIX = "crop or downsample it, or raise the limit with MEDSIGHT_MAX_VOXELS (medsight serve: --max-voxels)"


class Decoded(Exception):
    """Raised by a patched decoder: the reader got as far as decoding."""


def _never(*args: object, **kwargs: object) -> None:
    raise Decoded


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bombs")
    nifti_bomb(folder / "zeros.nii.gz", (1024, 1024, 512), "uint8")
    png_bomb(folder / "12k.png", 12000, 12000)
    png_bomb(folder / "20k.png", 20000, 20000)
    return folder


def test_nifti_bomb_is_refused_before_its_voxels_are_read(bombs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = bombs / "zeros.nii.gz"
    assert path.stat().st_size < 1_000_000  # 0.5 MB declaring 512 MiB of voxels
    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", _never)
    with pytest.raises(ImageTooLargeError) as err:
        read_image(path, max_voxels=SERVICE_MAX_VOXELS)
    assert str(err.value) == (
        f"{path}: the header declares 1024x1024x512 = 536,870,912 voxels, more than the limit of 67,108,864; {FIX}"
    )


@pytest.mark.parametrize(
    ("name", "pixels"), [("12k.png", "12000x12000x1 = 144,000,000"), ("20k.png", "20000x20000x1 = 400,000,000")]
)
def test_png_bomb_is_refused_before_it_is_decoded(
    bombs: Path, monkeypatch: pytest.MonkeyPatch, name: str, pixels: str
) -> None:
    monkeypatch.setattr(ImageFile.ImageFile, "load", _never)
    with pytest.raises(ImageTooLargeError) as err:
        read_image(bombs / name, max_voxels=SERVICE_MAX_VOXELS)
    assert f"{bombs / name}: the header declares {pixels} voxels, more than the limit of 67,108,864; {FIX}" == str(
        err.value
    )


def test_our_limit_decides_not_pillows(bombs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """400 million pixels is over Pillow's own bomb limit (179 million) but under the CLI's 2^30:
    Pillow must let it through to the decoder (patched here, so nothing is decoded)."""
    monkeypatch.setattr(ImageFile.ImageFile, "load", _never)
    with pytest.raises(Decoded):
        read_image_file(bombs / "20k.png", max_voxels=2**30)


def test_pillows_own_bomb_error_becomes_a_clear_per_file_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    path = png_bomb(tmp_path / "small.png", 300, 300)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # someone switched Pillow's check back on
    with pytest.raises(ImageTooLargeError) as err:
        read_image(path)
    assert str(err.value).startswith(f"{path}: Pillow's own limit refuses it as a decompression bomb")


def test_nrrd_sizes_are_checked_before_the_data_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.nrrd"
    nrrd.write(str(path), np.zeros((4, 4, 4), np.uint8))
    text = path.read_bytes().replace(b"sizes: 4 4 4", b"sizes: 1024 1024 512")
    path.write_bytes(text)
    monkeypatch.setattr(nrrd, "read_data", _never)
    with pytest.raises(ImageTooLargeError) as err:
        read_image(path, max_voxels=SERVICE_MAX_VOXELS)
    assert "the header declares 1024x1024x512 = 536,870,912 voxels, more than the limit of 67,108,864" in str(
        err.value
    )


def _ct(rows: int, columns: int, frames: int | None = None) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = "1.2.3.4", "CT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = np.zeros((frames or 1, rows, columns), np.uint16).tobytes() if rows * columns < 10**6 else b"\0" * 16
    return ds


def test_dicom_rows_columns_frames_are_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.dcm"
    _ct(8192, 8192, frames=4).save_as(path, enforce_file_format=True)
    monkeypatch.setattr("medsight.io.dicom.pixel_array", _never)
    with pytest.raises(ImageTooLargeError) as err:
        read_image(path, max_voxels=SERVICE_MAX_VOXELS)
    assert str(err.value).startswith(
        f"{path}: the header (frames x rows x columns x samples) declares 4x8192x8192x1 = 268,435,456 voxels, "
        "more than the limit of 67,108,864"
    )


def test_dicom_series_counts_every_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in range(3):
        ds = _ct(16, 16)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, 2.0 * k]
        ds.save_as(tmp_path / f"{k}.dcm", enforce_file_format=True)
    assert read_image(tmp_path, max_voxels=3 * 16 * 16).array.shape == (1, 3, 16, 16)
    monkeypatch.setattr("medsight.io.dicom.pixel_array", _never)
    with pytest.raises(ImageTooLargeError) as err:
        read_image(tmp_path, max_voxels=3 * 16 * 16 - 1)
    assert str(err.value).startswith(
        f"{tmp_path}: the series (3 slice headers, slices x rows x columns x samples) declares 3x16x16x1 = 768 "
        "voxels, more than the limit of 767"
    )


def test_the_environment_variable_sets_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = png_bomb(tmp_path / "x.png", 16, 16)
    assert read_image(path).array.shape == (1, 16, 16)
    monkeypatch.setenv("MEDSIGHT_MAX_VOXELS", "255")
    with pytest.raises(ImageTooLargeError, match="16x16x1 = 256 voxels, more than the limit of 255"):
        read_image(path)


def test_medmnist_array_headers_are_checked_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tiny.npz"
    np.savez_compressed(path, train_images=np.zeros((10, 28, 28), np.uint8), train_labels=np.zeros((10, 1)))
    assert read_medmnist(path)["train"][0].shape == (10, 28, 28)
    monkeypatch.setattr(np.lib.format, "read_array", _never)
    with pytest.raises(ImageTooLargeError) as err:
        read_medmnist(path, max_voxels=28 * 28 - 1)
    assert "each image of train_images declares 28x28 = 784 voxels, more than the limit of 783" in str(err.value)


def test_the_medmnist_limit_is_per_image_not_per_archive(tmp_path: Path) -> None:
    path = tmp_path / "many.npz"
    np.savez_compressed(path, train_images=np.zeros((10, 28, 28), np.uint8), train_labels=np.zeros((10, 1)))
    assert read_medmnist(path, max_voxels=28 * 28)["train"][0].shape == (10, 28, 28)


def test_a_refused_bomb_costs_no_memory(bombs: Path) -> None:
    """In a fresh process: decoding would need >= 512 MiB (uint8) and 2 GiB as float32; the refusal
    must not come near it (growth of the peak resident size under 256 MiB)."""
    script = (
        "import resource, sys\n"
        "from medsight.io import SERVICE_MAX_VOXELS, read_image\n"
        "from medsight.errors import ImageTooLargeError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_image(sys.argv[1], max_voxels=SERVICE_MAX_VOXELS)\n"
        "except ImageTooLargeError:\n"
        "    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(bombs / "zeros.nii.gz")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 256 * 2**20


def test_a_truncated_bomb_is_still_refused_by_size_not_by_content(bombs: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.nii.gz"
    path.write_bytes((bombs / "zeros.nii.gz").read_bytes()[:20000])
    with pytest.raises(ImageTooLargeError):
        read_image(path, max_voxels=SERVICE_MAX_VOXELS)
    with pytest.raises(UnreadableFileError):
        read_image(path, max_voxels=2**30)


@pytest.mark.parametrize("encoding", ["gzip", "bzip2"])
def test_a_nrrd_payload_that_inflates_past_its_sizes_is_refused_before_pynrrd_inflates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """pynrrd inflates the whole payload whatever ``sizes`` says: 2x2 declared, 64 MiB of zeros sent."""
    import bz2
    import gzip

    payload = (gzip.compress if encoding == "gzip" else bz2.compress)(bytes(64 << 20))
    assert len(payload) < 100_000
    path = tmp_path / "small_header.nrrd"
    path.write_bytes(f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 2 2\nencoding: {encoding}\n\n".encode() + payload)
    monkeypatch.setattr(nrrd, "read_data", _never)
    with pytest.raises(ImageTooLargeError) as err:
        read_image(path)
    assert str(err.value).startswith(
        f"{path}: its {encoding} data inflates to more than 32 bytes, more than its header declares"
    )


def test_a_compressed_nrrd_that_holds_what_it_declares_still_reads(tmp_path: Path) -> None:
    data = np.arange(6 * 7 * 8, dtype=np.float64).reshape(6, 7, 8)
    for encoding in ("gzip", "bzip2"):
        path = tmp_path / f"{encoding}.nrrd"
        nrrd.write(str(path), data, {"encoding": encoding}, index_order="F")
        np.testing.assert_array_equal(read_image(path).array[0], data)


def test_a_deflated_dicom_that_inflates_past_the_limit_is_refused_before_pydicom_inflates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydicom inflates a deflated data set whole before parsing it: 16x16 declared, 128 MiB inflated."""
    import io
    import zlib

    from corrupt_files import with_transfer_syntax

    from medsight.io.dicom_checks import DEFLATED_HEADER_BYTES, _file_meta_end

    plain = io.BytesIO()
    _ct(16, 16).save_as(plain, enforce_file_format=True)
    meta_end, _ = _file_meta_end(io.BytesIO(plain.getvalue()))
    big_element = b"\x09\x00\x00\x10OB\x00\x00" + (128 << 20).to_bytes(4, "little")  # (0009,1000) OB
    body = plain.getvalue()[meta_end:] + big_element
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(body) + b"".join(deflater.compress(bytes(1 << 24)) for _ in range(8))
    path = tmp_path / "deflated.dcm"
    meta = with_transfer_syntax(plain.getvalue()[:meta_end], "1.2.840.10008.1.2.1.99")
    path.write_bytes(meta + stream + deflater.flush())
    assert path.stat().st_size < 1_000_000
    monkeypatch.setattr("pydicom.dcmread", _never)
    with pytest.raises(ImageTooLargeError) as err:
        read_image(path, max_voxels=256)
    limit = 256 * 8 + DEFLATED_HEADER_BYTES
    assert str(err.value).startswith(
        f"{path}: its deflate data inflates to more than {limit:,} bytes, more than its header declares"
    )


def test_a_real_deflated_dicom_still_reads() -> None:
    from pydicom.data import get_testdata_file

    sample = read_image(get_testdata_file("image_dfl.dcm"), max_voxels=SERVICE_MAX_VOXELS)
    assert sample.array.shape == (1, 512, 512) and sample.meta["transfer_syntax"] == "1.2.840.10008.1.2.1.99"
