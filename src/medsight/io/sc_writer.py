"""Write an RGB picture (a Grad-CAM overlay) as a DICOM Secondary Capture in the source study, and read it back.

The Secondary Capture (highdicom ``SCImage``) copies the patient and study modules of the source
image, so it lands in the same study, in a new series. It references the source series
(ReferencedSeriesSequence) and the instance it was drawn on (SourceImageSequence): the one file, or
the middle slice of a series. Pixels are stored uncompressed, so they read back bit for bit.

Laterality follows the source. General Series Laterality is Type 2C (PS3.3 C.7.3.1): required when the body
part is paired and no Image Laterality is sent, absent otherwise. So the capture carries the source's
ImageLaterality, or the one FrameLaterality all its frames share, as ImageLaterality (R, L, U or B); failing
that, the source's Laterality (R or L); and when the source states neither, an empty Laterality, which a
Type 2 attribute allows for "unknown".

The Grad-CAM overlay itself is drawn by :func:`medsight.explain.secondary_capture.gradcam_secondary_capture`.

Example:
    >>> image = read_image("chest.dcm")
    >>> write_secondary_capture(rgb, image, Path("chest_gradcam.dcm"), description="medsight gradcam nodule",
    ...                         model="compact_cnn", version="run-1")
    >>> read_secondary_capture(Path("chest_gradcam.dcm")).shape
    (512, 512, 3)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsight.errors import InvalidImageError, UnreadableFileError
from medsight.io.phi import no_patient_warnings
from medsight.io.sr_writer import save_dataset, source_datasets
from medsight.sample import Sample

#: LPS axis -> (letter for +, letter for -) in DICOM PatientOrientation
_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
#: Enumerated values of Laterality (series level) and of Image/Frame Laterality
_SERIES_LATERALITIES = ("R", "L")
_IMAGE_LATERALITIES = ("R", "L", "U", "B")


def write_secondary_capture(rgb: np.ndarray, image: Sample, path: Path, *, description: str, model: str,
                            version: str) -> Path:
    """Write ``rgb`` (``(H, W, 3)`` uint8) as a Secondary Capture in ``image``'s study.

    Raises:
        InvalidImageError: ``rgb`` is not an ``(H, W, 3)`` uint8 array.
        UnsupportedFileError: the image was not read from DICOM.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medsight import __version__

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise InvalidImageError(path, f"the picture is {rgb.dtype} {rgb.shape}, not an (H, W, 3) uint8 RGB array",
                                "pass an RGB image with values 0..255 (e.g. np.asarray(PIL.Image.convert('RGB')))")
    sources = source_datasets(image)
    source = sources[len(sources) // 2]
    orientation = patient_orientation(source)
    laterality, image_laterality = source_laterality(source)
    if image_laterality is not None:
        laterality = None  # Type 2C: not sent when Image Laterality is
    with no_patient_warnings():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=generate_uid(), series_number=902,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="medsight",
            patient_orientation=(orientation[0][0], orientation[1][0]), laterality=laterality,
            transfer_syntax_uid=ExplicitVRLittleEndian, manufacturer_model_name=f"medsight {model}",
            software_versions=f"medsight {__version__} {version}", series_description=description,
        )
    sc.PatientOrientation = list(orientation)  # highdicom takes one letter; an oblique's refinements ("LP") are valid
    if image_laterality is not None:
        sc.ImageLaterality = image_laterality
    elif laterality is None:
        sc.Laterality = ""  # the source does not say: empty means unknown
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedInstanceSequence = [reference]
    sc.ReferencedSeriesSequence = [series]
    sc.SourceImageSequence = [reference]
    sc.DerivationDescription = f"{description}; medsight {model} {version}"
    return save_dataset(sc, path)


def read_secondary_capture(path: Path) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 RGB pixels of a Secondary Capture written by :func:`write_secondary_capture`.

    Raises:
        UnreadableFileError: not a DICOM file, or not an RGB picture.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except (InvalidDicomError, AttributeError, ValueError, OSError) as exc:
        raise UnreadableFileError(path, f"is not a readable DICOM image ({type(exc).__name__})",
                                  "pass a secondary capture written by medsight") from None
    if ds.get("PhotometricInterpretation") != "RGB" or pixels.ndim != 3:
        raise UnreadableFileError(path, "is not an RGB secondary capture",
                                  "pass a secondary capture written by medsight")
    return np.asarray(pixels, dtype=np.uint8)


def patient_orientation(ds) -> tuple[str, str]:
    """PatientOrientation (row, column directions) from the file's own value or ImageOrientationPatient."""
    given = ds.get("PatientOrientation")
    if given is not None and len(given) == 2 and all(given):
        return str(given[0]), str(given[1])
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return "L", "F"  # the usual frontal view when the file says nothing
    return _letters(np.asarray(iop[:3], float)), _letters(np.asarray(iop[3:], float))


def source_laterality(ds) -> tuple[str | None, str | None]:
    """``(Laterality, ImageLaterality)`` that the source states, each ``None`` when it states none (or no valid one).

    ImageLaterality is the file's own, else the FrameLaterality that every frame of a multi-frame file shares.
    """
    laterality = str(ds.get("Laterality", "") or "").strip().upper()
    image = str(ds.get("ImageLaterality", "") or "").strip().upper() or _shared_frame_laterality(ds)
    return (laterality if laterality in _SERIES_LATERALITIES else None,
            image if image in _IMAGE_LATERALITIES else None)


def _shared_frame_laterality(ds) -> str:
    """The FrameLaterality of a multi-frame file's functional groups when all frames agree, else ``""``."""
    groups = [*ds.get("SharedFunctionalGroupsSequence", []), *ds.get("PerFrameFunctionalGroupsSequence", [])]
    values = {str(anatomy.get("FrameLaterality", "") or "").strip().upper()
              for group in groups for anatomy in group.get("FrameAnatomySequence", [])}
    return values.pop() if len(values) == 1 else ""


def _letters(direction: np.ndarray) -> str:
    """Patient direction letters of a unit vector in LPS, main axis first (e.g. ``LP`` for an oblique)."""
    order = np.argsort(-np.abs(direction))
    return "".join(_LETTERS[axis][0 if direction[axis] > 0 else 1] for axis in order
                   if abs(direction[axis]) > 1e-3)
