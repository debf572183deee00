"""Image readers behind one interface: :func:`read_image` picks the reader by file type.

Contract (every reader, see :class:`medsight.sample.Sample`):

* ``array`` is float32 and channel-first. 2D images ``(C, H, W)``; volumes ``(C, D, H, W)``.
  C is 1 for grey and 3 for colour (RGB; alpha is composited on black, palettes are
  expanded, YBR is converted). The spatial axes keep the file's own index order:
  NIfTI ``(i, j, k)``; a DICOM series ``(slice, row, column)`` with slices sorted along
  the normal; a multi-frame DICOM ``(frame, row, column)``; a 2D image ``(row, column)``.
  A 4D NIfTI's last axis becomes the channels.
* values: DICOM after RescaleSlope/RescaleIntercept (CT in HU) with MONOCHROME1
  inverted so high is bright; NIfTI after its scaling; images in their stored range
  (0..255, or 0..65535 for 16-bit). With ``window=...`` the windowed values in ``[0, 1]``.
* ``spacing``: mm per spatial axis (DICOM slice spacing from positions; 1.0 where the
  file does not say, e.g. PNG).
* ``affine``: 4x4, array index -> RAS+ mm (DICOM's LPS is converted), diagonal from the
  spacing where the file carries no orientation.
* ``meta``: JSON-able source facts (``path``, ``format``, and for DICOM ``modality``,
  ``photometric``, ``transfer_syntax``, ``window``, the UIDs). Never patient identifiers.
* Bad input raises a :class:`medsight.errors.MedsightError` naming the file and the fix,
  whatever the decoding library raised (a last safety net in :func:`read_image` turns any
  other exception into an :class:`~medsight.errors.UnreadableFileError`).
* Size: every reader checks the size its header declares against a voxel limit before it
  decodes a pixel (:mod:`medsight.io.limits`; ``max_voxels=``, ``$MEDSIGHT_MAX_VOXELS``).
* ``self_contained=True`` (the service's uploads) refuses a file that refers to another
  file: a NRRD ``data file``, a NIfTI ``.hdr``/``.img`` pair header, a DICOMDIR.

========================================  ======================================
input                                     reader
========================================  ======================================
a folder                                  :func:`read_dicom_series`
``.nii``, ``.nii.gz``                     :func:`read_nifti`
``.nrrd``, ``.nhdr``                      :func:`read_nrrd`
``.png .jpg .jpeg .tif .tiff .gif .bmp``  :func:`read_image_file`
``.dcm``, ``.dicom``, no/unknown suffix   :func:`read_dicom_file` if it is DICOM
========================================  ======================================

Example:
    >>> sample = read_image("chest_ct/", window="lung")
    >>> sample.array.shape, sample.spacing
    ((1, 120, 512, 512), (2.5, 0.7, 0.7))
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from medsight.errors import ConfigError, MedsightError, UnreadableFileError, UnsupportedFileError
from medsight.io.dicom import is_dicom_file, read_dicom_file
from medsight.io.dicom_series import SeriesInfo, list_series, read_dicom_series
from medsight.io.image import read_image_file, to_channels, write_png
from medsight.io.limits import CLI_MAX_VOXELS, SERVICE_MAX_VOXELS, check_voxels, default_max_voxels
from medsight.io.nifti import read_nifti, write_nifti
from medsight.io.npz import medmnist_sample, read_medmnist
from medsight.io.nrrd import read_nrrd
from medsight.io.phi import PHI_KEYWORDS, phi_fields_present
from medsight.io.windowing import WINDOW_PRESETS, Window, apply_window, resolve_window
from medsight.sample import Sample

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom")
#: Every suffix :func:`read_image` knows (DICOM files without a suffix are read too).
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES + IMAGE_SUFFIXES + DICOM_SUFFIXES

log = logging.getLogger(__name__)

__all__ = [
    "CLI_MAX_VOXELS",
    "PHI_KEYWORDS",
    "SERVICE_MAX_VOXELS",
    "SUPPORTED_SUFFIXES",
    "WINDOW_PRESETS",
    "SeriesInfo",
    "Window",
    "apply_window",
    "check_voxels",
    "default_max_voxels",
    "is_dicom_file",
    "image_stem",
    "is_image_file",
    "is_picture",
    "list_series",
    "medmnist_sample",
    "phi_fields_present",
    "read_dicom_file",
    "read_dicom_series",
    "read_image",
    "read_image_file",
    "read_medmnist",
    "read_nifti",
    "read_nrrd",
    "resolve_window",
    "to_channels",
    "write_nifti",
    "write_png",
]


def read_image(
    path: str | Path,
    *,
    window: Window = None,
    series_uid: str | None = None,
    max_voxels: int | None = None,
    self_contained: bool = False,
) -> Sample:
    """Read any supported image file or DICOM folder into a :class:`Sample`.

    Args:
        path: a file, or a folder holding a DICOM series.
        window: None for raw (rescaled) values, a preset name (``lung``, ``mediastinum``,
            ``bone``, ``brain``, ``abdomen``, ``liver``, ``soft_tissue``), ``"file"`` for a
            DICOM's own window, or ``(center, width)``; output is then in ``[0, 1]``.
        series_uid: for a folder with several DICOM series, the one to read.
        max_voxels: the most values the header may declare (all axes, channels and frames);
            None for :func:`~medsight.io.limits.default_max_voxels`. The service passes
            :data:`~medsight.io.limits.SERVICE_MAX_VOXELS`.
        self_contained: refuse a file that refers to another file (a NRRD detached
            header, a NIfTI pair header, a DICOMDIR): an upload must be one file.

    Raises:
        UnreadableFileError: missing, empty, truncated or corrupt file, or one that no
            reader could decode (whatever its library raised).
        ImageTooLargeError: the header declares more voxels than ``max_voxels``.
        UnsupportedFileError: a file type medsight does not read, or with
            ``self_contained`` a file that refers to another file.
        DatasetError: a DICOM folder with several series and no (or an unknown) ``series_uid``.
        ConfigError: an unknown window, ``series_uid`` for a single file, or a bad limit.
    """
    path = Path(path)
    try:
        return _read(path, window, series_uid, max_voxels, self_contained)
    except MedsightError:
        raise
    except Exception as exc:  # the last safety net: one bad file never stops a batch
        log.debug(
            "%s: %s while decoding (message left out: it may echo file content)\n%s",
            path,
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        raise UnreadableFileError(
            path,
            f"could not be decoded ({type(exc).__name__})",
            "check that it is a complete image file of the type its name says; export or copy it again",
        ) from None


def _read(
    path: Path, window: Window, series_uid: str | None, max_voxels: int | None, self_contained: bool
) -> Sample:
    if path.is_dir():
        return read_dicom_series(path, series_uid=series_uid, window=window, max_voxels=max_voxels)
    if not path.is_file():
        raise UnreadableFileError(path, "no such file or folder", "check the path")
    if series_uid is not None:
        raise ConfigError(path, "series_uid applies to a DICOM folder, not a single file", "pass the folder")
    kind = _kind(path)
    if kind == "dicom":
        return read_dicom_file(path, window=window, max_voxels=max_voxels, self_contained=self_contained)
    if kind == "image":
        sample = read_image_file(path, max_voxels=max_voxels)
    else:
        reader = read_nifti if kind == "nifti" else read_nrrd
        sample = reader(path, max_voxels=max_voxels, self_contained=self_contained)
    center_width = resolve_window(window, None)
    if center_width is not None:
        sample.array = apply_window(sample.array, *center_width)
    sample.meta["window"] = list(center_width) if center_width is not None else None
    return sample


def is_image_file(path: str | Path) -> bool:
    """True for a file :func:`read_image` would read: a supported suffix, or DICOM content.

    Hidden files and DICOMDIR indexes are not images. Files without a known suffix are
    sniffed (132 bytes) for a DICOM header.
    """
    path = Path(path)
    if path.name.startswith(".") or path.name.upper() == "DICOMDIR" or not path.is_file():
        return False
    return _suffix(path) in SUPPORTED_SUFFIXES or is_dicom_file(path)


def image_stem(path: str | Path) -> str:
    """The file name without its image suffix (``scan.nii.gz`` -> ``scan``), for naming outputs."""
    path = Path(path)
    suffix = _suffix(path)
    return path.name[: -len(suffix)] if suffix in SUPPORTED_SUFFIXES else path.name


def is_picture(path: str | Path) -> bool:
    """A PNG/JPEG/TIFF/GIF/BMP file (no physical geometry): masks and maps for it are written as PNG."""
    return _suffix(Path(path)) in IMAGE_SUFFIXES


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _kind(path: Path) -> str:
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in NRRD_SUFFIXES:
        return "nrrd"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in DICOM_SUFFIXES or is_dicom_file(path):
        return "dicom"
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "the file is empty (0 bytes)", "export or copy it again")
    hint = " (a MedMNIST .npz is a data set: read it with read_medmnist)" if suffix == ".npz" else ""
    raise UnsupportedFileError(
        path,
        f"unsupported file type {suffix or '(no suffix)'} and not DICOM{hint}",
        f"medsight reads DICOM files and folders and {', '.join(NIFTI_SUFFIXES + NRRD_SUFFIXES + IMAGE_SUFFIXES)}; "
        "convert it to one of these",
    )
