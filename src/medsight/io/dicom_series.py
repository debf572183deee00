"""DICOM series: a folder of single-slice files -> one ``(C, S, R, C)`` volume.

Every DICOM file under the folder (recursively) is scanned, image files are grouped by
SeriesInstanceUID, and the chosen series' slices are sorted by their position along
the slice normal (row direction x column direction, dotted with ImagePositionPatient),
never by file name. The slice spacing comes from those positions, not SliceThickness.

Files that are not DICOM, and DICOM objects that are not images (structured reports,
segmentations, presentation states, DICOMDIR) are left out of the listing; copies of
one instance (same SOPInstanceUID) count once. A file that looks like DICOM but cannot
be parsed stops the scan with an error rather than leaving a hole in the volume.

Before any pixel is decoded, the slices' headers are checked against the voxel limit
(:mod:`medsight.io.limits`): slices x rows x columns x samples per pixel.

Example:
    >>> [s.series_uid for s in list_series("study/")]
    ['1.2.826.0.1.3680043.2.1125...']
    >>> read_dicom_series("study/", window="lung").array.shape
    (1, 120, 512, 512)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset

from medsight.errors import DatasetError
from medsight.io import dicom_geometry as geo
from medsight.io.dicom import dicom_meta, dicom_values, is_dicom_file, open_dataset, present, read_dicom_file
from medsight.io.dicom_checks import corrupt_as_unreadable, declared_shape, number_of_frames
from medsight.io.limits import check_voxels
from medsight.io.windowing import Window
from medsight.sample import Sample

log = logging.getLogger(__name__)

#: Modalities that carry pixel data but are not images to learn from.
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG"})


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a folder."""

    series_uid: str
    description: str
    modality: str
    n_files: int


def list_series(folder: str | Path) -> list[SeriesInfo]:
    """The image series under ``folder``, largest first.

    Raises:
        DatasetError: the folder does not exist or holds no DICOM image.
        UnreadableFileError: a DICOM file in it is truncated or corrupt.
    """
    return [_info(uid, headers) for uid, headers in _scan(Path(folder)).items()]


def read_dicom_series(
    folder: str | Path,
    *,
    series_uid: str | None = None,
    window: Window = None,
    max_voxels: int | None = None,
) -> Sample:
    """Read one series under ``folder`` as a volume ``(C, S, R, C)`` (slice, row, column).

    Args:
        folder: a folder of DICOM files (searched recursively).
        series_uid: which SeriesInstanceUID to read; needed when there are several.
        window: None for rescaled values (HU for CT), or a window for values in
            ``[0, 1]``; ``"file"`` uses the first slice's WindowCenter/WindowWidth.
        max_voxels: the most values to decode, summed over the slices; None for the default limit.

    Raises:
        DatasetError: no image series, several series and no ``series_uid``, an unknown
            ``series_uid``, or slices that do not stack (different sizes, positions shared
            by several slices).
        UnreadableFileError: a DICOM file in it is truncated or corrupt.
        ImageTooLargeError: the slices' headers declare more values than ``max_voxels``.
    """
    folder = Path(folder)
    series = _scan(folder, max_voxels)
    if series_uid is None and len(series) > 1:
        raise DatasetError(
            folder, f"holds {len(series)} series: {_describe(series)}",
            "pass series_uid= to pick one (medsight predict: give each series a folder of its own)",
        )
    if series_uid is not None and series_uid not in series:
        raise DatasetError(
            folder,
            f"has no series {series_uid!r}; it holds {_describe(series)}",
            "pass one of these series_uid",
        )
    headers = series[series_uid] if series_uid is not None else next(iter(series.values()))
    if len(headers) == 1:
        return read_dicom_file(headers[0][0], window=window, max_voxels=max_voxels)
    with corrupt_as_unreadable(folder):
        return _read_volume(folder, headers, window, max_voxels)


def _scan(folder: Path, max_voxels: int | None = None) -> dict[str, list[tuple[Path, Dataset]]]:
    """SeriesInstanceUID -> [(file, header)] for every image file, largest series first."""
    if not folder.is_dir():
        raise DatasetError(folder, "is not a folder", "pass the folder that holds the DICOM files")
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    seen: set[str] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and is_dicom_file(p)):
        header = open_dataset(path, stop_before_pixels=True, max_voxels=max_voxels)
        if "Rows" not in header or str(header.get("Modality", "")).upper() in NON_IMAGE_MODALITIES:
            continue
        instance = str(header.get("SOPInstanceUID", path))
        if instance in seen:
            log.warning("%s: a copy of an instance already read (same SOPInstanceUID); using the first", path)
            continue
        seen.add(instance)
        groups[str(header.get("SeriesInstanceUID", "unknown"))].append((path, header))
    if not groups:
        raise DatasetError(folder, "holds no DICOM image files", "point to the folder with the .dcm slices")
    return dict(sorted(groups.items(), key=lambda item: -len(item[1])))


