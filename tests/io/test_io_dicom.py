"""Single DICOM files: HU rescale, photometrics, frames, compression, geometry and bad input."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from medsight.errors import ConfigError, MissingDecoderError, UnreadableFileError, UnsupportedFileError
from medsight.io import read_dicom_file, read_image
from medsight.io.phi import PHI_KEYWORDS
from medsight.io.windowing import apply_window


@pytest.fixture(scope="module")
def pydicom_dir(shared_data: Path) -> Path:
    return shared_data / "dicom" / "pydicom"


def test_ct_is_in_hounsfield_units(pydicom_dir: Path) -> None:
    sample = read_dicom_file(pydicom_dir / "CT_small.dcm")
    assert sample.array.shape == (1, 128, 128) and sample.array.dtype == np.float32
    assert sample.spacing == pytest.approx((0.661468, 0.661468))
    # stored 0..~2200 with intercept -1024: the corner is air, the whole slice lies in the HU range
    assert -1000 < sample.array[0, :4, :4].mean() < -800
    assert sample.array.min() >= -1100 and sample.array.max() <= 3100
    assert sample.meta["modality"] == "CT"
    assert sample.meta["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert sample.meta["rows"] == 128 and sample.meta["cols"] == 128


def test_affine_maps_the_first_pixel_to_image_position_in_ras(pydicom_dir: Path) -> None:
    sample = read_dicom_file(pydicom_dir / "CT_small.dcm")
    # ImagePositionPatient (LPS) = (-158.135803, -179.035797, -75.699997)
    assert sample.affine @ [0, 0, 0, 1] == pytest.approx([158.135803, 179.035797, -75.699997, 1])
    # one column to the right moves towards patient left (LPS +x), i.e. RAS -x, by the column spacing
    step = sample.affine @ [0, 1, 0, 1] - sample.affine @ [0, 0, 0, 1]
    assert step[:3] == pytest.approx([-0.661468, 0, 0])


def test_meta_is_json_and_free_of_patient_fields(pydicom_dir: Path) -> None:
    sample = read_dicom_file(pydicom_dir / "CT_small.dcm")
    text = json.dumps(sample.meta)
    assert not set(sample.meta) & set(PHI_KEYWORDS)
    assert "CompressedSamples" not in text  # the PatientName of this file
    assert sample.meta["SOPInstanceUID"] and sample.meta["SeriesInstanceUID"] and sample.meta["StudyInstanceUID"]


def test_preset_window_maps_hu_to_unit_range(pydicom_dir: Path) -> None:
    raw = read_dicom_file(pydicom_dir / "CT_small.dcm").array
    windowed = read_dicom_file(pydicom_dir / "CT_small.dcm", window="abdomen")
    np.testing.assert_allclose(windowed.array, apply_window(raw, 40, 400))
    assert windowed.array.min() == 0.0 and windowed.array.max() == 1.0
    assert windowed.meta["window"] == [40.0, 400.0]


def test_file_window_uses_the_dicom_voi(pydicom_dir: Path) -> None:
    raw = read_dicom_file(pydicom_dir / "MR_small.dcm").array
    sample = read_dicom_file(pydicom_dir / "MR_small.dcm", window="file")
    assert sample.meta["window"] == [600.0, 1600.0]
    np.testing.assert_allclose(sample.array, apply_window(raw, 600, 1600))


def test_monochrome1_is_inverted_so_high_is_bright(pydicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_dir / "CT_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    normal = read_dicom_file(pydicom_dir / "CT_small.dcm").array
    inverted = read_dicom_file(tmp_path / "m1.dcm")
    # signed 16-bit stored range, rescaled by intercept -1024: mirror sum = -32768 + 32767 - 2 * 1024
    np.testing.assert_array_equal(inverted.array + normal, np.full_like(normal, -2049.0))
    assert inverted.meta["inverted"] is True
    windowed = read_dicom_file(tmp_path / "m1.dcm", window="abdomen").array
    np.testing.assert_allclose(windowed, 1.0 - apply_window(normal, 40, 400))


def test_multiframe_frames_become_depth(pydicom_dir: Path) -> None:
    volume = read_dicom_file(pydicom_dir / "emri_small.dcm")
    assert volume.array.shape == (1, 10, 64, 64)
    assert volume.spacing[0] == pytest.approx(1.2)  # SpacingBetweenSlices; no functional groups here
    one = read_dicom_file(pydicom_dir / "emri_small.dcm", frame=3)
    assert one.array.shape == (1, 64, 64)
    np.testing.assert_array_equal(one.array[0], volume.array[0, 3])


def test_enhanced_ct_geometry_and_rescale_come_from_functional_groups(pydicom_dir: Path) -> None:
    sample = read_dicom_file(pydicom_dir / "eCT_Supplemental.dcm")
    assert sample.array.shape == (1, 2, 512, 512)
    # frame positions z = -159 and -149: 10 mm apart; PixelMeasures 0.388672; intercept -1024
    assert sample.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    assert sample.array.min() == -1024.0
    assert sample.affine @ [1, 0, 0, 1] - sample.affine @ [0, 0, 0, 1] == pytest.approx([0, 0, 10, 0])


def test_frame_out_of_range_names_the_valid_frames(pydicom_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"frame=5 .* 2 frame\(s\); pick 0..1"):
        read_dicom_file(pydicom_dir / "eCT_Supplemental.dcm", frame=5)


def test_rgb_ultrasound_is_channel_first(pydicom_dir: Path) -> None:
    sample = read_dicom_file(pydicom_dir / "US1_UNCR.dcm")
    expected = pydicom.dcmread(pydicom_dir / "US1_UNCR.dcm").pixel_array
    assert sample.array.shape == (3, 480, 640)
    np.testing.assert_array_equal(sample.array, np.moveaxis(expected, -1, 0))


def test_palette_colour_goes_through_its_lookup_table(pydicom_dir: Path) -> None:
    sample = read_dicom_file(pydicom_dir / "OBXXXX1A.dcm")
    assert sample.array.shape == (3, 600, 800)
    assert sample.array.min() >= 0 and sample.array.max() <= 255


def _rgb_reference(pydicom_dir: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    ds = pydicom.dcmread(pydicom_dir / "US1_UNCR.dcm")
    return ds, ds.pixel_array.copy()


def test_uncompressed_ybr_is_converted_to_rgb(pydicom_dir: Path, tmp_path: Path) -> None:
    ds, rgb = _rgb_reference(pydicom_dir)
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.save_as(tmp_path / "ybr.dcm")
    sample = read_dicom_file(tmp_path / "ybr.dcm")
    assert sample.meta["photometric"] == "YBR_FULL"
    assert np.abs(sample.array - np.moveaxis(rgb, -1, 0)).max() <= 2


def test_jpeg_baseline_ybr_decodes_to_rgb(pydicom_dir: Path, tmp_path: Path) -> None:
    ds, rgb = _rgb_reference(pydicom_dir)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95, subsampling=1)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(tmp_path / "jpeg.dcm")
    sample = read_dicom_file(tmp_path / "jpeg.dcm")
    assert sample.array.shape == (3, 480, 640)
    assert np.abs(sample.array - np.moveaxis(rgb, -1, 0)).mean() < 3


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless], ids=lambda s: s.keyword)
def test_compressed_twin_decodes_to_the_uncompressed_pixels(pydicom_dir: Path, tmp_path: Path, syntax) -> None:
    ds = pydicom.dcmread(pydicom_dir / "JPEG2000_UNC.dcm")
    ds.compress(syntax)
    ds.save_as(tmp_path / "compressed.dcm")
    compressed = read_dicom_file(tmp_path / "compressed.dcm")
    uncompressed = read_dicom_file(pydicom_dir / "JPEG2000_UNC.dcm")
    assert compressed.meta["transfer_syntax"] == str(syntax)
    np.testing.assert_array_equal(compressed.array, uncompressed.array)


@pytest.mark.parametrize(
    ("syntax", "package"),
    [
        (JPEG2000Lossless, "pip install pylibjpeg pylibjpeg-openjpeg"),
        (JPEGLSLossless, "pip install pyjpegls"),
        (RLELossless, "pip install pylibjpeg pylibjpeg-rle"),
    ],
    ids=lambda v: getattr(v, "keyword", v),
)
def test_missing_decoder_names_the_package_to_install(
    pydicom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax, package: str
) -> None:
    ds = pydicom.dcmread(pydicom_dir / "JPEG2000_UNC.dcm")
    ds.compress(syntax)
    path = tmp_path / "compressed.dcm"
    ds.save_as(path)
    # the state pydicom is in when no plugin for this syntax is installed
    monkeypatch.setattr(get_decoder(syntax), "_available", {})
    with pytest.raises(MissingDecoderError) as err:
        read_dicom_file(path)
    message = str(err.value)
    assert str(path) in message and syntax.name in message and package in message


def test_file_without_preamble_or_meta_header_still_reads(pydicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_dir / "CT_small.dcm")
    path = tmp_path / "IM0001"
    with path.open("wb") as handle:
        out = DicomFileLike(handle)
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, ds)
    np.testing.assert_array_equal(read_image(path).array, read_dicom_file(pydicom_dir / "CT_small.dcm").array)


def _truncated_pixels(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _truncated_header(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[:1000])
    return dst


def _text(src: Path, dst: Path) -> Path:
    dst.write_text("patient list\nthis is not an image\n" * 10)
    return dst


def _empty(src: Path, dst: Path) -> Path:
    dst.write_bytes(b"")
    return dst


def _no_pixels(src: Path, dst: Path) -> Path:
    ds = pydicom.dcmread(src)
    del ds.PixelData
    ds.save_as(dst)
    return dst


@pytest.mark.parametrize(
    ("make", "error", "needles"),
    [
        (_empty, UnreadableFileError, ["empty (0 bytes)", "re-export"]),
        (_text, UnreadableFileError, ["not a DICOM file", "check what the file really is"]),
        (_truncated_pixels, UnreadableFileError, ["pixel data is shorter than", "file is truncated", "copy it again"]),
        (_truncated_header, UnreadableFileError, ["truncated or corrupt", "re-export"]),
        (_no_pixels, UnsupportedFileError, ["no pixel data", "pass an image file"]),
    ],
    ids=["empty", "text", "truncated-pixels", "truncated-header", "no-pixel-data"],
)
def test_bad_files_name_the_file_and_the_fix(pydicom_dir: Path, tmp_path: Path, make, error, needles) -> None:
    path = make(pydicom_dir / "CT_small.dcm", tmp_path / "bad.dcm")
    with pytest.raises(error) as err:
        read_image(path)
    assert str(path) in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


def test_structured_report_is_not_an_image(shared_data: Path, tmp_path: Path) -> None:
    path = shutil.copy(shared_data / "dicom/dcmqi/sr-example/sr.dcm", tmp_path / "sr.dcm")
    with pytest.raises(UnsupportedFileError, match="Comprehensive SR Storage.*not an image"):
        read_dicom_file(path)


def test_ct_without_rescale_tags_uses_the_stored_values_and_says_so(pydicom_dir: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The stated fallback (issue 33, bad input): slope 1, intercept 0, recorded in the sample and warned
    about for a CT, whose values are taken as HU."""
    import logging

    from medsight.io.dicom import NO_RESCALE

    ds = pydicom.dcmread(pydicom_dir / "CT_small.dcm")
    stored = ds.pixel_array.astype(np.float32)
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(tmp_path / "norescale.dcm")
    with caplog.at_level(logging.WARNING, logger="medsight.io.dicom"):
        sample = read_dicom_file(tmp_path / "norescale.dcm")
    np.testing.assert_array_equal(sample.array[0], stored)
    assert sample.meta["rescale"] == NO_RESCALE
    assert "norescale.dcm: a CT image without RescaleSlope/RescaleIntercept" in caplog.text
    assert read_dicom_file(pydicom_dir / "CT_small.dcm").meta["rescale"] == "slope 1, intercept -1024"
