"""NIfTI volumes (``.nii``, ``.nii.gz``) via nibabel, keeping nibabel's RAS affine as-is.

Layout: 2D ``(X, Y)`` -> ``(1, X, Y)``; 3D ``(X, Y, Z)`` -> ``(1, X, Y, Z)``; 4D
``(X, Y, Z, T)`` -> ``(T, X, Y, Z)`` (the last axis becomes the channels). Spacing is the
header's zooms of the spatial axes. Scaling (``scl_slope``/``scl_inter``) is applied.

Example:
    >>> s = read_nifti("ct.nii.gz")
    >>> s.array.shape, s.spacing
    ((1, 122, 101, 30), (3.0, 3.0, 3.0))
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError, HeaderTypeError, ImageDataError

from medsight.errors import InvalidImageError, UnreadableFileError, UnsupportedFileError
from medsight.io.limits import DECODE_ERRORS, check_voxels
from medsight.sample import Sample

_READ_ERRORS = (ImageFileError, HeaderDataError, HeaderTypeError, ImageDataError, *DECODE_ERRORS)
_REWRITE = "write the NIfTI file again"
#: The magic of a header whose voxels live in a separate ``.img`` file (NIfTI-1, NIfTI-2).
_PAIR_MAGICS = ((344, b"ni1\0"), (4, b"ni2\0"))


def read_nifti(path: str | Path, *, max_voxels: int | None = None, self_contained: bool = False) -> Sample:
    """Read a NIfTI file into a :class:`Sample` (float32, channel-first, RAS affine).

    The header is read first: its shape is checked against ``max_voxels`` before any voxel
    is decoded (see :mod:`medsight.io.limits`).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        max_voxels: the most voxels to decode; None for the default limit.
        self_contained: refuse a header that says its voxels are in another file (an
            ``.hdr``/``.img`` pair's magic ``ni1``), as the service does for uploads.

    Raises:
        UnreadableFileError: empty, truncated or not a NIfTI file.
        ImageTooLargeError: the header declares more voxels than ``max_voxels``.
        UnsupportedFileError: a pair header when ``self_contained``.
        InvalidImageError: NaN/infinite voxels, or not 2, 3 or 4 dimensions.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(path, "no such file", "check the path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "the file is empty (0 bytes)", _REWRITE)
    try:
        pair = _is_pair_header(path)
        image = nib.load(path)  # the header only; voxels are read by get_fdata
        shape = tuple(int(n) for n in image.shape)
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from err
    if pair and self_contained:
        raise UnsupportedFileError(
            path,
            "the NIfTI header says its voxels are in another file (an .hdr/.img pair); "
            "an upload must be one self-contained file",
            "send a single .nii or .nii.gz (e.g. nibabel: nib.save(nib.load('x.hdr'), 'x.nii.gz'))",
        )
    check_voxels(path, shape, max_voxels)
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from err
    if data.ndim not in (2, 3, 4):
        raise InvalidImageError(
            path,
            f"the image has {data.ndim} dimension(s) {data.shape}; medsight reads 2D, 3D or 4D NIfTI",
            "save it as (X, Y[, Z[, channels]]), e.g. squeeze singleton axes with numpy before writing",
        )
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise InvalidImageError(
            path,
            f"the file has {bad} NaN or infinite voxel(s) of {data.size}",
            "replace them (e.g. numpy.nan_to_num) and save the file again, or leave it out",
        )
    spatial = min(data.ndim, 3)
    array = np.moveaxis(data, 3, 0) if data.ndim == 4 else data[np.newaxis]
    zooms = tuple(float(z) for z in image.header.get_zooms()[:spatial])
    meta = {
        "path": str(path),
        "format": "nifti",
        "shape": list(data.shape),
        "dtype": str(image.get_data_dtype()),
    }
    return Sample(
        np.ascontiguousarray(array, dtype=np.float32), spacing=zooms, affine=image.affine.copy(), meta=meta
    )


def _is_pair_header(path: Path) -> bool:
    """Whether the raw header carries a pair magic (nibabel rewrites the magic of what it loads)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(348)
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _PAIR_MAGICS)


def _unreadable(path: Path, err: Exception) -> UnreadableFileError:
    return UnreadableFileError(
        path, f"cannot be read as NIfTI, the file is truncated or corrupt ({type(err).__name__}: {err})", _REWRITE
    )


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write a spatial array (no channel axis) with ``affine`` as a NIfTI file.

    The dtype is kept (bool is stored as uint8), and the affine goes into both the
    sform and the qform so other tools place it the same way.

    Args:
        array: ``(X, Y)`` or ``(X, Y, Z)``, e.g. a mask ``sample.array[0]``.
        affine: the 4x4 RAS affine, e.g. the input ``Sample.affine``.
        path: a ``.nii`` or ``.nii.gz`` file name.

    Example:
        >>> write_nifti(mask.astype(np.uint8), sample.affine, "mask.nii.gz")
        PosixPath('mask.nii.gz')
    """
    path = Path(path)
    data = np.asarray(array)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InvalidImageError(
            path, f"the affine has shape {affine.shape}", "pass a 4x4 matrix (Sample.affine)"
        )
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path
