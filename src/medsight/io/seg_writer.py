"""Write a predicted label volume as a DICOM SEG (highdicom) that references its source series.

Segment labels are coded with SNOMED CT (SCT): a label name that matches :data:`SCT_CODES`
(case and separators ignored, e.g. ``liver``, ``blood vessel``, ``tumour``) gets that anatomical
structure (category *Anatomical Structure*) or morphologically abnormal structure (category
*Morphologically Abnormal Structure*). Any other name falls back, as documented, to category
*Tissue* / type *Tissue* (SCT 85756007) with the name kept as the segment label. The algorithm
identification names medsight and the model's name and version.

Example:
    >>> image = read_dicom_series("ct/")
    >>> write_dicom_seg(labels, image, Path("liver_seg.dcm"), label_names=["background", "liver"],
    ...                 model="unet", version="0.1.0")
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medsight.errors import InvalidImageError, UnsupportedFileError
from medsight.io.phi import no_patient_warnings
from medsight.sample import Sample

#: label name (lower case, letters only) -> (category, type) SCT attribute names of pydicom's code dictionary
SCT_CODES = {
    "liver": ("AnatomicalStructure", "Liver"), "spleen": ("AnatomicalStructure", "Spleen"),
    "kidney": ("AnatomicalStructure", "Kidney"), "lung": ("AnatomicalStructure", "Lung"),
    "heart": ("AnatomicalStructure", "Heart"), "brain": ("AnatomicalStructure", "Brain"),
    "bone": ("AnatomicalStructure", "Bone"), "vertebra": ("AnatomicalStructure", "Vertebra"),
    "vessel": ("AnatomicalStructure", "BloodVessel"), "bloodvessel": ("AnatomicalStructure", "BloodVessel"),
    "artery": ("AnatomicalStructure", "Artery"), "vein": ("AnatomicalStructure", "Vein"),
    "tumor": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "tumour": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "neoplasm": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "lesion": ("MorphologicallyAbnormalStructure", "Lesion"),
    "nodule": ("MorphologicallyAbnormalStructure", "Nodule"), "mass": ("MorphologicallyAbnormalStructure", "Mass"),
}
FALLBACK = ("Tissue", "Tissue")
#: Direction cosines of slices that agree to within this are one orientation written with different decimal
#: rounding (e.g. 0.0038759 and 0.00387589); highdicom compares them exactly
ORIENTATION_TOLERANCE = 1e-4


def segment_codes(name: str):
    """``(category, type)`` SNOMED CT codes for a label name (the documented fallback when unknown)."""
    from pydicom.sr.codedict import codes

    category, kind = SCT_CODES.get(re.sub(r"[^a-z]", "", name.lower()), FALLBACK)
    return getattr(codes.SCT, category), getattr(codes.SCT, kind)


def share_rounded_orientation(sources: list) -> None:
    """Give every slice the first one's ImageOrientationPatient when they differ only by decimal rounding.

    Slices whose orientations differ by more than :data:`ORIENTATION_TOLERANCE` are left as they are (highdicom
    then refuses them, and :func:`write_dicom_seg` says so).
    """
    orientations = [source.get("ImageOrientationPatient") for source in sources]
    if any(value is None or len(value) != 6 for value in orientations):
        return
    first = np.asarray(orientations[0], float)
    if all(np.abs(np.asarray(value, float) - first).max() <= ORIENTATION_TOLERANCE for value in orientations):
        for source in sources[1:]:
            source.ImageOrientationPatient = orientations[0]


def write_dicom_seg(labels: np.ndarray, image: Sample, path: Path, *, label_names: list[str], model: str,
                    version: str) -> Path:
    """Write ``labels`` (``(S, R, C)``, aligned with ``image`` as read by ``read_dicom_series``) as a SEG.

    Raises:
        UnsupportedFileError: the image is not a DICOM series read from single-frame files.
        InvalidImageError: ``labels`` does not have the image's spatial shape, or highdicom
            cannot build a SEG from the source headers (the message names the exception type only:
            highdicom's own may quote header values).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from medsight import __version__

    files = image.meta.get("slice_files")
    if not files:
        raise UnsupportedFileError(image.meta.get("path", "image"), "is not a DICOM series",
                                   "DICOM SEG output needs the source DICOM slices; write NIfTI instead")
    if labels.shape != image.spatial_shape:
        raise InvalidImageError(path, f"labels {labels.shape} do not match the series {image.spatial_shape}",
                                "pass the prediction on the series' own grid")
    sources = [pydicom.dcmread(f) for f in files]
    for source in sources:  # real files carry an empty SpecificCharacterSet, which highdicom refuses
        if "SpecificCharacterSet" in source and not source.SpecificCharacterSet:
            del source.SpecificCharacterSet
    share_rounded_orientation(sources)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"medsight {model}", version=f"{version} (medsight {__version__})",
        family=codes.cid7162.ArtificialIntelligence,
    )
    present = [k for k in range(1, len(label_names)) if np.any(labels == k)] or [1]
    descriptions = []
    for number, k in enumerate(present, start=1):
        category, kind = segment_codes(label_names[k])
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label_names[k], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        ))
    renumbered = np.zeros(labels.shape, np.uint8)
    for number, k in enumerate(present, start=1):
        renumbered[labels == k] = number
    try:
        with no_patient_warnings():
            seg = hd.seg.Segmentation(
                source_images=sources, pixel_array=renumbered,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
                series_instance_uid=generate_uid(), series_number=900, sop_instance_uid=generate_uid(),
                instance_number=1, manufacturer="medsight", manufacturer_model_name=f"medsight {model}",
                software_versions=f"medsight {__version__}", device_serial_number="none",
                series_description=f"medsight {model} segmentation",
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # its message may quote header values: not shown
        raise InvalidImageError(
            path, f"highdicom could not build a DICOM SEG from the source slices ({type(exc).__name__})",
            "check the series' headers: one study, one frame of reference, image slices of one size",
        ) from None
    from medsight.io.sr_writer import save_dataset

    return save_dataset(seg, path)
