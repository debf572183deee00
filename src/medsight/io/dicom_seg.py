"""DICOM Segmentation objects (SEG) -> an integer label volume aligned with their image series.

The SEG is decoded with highdicom and matched to the image slices by the SOP Instance
UIDs each SEG frame was derived from, so the label volume lines up with
:func:`medsight.io.dicom_series.read_dicom_series` slice for slice, whatever order the
frames are stored in. Slices the SEG has no frame for are background.

Example:
    >>> image, labels, names = read_dicom_seg("liver.dcm", "ct-3slice/")
    >>> image.array.shape, labels.shape, names
    ((1, 3, 512, 512), (3, 512, 512), {1: 'Liver'})
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import SegmentationStorage

from medsight.errors import DatasetError, UnreadableFileError, UnsupportedFileError
from medsight.io import dicom_geometry as geo
from medsight.io.dicom import number_of_frames, open_dataset
from medsight.io.dicom_series import list_series, read_dicom_series
from medsight.sample import Sample

#: Fractional SEG pixels at or above this probability count as inside the segment.
FRACTION_THRESHOLD = 0.5
#: How far (mm) a SEG frame may sit from its source slice before the match is refused.
POSITION_TOLERANCE_MM = 0.05


def read_dicom_seg(
    seg_path: str | Path, series_folder: str | Path, *, series_uid: str | None = None
) -> tuple[Sample, np.ndarray, dict[int, str]]:
    """Read a DICOM SEG and the image series it was drawn on.

    Voxel value ``i`` of the label volume is segment number ``i``; 0 is background.
    Where segments overlap, the later segment (the higher segment number) wins, so a
    voxel in segments 2 and 5 is labelled 5. Fractional SEGs are thresholded at
    :data:`FRACTION_THRESHOLD`.

    Args:
        seg_path: the SEG file.
        series_folder: the folder holding the source image slices.
        series_uid: which series in the folder to read; by default the series the
            SEG references (or the folder's only series).

    Returns:
        ``(image, labels, names)``: the series as read by ``read_dicom_series``
        (array ``(1, S, R, C)``), a ``uint16`` label volume ``(S, R, C)`` aligned with it,
        and ``{segment number: segment label}``.

    Raises:
        UnreadableFileError: the SEG file is missing, empty or corrupt.
        UnsupportedFileError: the file is not a DICOM SEG, or the series is one multi-frame file.
        DatasetError: the SEG references another series than the one read, or image
            slices that are not in the folder.
    """
    seg_path = Path(seg_path)
    seg = _open_seg(seg_path)
    referenced = _referenced_series(seg)
    if series_uid is None and referenced in {s.series_uid for s in list_series(series_folder)}:
        series_uid = referenced
    image = read_dicom_series(series_folder, series_uid=series_uid)
    read_uid = str(image.meta.get("SeriesInstanceUID"))
    if referenced is not None and read_uid != referenced:
        raise DatasetError(
            seg_path,
            f"the SEG references series {referenced} but {series_folder} gave series {read_uid}",
            "pass the folder (or series_uid) of the series the segmentation was drawn on",
        )
    headers = _slice_headers(image)
    instances = [str(h.SOPInstanceUID) for h in headers]
    missing = {uid for *_, uid in seg.get_source_image_uids()} - set(instances)
    if missing:
        raise DatasetError(
            seg_path,
            f"the SEG has frames for {len(missing)} image slice(s) not found in {series_folder} "
            f"(e.g. SOPInstanceUID {sorted(missing)[0]})",
            "copy the complete series into the folder",
        )
    _check_placement(seg, seg_path, dict(zip(instances, headers, strict=True)))
    names = {int(item.SegmentNumber): str(item.get("SegmentLabel", "")) for item in seg.SegmentSequence}
    return image, _label_volume(seg, seg_path, instances, sorted(names)), names


def _open_seg(path: Path) -> hd.seg.Segmentation:
    ds = open_dataset(path)
    if str(ds.get("SOPClassUID", "")) != SegmentationStorage and str(ds.get("Modality", "")) != "SEG":
        raise UnsupportedFileError(
            path,
            f"is not a DICOM Segmentation (Modality {ds.get('Modality', 'unknown')})",
            "pass the SEG file as seg_path and the folder of image slices as series_folder",
        )
    try:
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except (AttributeError, KeyError, ValueError, TypeError) as err:
        raise UnreadableFileError(
            path, f"the SEG cannot be decoded, required attributes are missing or invalid ({err})",
            "export the segmentation again (e.g. with 3D Slicer or dcmqi)",
        ) from err


def _referenced_series(seg: hd.seg.Segmentation) -> str | None:
    items = seg.get("ReferencedSeriesSequence") or []
    return str(items[0].SeriesInstanceUID) if items else None


def _slice_headers(image: Sample) -> list[Dataset]:
    """Headers of the image slices, in the order of ``image.array``'s slice axis."""
    files = image.meta.get("slice_files") or [image.meta["path"]]
    headers = [open_dataset(path, stop_before_pixels=True) for path in files]
    if len(headers) == 1 and number_of_frames(headers[0]) > 1:
        raise UnsupportedFileError(
            files[0],
            "the source series is one multi-frame file; medsight matches SEGs to single-frame slices only",
            "convert the series to single-frame files (e.g. with dcmtk or pydicom) before reading the SEG",
        )
    return headers


def _check_placement(seg: hd.seg.Segmentation, path: Path, headers: dict[str, Dataset]) -> None:
    """Each SEG frame must have its source slice's size and position (where both are recorded).

    Many SEG writers omit SpatialLocationsPreserved, so highdicom is told to ignore it and
    the placement is checked here instead.
    """
    first = next(iter(headers.values()))
    if (int(seg.Rows), int(seg.Columns)) != (int(first.Rows), int(first.Columns)):
        raise DatasetError(
            path,
            f"the SEG frames are {seg.Rows}x{seg.Columns} but the image slices {first.Rows}x{first.Columns}",
            "pass the series the segmentation was drawn on (not a resampled copy)",
        )
    for frame, group in enumerate(seg.get("PerFrameFunctionalGroupsSequence") or []):
        seg_point = geo.position(seg, frame)
        for derivation in group.get("DerivationImageSequence") or []:
            for source in derivation.get("SourceImageSequence") or []:
                header = headers.get(str(source.ReferencedSOPInstanceUID))
                image_point = None if header is None else geo.position(header)
                if seg_point is None or image_point is None:
                    continue
                if np.linalg.norm(seg_point - image_point) > POSITION_TOLERANCE_MM:
                    raise DatasetError(
                        path,
                        f"SEG frame {frame + 1} sits at {np.round(seg_point, 2).tolist()} mm but its source "
                        f"slice {source.ReferencedSOPInstanceUID} at {np.round(image_point, 2).tolist()} mm",
                        "re-export the segmentation on the original series",
                    )


def _label_volume(
    seg: hd.seg.Segmentation, path: Path, instances: list[str], numbers: list[int]
) -> np.ndarray:
    """``(S, R, C)`` labels; segments are painted in increasing number, so later ones win."""
    try:
        masks = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=instances,
            segment_numbers=numbers,
            assert_missing_frames_are_empty=True,
            ignore_spatial_locations=True,
        )
    except (ValueError, RuntimeError, KeyError) as err:
        raise DatasetError(
            path, f"the SEG frames cannot be matched to the image slices ({err})",
            "check that the SEG was drawn on this series",
        ) from err
    labels = np.zeros(masks.shape[:3], dtype=np.uint16)
    for channel, number in enumerate(numbers):
        labels[masks[..., channel] >= FRACTION_THRESHOLD] = number
    return labels
