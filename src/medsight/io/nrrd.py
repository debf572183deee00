"""NRRD volumes (``.nrrd``, ``.nhdr``) via pynrrd, with a RAS affine.

Layout: the spatial axes keep NRRD's own axis order (the fastest axis first, like
NIfTI's ``i, j, k``), and one non-spatial axis (``kinds`` such as ``vector`` or
``RGB-color``, or a ``none`` space direction) becomes the channel axis; without one a
channel axis of 1 is added. So a 3D Slicer label map ``sizes: 512 512 3`` reads as
``(1, 512, 512, 3)``.

Geometry: the affine's columns are the ``space directions`` and its last column the
``space origin``, then converted to RAS+ from the file's ``space`` (e.g.
``left-posterior-superior`` negates the first two world rows). Files with only
``spacings`` get a diagonal affine.

Safety: the header is read alone first. Its ``sizes`` are checked against the voxel limit
(:mod:`medsight.io.limits`) and its ``data file`` field before pynrrd opens anything else:
with ``self_contained`` (the service) any data file is refused; otherwise it must be one
file inside the header's own folder (symlinks resolved). Errors about a data file never
say whether the path it names exists.

Example:
    >>> s = read_nrrd("liver_seg.nrrd")
    >>> s.array.shape, s.spacing
    ((1, 512, 512, 3), (0.810547, 0.810547, 1.0))
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

import nrrd
import numpy as np

from medsight.errors import InvalidImageError, UnreadableFileError, UnsupportedFileError
from medsight.io.limits import DECODE_ERRORS, MAX_BYTES_PER_VALUE, check_inflated_size, check_voxels
from medsight.sample import Sample, affine_from_spacing

log = logging.getLogger(__name__)

_READ_ERRORS = (nrrd.NRRDError, *DECODE_ERRORS)
_REWRITE = "save the NRRD file again (e.g. from 3D Slicer) or check that the download finished"
_ATTACH = "save it as one .nrrd with attached data (3D Slicer: Save as .nrrd; pynrrd: nrrd.write('x.nrrd', ...))"

#: World-axis signs that turn a NRRD ``space`` into RAS+ (x, y, z).
_TO_RAS = {
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
}


def read_nrrd(path: str | Path, *, max_voxels: int | None = None, self_contained: bool = False) -> Sample:
    """Read a NRRD file into a :class:`Sample` (float32, channel-first, RAS affine).

    Args:
        path: a ``.nrrd`` file, or a ``.nhdr`` header with attached or detached data.
        max_voxels: the most voxels to decode; None for the default limit.
        self_contained: refuse a header whose data is in another file, as the service does.

    Raises:
        UnreadableFileError: missing, empty, truncated or not a NRRD file, or a data file
            that is outside the header's folder or cannot be read.
        ImageTooLargeError: the header's ``sizes`` hold more voxels than ``max_voxels``.
        UnsupportedFileError: a detached data file when ``self_contained``, or a list of data files.
        InvalidImageError: not 2 or 3 spatial axes, several non-spatial axes, or NaN voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(path, "no such file", "check the path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "the file is empty (0 bytes)", _REWRITE)
    try:
        with open(path, "rb") as fh:
            header = nrrd.read_header(fh)
            _check_data_file(path, header, self_contained)
            check_voxels(path, header.get("sizes", ()), max_voxels)
            _check_compressed_size(path, header, fh)
            data = nrrd.read_data(header, fh, str(path), index_order="F")
    except _READ_ERRORS as err:
        raise UnreadableFileError(
            path, f"cannot be read as NRRD, the file is truncated or corrupt ({_describe(err)})", _REWRITE
        ) from err
    spatial, channel = _split_axes(path, header, data.ndim)
    array = data[np.newaxis] if channel is None else np.moveaxis(data, channel, 0)
    bad = int(np.count_nonzero(~np.isfinite(array))) if array.dtype.kind == "f" else 0
    if bad:
        raise InvalidImageError(
            path,
            f"the file has {bad} NaN or infinite voxel(s) of {array.size}",
            "replace them (e.g. numpy.nan_to_num) and save the file again",
        )
    affine, spacing = _geometry(header, spatial)
    meta = {
        "path": str(path),
        "format": "nrrd",
        "shape": [int(n) for n in data.shape],
        "dtype": str(data.dtype),
        "space": str(header.get("space", "")) or None,
    }
    return Sample(np.ascontiguousarray(array, dtype=np.float32), spacing=spacing, affine=affine, meta=meta)


def _check_data_file(path: Path, header: dict, self_contained: bool) -> None:
    """Refuse a detached data file the reader must not open; point pynrrd at the checked path.

    The message is the same whatever the named path is (missing, a folder, a file), so that
    an error never tells whether some path exists.
    """
    key = "data file" if "data file" in header else "datafile"
    name = header.get(key)
    if name is None:
        return
    if self_contained:
        raise UnsupportedFileError(
            path,
            "the NRRD header refers to another file for its data (a 'data file' field); "
            "an upload must be one self-contained file",
            f"send a single .nrrd with attached data, a .nii/.nii.gz or a DICOM file; {_ATTACH}",
        )
    name = str(name).strip()
    if name.upper() == "LIST" or "%" in name:
        raise UnsupportedFileError(
            path, "the NRRD header lists several data files; medsight reads one data file", _ATTACH
        )
    try:
        folder = path.parent.resolve()
        target = (folder / name).resolve()
        usable = target.is_relative_to(folder) and target.is_file()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte in the name
        usable = False
    if not usable:
        raise UnreadableFileError(
            path,
            "the data file its header names is not a readable file inside the header's own folder",
            f"keep the data file next to the header and name it without '..' or an absolute path, or {_ATTACH}",
        )
    header[key] = str(target)


def _check_compressed_size(path: Path, header: dict, fh: BinaryIO) -> None:
    """pynrrd inflates all of a gzip/bzip2 payload whatever ``sizes`` says: check it holds no more first."""
    codec = {"gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}.get(str(header.get("encoding")))
    if codec is None or "sizes" not in header:
        return
    byte_skip = int(header.get("byte skip", header.get("byteskip", 0)))
    limit = int(np.prod(header["sizes"], dtype=np.int64)) * MAX_BYTES_PER_VALUE + max(byte_skip, 0)
    data_file = header.get("data file", header.get("datafile"))  # checked and resolved by _check_data_file
    start = fh.tell()
    with open(data_file, "rb") if data_file else nullcontext(fh) as source:
        for _ in range(max(int(header.get("line skip", header.get("lineskip", 0))), 0)):
            source.readline()
        check_inflated_size(path, source, codec, limit)
    fh.seek(start)


def _describe(err: Exception) -> str:
    """The library's words, but never an operating-system message (it names paths and their state)."""
    return "OSError" if isinstance(err, OSError) and err.errno is not None else f"{type(err).__name__}: {err}"


def _split_axes(path: Path, header: dict, ndim: int) -> tuple[list[int], int | None]:
    """The spatial axes and the (single) non-spatial axis, from ``kinds``/``space directions``."""
    directions = header.get("space directions")
    kinds = header.get("kinds") or ["domain"] * ndim
    spatial = []
    for axis in range(ndim):
        unplaced = directions is not None and not np.all(np.isfinite(np.asarray(directions[axis], float)))
        if kinds[axis] in ("domain", "space") and not unplaced:
            spatial.append(axis)
    others = [axis for axis in range(ndim) if axis not in spatial]
    if len(others) > 1 or len(spatial) not in (2, 3):
        raise InvalidImageError(
            path,
            f"the image has {len(spatial)} spatial and {len(others)} other axes (kinds {kinds}); "
            "medsight reads 2 or 3 spatial axes and at most one channel axis",
            "split the file into one NRRD per time point or component",
        )
    return spatial, (others[0] if others else None)


def _geometry(header: dict, spatial: list[int]) -> tuple[np.ndarray, tuple[float, ...]]:
    """The RAS affine and the spacing of the spatial axes."""
    directions = header.get("space directions")
    if directions is None:
        spacings = header.get("spacings")
        steps = [float(spacings[a]) if spacings is not None and np.isfinite(spacings[a]) else 1.0 for a in spatial]
        return affine_from_spacing(tuple(steps)), tuple(steps)
    columns = [np.asarray(directions[a], dtype=np.float64) for a in spatial]
    columns = [np.pad(c, (0, 3 - c.size))[:3] for c in columns]
    spacing = tuple(float(np.linalg.norm(c)) for c in columns)
    affine = np.eye(4)
    for axis, vector in enumerate(columns):
        affine[:3, axis] = vector
    if len(columns) == 2:  # a plane: unit normal as the third column keeps the matrix invertible
        normal = np.cross(columns[0], columns[1])
        affine[:3, 2] = normal / (np.linalg.norm(normal) or 1.0)
    origin = header.get("space origin")
    if origin is not None and np.all(np.isfinite(origin)):
        affine[: min(3, len(origin)), 3] = np.asarray(origin, dtype=np.float64)[:3]
    space = str(header.get("space", "")).lower()
    if space and space not in _TO_RAS:
        log.warning("NRRD space %r has no anatomical meaning; the affine keeps its axes as-is", space)
    affine[:3, :] *= np.asarray(_TO_RAS.get(space, (1, 1, 1)), dtype=np.float64)[:, np.newaxis]
    return affine, spacing