def _info(uid: str, headers: list[tuple[Path, Dataset]]) -> SeriesInfo:
    first = headers[0][1]
    return SeriesInfo(
        series_uid=uid,
        description=str(first.get("SeriesDescription", "")),
        modality=str(first.get("Modality", "")),
        n_files=len(headers),
    )


def _describe(series: dict[str, list[tuple[Path, Dataset]]]) -> str:
    infos = [_info(uid, headers) for uid, headers in series.items()]
    return "; ".join(f"{i.series_uid} ({i.modality} '{i.description}', {i.n_files} files)" for i in infos)


def _read_volume(
    folder: Path, headers: list[tuple[Path, Dataset]], window: Window, max_voxels: int | None
) -> Sample:
    multi = [path.name for path, header in headers if number_of_frames(header) > 1]
    if multi:
        raise DatasetError(
            folder,
            f"the series mixes {len(multi)} multi-frame file(s) ({', '.join(multi[:3])}) with other files",
            "read each multi-frame file on its own with read_dicom_file",
        )
    _check_sizes(folder, headers)
    _, rows, columns, samples = declared_shape(headers[0][1])
    check_voxels(
        folder,
        (len(headers), rows, columns, samples),
        max_voxels,
        source=f"the series ({len(headers)} slice headers, slices x rows x columns x samples)",
    )
    ordered, positions, iop = _sort_slices(folder, headers)
    datasets = [open_dataset(path, max_voxels=max_voxels) for path, _ in ordered]
    volume = np.stack([_slice_values(ds, path) for (path, _), ds in zip(ordered, datasets, strict=True)], axis=1)
    values, window_used = present(volume, datasets[0], window)
    in_plane = geo.pixel_spacing(datasets[0])
    if positions is None or iop is None:
        depth = geo.slice_thickness(datasets[0]) or 1.0
        spacing, affine = (depth, *in_plane), None
    else:
        step, uniform = geo.slice_step(positions)
        if not uniform:
            log.warning(
                "%s: slices are unevenly spaced (missing slices?); the affine uses the mean step", folder
            )
        spacing = (float(np.linalg.norm(step)), *in_plane)
        affine = geo.stack_affine(iop, positions[0], in_plane, step)
    meta = dicom_meta(datasets[0], folder)
    meta.update(n_slices=len(ordered), window=window_used, slice_files=[str(p) for p, _ in ordered])
    return Sample(values, spacing=spacing, affine=affine, meta=meta)


def _slice_values(ds: Dataset, path: Path) -> np.ndarray:
    """One slice's rescaled values; a damaged slice is named in the error."""
    with corrupt_as_unreadable(path):
        return dicom_values(ds, path)


def _check_sizes(folder: Path, headers: list[tuple[Path, Dataset]]) -> None:
    sizes = defaultdict(list)
    for path, header in headers:
        sizes[(int(header.Rows), int(header.Columns), int(header.get("SamplesPerPixel") or 1))].append(
            path.name
        )
    if len(sizes) > 1:
        listing = "; ".join(
            f"{r}x{c}x{s}: {len(names)} files (e.g. {names[0]})" for (r, c, s), names in sizes.items()
        )
        raise DatasetError(
            folder,
            f"the slices of one series have different sizes ({listing})",
            "remove the odd files (often a scout or a screenshot) or pass a folder with one image size",
        )


def _sort_slices(
    folder: Path, headers: list[tuple[Path, Dataset]]
) -> tuple[list[tuple[Path, Dataset]], np.ndarray | None, np.ndarray | None]:
    """Slices ordered along the normal, with their positions; by InstanceNumber if unplaced."""
    iop = geo.orientation(headers[0][1])
    points = [geo.position(header) for _, header in headers]
    if iop is None or any(p is None for p in points):
        log.warning("%s: slices lack ImagePositionPatient/Orientation; ordering by InstanceNumber", folder)
        ordered = sorted(headers, key=lambda item: int(item[1].get("InstanceNumber") or 0))
        return ordered, None, None
    depths = np.array([float(np.dot(p, geo.normal(iop))) for p in points])
    order = np.argsort(depths, kind="stable")
    duplicated = np.diff(depths[order]) < 1e-4
    if duplicated.any():
        raise DatasetError(
            folder,
            f"{int(duplicated.sum())} slice(s) repeat the position of another slice; the series holds "
            "several volumes (echoes, time points or b-values)",
            "split the series by EchoTime/TriggerTime/b-value into separate folders",
        )
    positions = np.asarray([points[i] for i in order])
    return [headers[i] for i in order], positions, iop
