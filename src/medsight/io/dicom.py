"""Single DICOM files: open safely, decode pixels, rescale, and return a :class:`Sample`.

What comes out (see :mod:`medsight.io` for the whole contract):

* grey single frame -> ``(1, H, W)``; multi-frame -> ``(1, F, H, W)`` (frames on the
  depth axis), or ``(1, H, W)`` for ``frame=i``; colour (RGB, YBR_* converted to RGB
  by pydicom, PALETTE COLOR through its lookup table, scaled to 0..255) -> ``(3, ...)``.
* values after RescaleSlope/RescaleIntercept (HU for CT), per frame for enhanced files;
  MONOCHROME1 is inverted so that high always means bright.
* with a window, the windowed values in ``[0, 1]`` (window first, then MONOCHROME1
  inversion, as DICOM's display pipeline does).

Damaged files: NumberOfFrames x Rows x Columns x SamplesPerPixel is checked against the
voxel limit (:mod:`medsight.io.limits`) before any pixel is decoded; a file that ends before
its pixel data, or whose pixel data is shorter than its header declares, is reported as
truncated; anything else pydicom or a decoder raises becomes an
:class:`~medsight.errors.UnreadableFileError` naming the file.

Example:
    >>> s = read_dicom_file("CT_small.dcm", window="abdomen")
    >>> s.array.shape, s.meta["modality"]
    ((1, 128, 128), 'CT')
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medsight.data.sample import Sample
from medsight.errors import ConfigError, MissingDecoderError, UnreadableFileError, UnsupportedFileError
from medsight.io import dicom_geometry as geo
from medsight.io.limits import DECODE_ERRORS, check_voxels
from medsight.io.windowing import Window, apply_window, resolve_window

log = logging.getLogger(__name__)

#: What pydicom raises on a damaged file (it has no single base class for these).
READ_ERRORS = (InvalidDicomError, BytesLengthException, *DECODE_ERRORS)
#: The SOP class of a DICOMDIR, an index that refers to other files.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

_REEXPORT = "re-export the file from the PACS or scanner"
_COPY_AGAIN = "export or copy it again"
UNDEFINED_LENGTH = 0xFFFFFFFF
_JPEG = "pip install pylibjpeg pylibjpeg-libjpeg"
_J2K = "pip install pylibjpeg pylibjpeg-openjpeg"
#: The package that decodes each compressed transfer syntax (by UID prefix match).
DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": _JPEG,
    "1.2.840.10008.1.2.4.51": _JPEG,
    "1.2.840.10008.1.2.4.57": _JPEG,
    "1.2.840.10008.1.2.4.70": _JPEG,
    "1.2.840.10008.1.2.4.80": "pip install pyjpegls (or python-gdcm)",
    "1.2.840.10008.1.2.4.81": "pip install pyjpegls (or python-gdcm)",
    "1.2.840.10008.1.2.4.90": _J2K,
    "1.2.840.10008.1.2.4.91": _J2K,
    "1.2.840.10008.1.2.4.201": _J2K,
    "1.2.840.10008.1.2.4.202": _J2K,
    "1.2.840.10008.1.2.4.203": _J2K,
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle",
}
#: DICOM attributes copied into ``Sample.meta`` under their own keywords.
_META_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "SeriesDescription",
)


def is_dicom_file(path: str | Path) -> bool:
    """Cheap check: the 'DICM' marker at byte 128, or a header that starts like DICOM.

    Files without the 128-byte preamble (old archives, DICOMDIR trees) start directly
    with a group 0002 or 0008 tag; those count too. Reads at most 132 bytes.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or (len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00"))


def open_dataset(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file's dataset, turning every failure into a :class:`MedsightError`.

    Args:
        path: the file.
        stop_before_pixels: skip the pixel data (fast header scan).

    Raises:
        UnreadableFileError: missing, empty, not DICOM, or a header that cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(path, "no such file", "check the path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "the file is empty (0 bytes)", _REEXPORT)
    if not is_dicom_file(path):
        raise UnreadableFileError(
            path,
            "not a DICOM file (no 'DICM' marker and no DICOM header)",
            "check what the file really is; medsight reads DICOM, NIfTI and PNG/JPEG/TIFF/GIF/BMP",
        )
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
        list(ds)  # pydicom converts elements lazily: touch each so a cut-off header fails here
    except READ_ERRORS as err:
        raise UnreadableFileError(
            path, f"the DICOM header cannot be parsed, the file is truncated or corrupt ({err})", _REEXPORT
        ) from err
    if not any(key in ds for key in ("SOPClassUID", "SOPInstanceUID", "Modality")) and not is_dicomdir(ds):
        raise UnreadableFileError(
            path, "not a DICOM file (no SOP Class, SOP Instance or Modality)", _REEXPORT
        )
    _fill_transfer_syntax(ds)
    return ds


def read_dicom_file(
    path: str | Path,
    *,
    window: Window = None,
    frame: int | None = None,
    max_voxels: int | None = None,
    self_contained: bool = False,
) -> Sample:
    """Read one DICOM file into a :class:`Sample`.

    Args:
        path: the ``.dcm`` file.
        window: None for rescaled values, or a window (preset name, ``"file"``,
            ``(center, width)``) for values in ``[0, 1]``; see :mod:`medsight.io.windowing`.
        frame: for a multi-frame file, read only this frame (0-based) as a 2D image.
        max_voxels: the most values to decode (frames x rows x columns x samples); None
            for the default limit.
        self_contained: say that a DICOMDIR refers to other files, as the service does.

    Raises:
        UnreadableFileError: empty, not DICOM, truncated or corrupt.
        ImageTooLargeError: the header declares more values than ``max_voxels``.
        UnsupportedFileError: no pixel data (e.g. a structured report, a DICOMDIR) or a
            transfer syntax pydicom cannot decode.
        MissingDecoderError: a compressed file whose decoder package is not installed.
        ConfigError: an unknown window or a frame index out of range.
    """
    path = Path(path)
    ds = open_dataset(path)
    with corrupt_as_unreadable(path):
        _refuse_directory(path, ds, self_contained)
        n_frames = number_of_frames(ds)
        if frame is not None and not 0 <= frame < n_frames:
            raise ConfigError(
                path, f"frame={frame} but the file has {n_frames} frame(s)", f"pick 0..{n_frames - 1}"
            )
        shape = declared_shape(ds)
        check_voxels(path, shape if frame is None else shape[1:], max_voxels, source=_DECLARED)
        values = dicom_values(ds, path, frame=frame)
        values, window_used = present(values, ds, window)
        spacing, affine = _file_geometry(ds, values.ndim - 1, frame)
        meta = dicom_meta(ds, path)
    meta.update(n_frames=n_frames, frame=frame, window=window_used)
    return Sample(values, spacing=spacing, affine=affine, meta=meta)


_DECLARED = "the header (frames x rows x columns x samples)"


@contextmanager
def corrupt_as_unreadable(path: str | Path) -> Iterator[None]:
    """Turn what pydicom or a pixel decoder raises on a damaged file into an :class:`UnreadableFileError`."""
    try:
        yield
    except READ_ERRORS as err:
        raise UnreadableFileError(
            path, f"the DICOM file is corrupt ({type(err).__name__}: {err})", _REEXPORT
        ) from err


def declared_shape(ds: Dataset) -> tuple[int, int, int, int]:
    """``(frames, rows, columns, samples per pixel)`` as the header declares them, before decoding."""
    return number_of_frames(ds), int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), int(
        ds.get("SamplesPerPixel") or 1
    )


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent."""
    return max(int(ds.get("NumberOfFrames") or 1), 1)


def dicom_values(ds: Dataset, path: str | Path, *, frame: int | None = None) -> np.ndarray:
    """Decoded pixels with modality rescale, channel-first float32: ``(C, H, W)`` or ``(C, F, H, W)``.

    Args:
        ds: a dataset from :func:`open_dataset` (with pixels).
        path: the file, for error messages.
        frame: one frame of a multi-frame file, or None for all.
    """
    raw = _decode(ds, path, frame)
    n_frames = number_of_frames(ds)
    multi = n_frames > 1 and frame is None
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        raw = _palette_to_rgb(raw, ds)
    if int(ds.get("SamplesPerPixel") or 1) > 1 or photometric == "PALETTE COLOR":
        return np.moveaxis(raw, -1, 0).astype(np.float32)
    if multi:
        return np.stack([_rescale(raw[i], ds, i) for i in range(n_frames)])[np.newaxis]
    return _rescale(raw, ds, frame or 0)[np.newaxis]


def present(values: np.ndarray, ds: Dataset, window: Window) -> tuple[np.ndarray, list[float] | None]:
    """Apply the window (if any), then MONOCHROME1 inversion; returns the values and the window used."""
    center_width = resolve_window(window, ds)
    inverted = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    if center_width is not None:
        out = apply_window(values, *center_width)
        return (1.0 - out if inverted else out), list(center_width)
    if inverted:
        low, high = _value_range(ds)
        return (low + high - values).astype(np.float32), None
    return values, None


def dicom_meta(ds: Dataset, path: str | Path) -> dict:
    """JSON-able facts about the file; never patient-identifying fields."""
    ts = ds.file_meta.get("TransferSyntaxUID")
    meta: dict = {
        "path": str(path),
        "format": "dicom",
        "modality": str(ds.get("Modality", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "inverted": str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1",
        "transfer_syntax": str(ts) if ts else None,
        "transfer_syntax_name": UID(ts).name if ts else None,
        "rows": int(ds.get("Rows") or 0),
        "cols": int(ds.get("Columns") or 0),
    }
    for keyword in _META_KEYWORDS:
        meta[keyword] = str(ds[keyword].value) if keyword in ds else None
    return meta


def _fill_transfer_syntax(ds: Dataset) -> None:
    """Files without a meta header: record the encoding pydicom guessed, so pixels decode."""
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = ds.original_encoding
    if little:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian


def is_dicomdir(ds: Dataset) -> bool:
    """A DICOMDIR: the Media Storage Directory SOP class, or a directory record sequence."""
    sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    return sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds


def _refuse_directory(path: Path, ds: Dataset, self_contained: bool) -> None:
    """A DICOMDIR is an index of other files, never an image."""
    if not is_dicomdir(ds):
        return
    if self_contained:
        raise UnsupportedFileError(
            path,
            "it is a DICOMDIR, an index that refers to other files; an upload must be one self-contained file",
            "send one DICOM Part-10 image instance (a .dcm), a .nrrd with attached data or a .nii/.nii.gz",
        )
    raise UnsupportedFileError(
        path, "it is a DICOMDIR, an index of other files, not an image", "pass the folder that holds the image files"
    )


def _decode(ds: Dataset, path: str | Path, frame: int | None) -> np.ndarray:
    if "PixelData" not in ds:
        _no_pixel_data(ds, path)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as err:
        raise UnsupportedFileError(
            path,
            f"transfer syntax {ts.name} ({ts}) cannot be decoded by pydicom",
            "convert the file to an uncompressed transfer syntax, e.g. `gdcmconv --raw in.dcm out.dcm`",
        ) from err
    if not decoder.is_available:
        install = DECODER_PACKAGES.get(str(ts), "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
        raise MissingDecoderError(
            path,
            f"pixel data is compressed as {ts.name} ({ts}) and no decoder for it is installed",
            f"install one: `{install}`",
        )
    if not ts.is_encapsulated:
        _check_native_length(ds, path)
    try:
        return pixel_array(ds, index=frame)
    except READ_ERRORS as err:
        raise UnreadableFileError(
            path, f"the pixel data cannot be decoded, the file is truncated or corrupt ({err})", _REEXPORT
        ) from err


def _no_pixel_data(ds: Dataset, path: str | Path) -> None:
    """A file that ends inside an element is truncated; a complete file without pixels is no image."""
    kind = str(UID(str(ds.get("SOPClassUID", ""))).name) if "SOPClassUID" in ds else "this object"
    if _ends_early(Path(path), ds):
        raise UnreadableFileError(
            path,
            f"the file ends inside its header, before any pixel data ({kind}): it is truncated",
            _COPY_AGAIN,
        )
    raise UnsupportedFileError(
        path,
        f"no pixel data ({kind}, modality {ds.get('Modality', '?')}); it is not an image",
        "pass an image file (CT, MR, CR, US, ...) or leave this file out of the image folder",
    )


def _ends_early(path: Path, ds: Dataset) -> bool:
    """Whether the file stops inside its last element (pydicom keeps what it could read of it).

    The elements as read, before pydicom converts them, know where their value starts and
    how long it should be; a value that would end past the end of the file, or a tail too
    short to hold the next element's tag, means the file was cut. (A deflated data set's
    offsets are in the inflated stream; a cut one fails to inflate instead.)
    """
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return False
    as_read = pydicom.dcmread(path, force=True)
    ends = [
        element.value_tell + element.length
        for element in (as_read.get_item(tag) for tag in as_read.keys())  # noqa: SIM118 (iter converts)
        if isinstance(element, RawDataElement) and element.length != UNDEFINED_LENGTH
    ]
    if not ends:
        return False
    size = path.stat().st_size
    return max(ends) > size or 0 < size - max(ends) < 8


def _check_native_length(ds: Dataset, path: str | Path) -> None:
    """Uncompressed pixel data must hold all that rows x columns x frames x samples x bits declare."""
    bits = int(ds.get("BitsAllocated") or 0)
    if not bits:
        return  # pydicom says which element is missing
    frames, rows, columns, samples = declared_shape(ds)
    expected = (frames * rows * columns * samples * bits + 7) // 8
    got = len(ds.PixelData)
    if got < expected:
        raise UnreadableFileError(
            path,
            f"the pixel data is shorter than its {rows} rows x {columns} columns x {frames} frame(s) x "
            f"{samples} sample(s) x {bits} bits declare (got {got:,} of {expected:,} bytes): the file is truncated",
            _COPY_AGAIN,
        )


def _rescale(plane: np.ndarray, ds: Dataset, frame: int) -> np.ndarray:
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(plane, ds).astype(np.float32)
    slope, intercept = _slope_intercept(ds, frame)
    return plane.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _slope_intercept(ds: Dataset, frame: int) -> tuple[float, float]:
    slope = geo.attribute(ds, "PixelValueTransformationSequence", "RescaleSlope", frame)
    intercept = geo.attribute(ds, "PixelValueTransformationSequence", "RescaleIntercept", frame)
    return float(1.0 if slope in (None, "") else slope), float(0.0 if intercept in (None, "") else intercept)


def _value_range(ds: Dataset) -> tuple[float, float]:
    """The rescaled range of the stored bit depth, the mirror for MONOCHROME1 inversion."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0):
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    slope, intercept = _slope_intercept(ds, 0)
    return low * slope + intercept, high * slope + intercept


def _palette_to_rgb(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    rgb = apply_color_lut(raw, ds)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    return rgb.astype(np.float32) * (255.0 / (2**bits - 1))


def _file_geometry(
    ds: Dataset, spatial_dims: int, frame: int | None
) -> tuple[tuple[float, ...], np.ndarray | None]:
    """Spacing and RAS affine of a single file's array (2D plane or a stack of frames)."""
    in_plane = geo.pixel_spacing(ds)
    iop = geo.orientation(ds)
    depth = geo.slice_thickness(ds) or 1.0
    if spatial_dims == 2:
        origin = geo.position(ds, frame or 0)
        affine = None if iop is None or origin is None else geo.plane_affine(iop, origin, in_plane, depth)
        return in_plane, affine
    positions = geo.frame_positions(ds, number_of_frames(ds))
    if iop is not None and positions is not None:
        step, uniform = geo.slice_step(positions)
        if np.linalg.norm(step) > 0:
            if not uniform:
                log.warning("%s: frames are unevenly spaced; the affine uses the mean step", ds.filename)
            spacing = (float(np.linalg.norm(step)), *in_plane)
            return spacing, geo.stack_affine(iop, positions[0], in_plane, step)
    origin = geo.position(ds)
    spacing = (depth, *in_plane)
    if iop is None or origin is None:
        return spacing, None
    return spacing, geo.stack_affine(iop, origin, in_plane, geo.normal(iop) * depth)
