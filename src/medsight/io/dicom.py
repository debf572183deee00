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

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medsight.errors import ConfigError, MissingDecoderError, UnreadableFileError, UnsupportedFileError
from medsight.io import dicom_geometry as geo
from medsight.io.dicom_checks import (
    DECLARED,
    READ_ERRORS,
    REEXPORT,
    check_deflated_size,
    check_native_length,
    corrupt_as_unreadable,
    declared_shape,
    is_dicomdir,
    no_pixel_data,
    number_of_frames,
    refuse_directory,
)
from medsight.io.limits import check_voxels
from medsight.io.windowing import Window, apply_window, resolve_window
from medsight.sample import Sample

log = logging.getLogger(__name__)

#: Groups a DICOM stream without a preamble starts with: file meta, or the identifying module.
_BARE_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00")
#: Elements one of which every DICOM image (and every SOP instance) carries.
_DICOM_EVIDENCE = ("SOPClassUID", "Rows")
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
    "BodyPartExamined",  # the domain check compares it with the training data's
)


def is_dicom_bytes(data: bytes) -> bool:
    """True for a DICOM file's bytes: the ``DICM`` marker at byte 128, or a bare dataset.

    A bare dataset must start with a group 0002 or 0008 tag and parse with pydicom into a
    dataset that has a SOP Class UID or Rows, so random bytes are not taken for DICOM.
    """
    if data[128:132] == b"DICM":
        return True
    if len(data) < 8 or data[:2] not in _BARE_DICOM_GROUPS:
        return False
    try:
        with warnings.catch_warnings():  # junk makes pydicom warn about every element it cannot make sense of
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
            return any(keyword in ds for keyword in _DICOM_EVIDENCE)
    except Exception:  # pydicom raises many types on bytes that are not DICOM; all mean "not DICOM"
        return False


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
    return head[128:132] == b"DICM" or (len(head) >= 8 and head[:2] in _BARE_DICOM_GROUPS)


def open_dataset(path: str | Path, *, stop_before_pixels: bool = False, max_voxels: int | None = None) -> Dataset:
    """Read a DICOM file's dataset, turning every failure into a :class:`MedsightError`.

    Args:
        path: the file.
        stop_before_pixels: skip the pixel data (fast header scan).
        max_voxels: bounds what a deflated data set may inflate to (x 8 bytes, plus room
            for the header); None for the default limit.

    Raises:
        UnreadableFileError: missing, empty, not DICOM, or a header that cannot be parsed.
        ImageTooLargeError: a deflated data set that inflates past that bound.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(path, "no such file", "check the path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "the file is empty (0 bytes)", REEXPORT)
    if not is_dicom_file(path):
        raise UnreadableFileError(
            path,
            "not a DICOM file (no 'DICM' marker and no DICOM header)",
            "check what the file really is; medsight reads DICOM, NIfTI and PNG/JPEG/TIFF/GIF/BMP",
        )
    try:
        check_deflated_size(path, max_voxels)
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
        list(ds)  # pydicom converts elements lazily: touch each so a cut-off header fails here
    except READ_ERRORS as err:
        raise UnreadableFileError(
            path, f"the DICOM header cannot be parsed, the file is truncated or corrupt ({err})", REEXPORT
        ) from err
    if not any(key in ds for key in ("SOPClassUID", "SOPInstanceUID", "Modality")) and not is_dicomdir(ds):
        raise UnreadableFileError(
            path, "not a DICOM file (no SOP Class, SOP Instance or Modality)", REEXPORT
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
    ds = open_dataset(path, max_voxels=max_voxels)
    with corrupt_as_unreadable(path):
        refuse_directory(path, ds, self_contained)
        n_frames = number_of_frames(ds)
        if frame is not None and not 0 <= frame < n_frames:
            raise ConfigError(
                path, f"frame={frame} but the file has {n_frames} frame(s)", f"pick 0..{n_frames - 1}"
            )
        shape = declared_shape(ds)
        check_voxels(path, shape if frame is None else shape[1:], max_voxels, source=DECLARED)
        values = dicom_values(ds, path, frame=frame)
        values, window_used = present(values, ds, window)
        spacing, affine = _file_geometry(ds, values.ndim - 1, frame)
        meta = dicom_meta(ds, path)
    meta.update(n_frames=n_frames, frame=frame, window=window_used)
    if meta["rescale"] == NO_RESCALE and meta["modality"] == "CT":
        log.warning("%s: a CT image without RescaleSlope/RescaleIntercept: its stored values are used as HU "
                    "(slope 1, intercept 0); if they are not, re-export the file with its rescale tags", path)
    return Sample(values, spacing=spacing, affine=affine, meta=meta)


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
        "rescale": rescale_note(ds),
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


def _decode(ds: Dataset, path: str | Path, frame: int | None) -> np.ndarray:
    if "PixelData" not in ds:
        no_pixel_data(ds, path)
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
        check_native_length(ds, path)
    try:
        return pixel_array(ds, index=frame)
    except READ_ERRORS as err:
        raise UnreadableFileError(
            path, f"the pixel data cannot be decoded, the file is truncated or corrupt ({err})", REEXPORT
        ) from err


def _rescale(plane: np.ndarray, ds: Dataset, frame: int) -> np.ndarray:
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(plane, ds).astype(np.float32)
    slope, intercept = _slope_intercept(ds, frame)
    return plane.astype(np.float32) * np.float32(slope) + np.float32(intercept)


#: ``meta["rescale"]`` of a file that states no modality rescale: the stored values are used as they are.
NO_RESCALE = "none in the file: stored values used as they are (slope 1, intercept 0)"


def rescale_note(ds: Dataset) -> str:
    """How the stored values became the sample's: the Modality LUT, the slope and intercept of the first
    frame, or :data:`NO_RESCALE` (the stated fallback for a file without rescale tags)."""
    if "ModalityLUTSequence" in ds:
        return "modality LUT"
    slope = geo.attribute(ds, "PixelValueTransformationSequence", "RescaleSlope", 0)
    intercept = geo.attribute(ds, "PixelValueTransformationSequence", "RescaleIntercept", 0)
    if slope in (None, "") and intercept in (None, ""):
        return NO_RESCALE
    slope, intercept = _slope_intercept(ds, 0)
    return f"slope {slope:g}, intercept {intercept:g}"


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
