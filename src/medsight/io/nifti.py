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
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medsight.data.sample import Sample
from medsight.errors import InvalidImageError, UnreadableFileError

_READ_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile)


def read_nifti(path: str | Path) -> Sample:
    """Read a NIfTI file into a :class:`Sample` (float32, channel-first, RAS affine).

    Raises:
        UnreadableFileError: empty, truncated or not a NIfTI file.
        InvalidImageError: NaN/infinite voxels, or not 2, 3 or 4 dimensions.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(path, "no such file", "check the path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "the file is empty (0 bytes)", "write the NIfTI file again")
    try:
        image = nib.load(path)
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except _READ_ERRORS as err:
        raise UnreadableFileError(
            path,
            f"cannot be read as NIfTI, the file is truncated or corrupt ({err})",
            "write the NIfTI file again",
        ) from err
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
