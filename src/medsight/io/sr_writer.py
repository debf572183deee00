"""Write a classifier's prediction as a DICOM Structured Report (TID 1500) in the source study, and read it back.

The report is a highdicom Comprehensive 3D SR holding one TID 1500 *Imaging Measurement Report*:

* an Image Library listing every source instance (the single file, or all slices of the series); an enhanced
  multi-frame CT/MR/PET file is described from its functional groups (spacing, orientation, the first frame's
  position), and one that records no spacing, orientation, position or thickness anywhere is left out of the
  library (it stays in the evidence), since TID 1604 cannot describe it;
* an observer context naming the device: name ``medsight``, manufacturer ``medsight``, model name = the model;
* one TID 1501 measurement group (algorithm *medsight <model>*, version = the model version) with
  the finding (*Finding*, DCM 121071 = the positive class: ``label_names[1]`` for a binary model, the decided label
  otherwise), its probability as a numeric measurement (DCM 122157 *Probability*, UCUM unit ``1``) and the
  decided label as the qualitative evaluation *Conclusion* (DCM 121077);
* where the input was checked against the model's training domain (``prediction["out_of_domain"]`` true or
  false), a qualitative evaluation *Out of domain* (``99MEDSIGHT`` OUT-OF-DOMAIN) valued SNOMED CT *Yes*
  (373066001) or *No* (373067005), and for an input outside the domain a text item *Comment* (DCM 121106) in the
  same group: ``out of domain: <reason>; <reason>``. A reader that knows none of this still reads the label.

Class names are coded with SNOMED CT where a name maps (:data:`FINDING_CODES`: pneumonia, normal,
abnormal, malignant, benign, nodule, tumour, mass, lesion, fracture; case and separators ignored). Any other name
falls back, as documented, to the private scheme ``99MEDSIGHT`` with the name as the code value. The code
meaning always keeps the model's own class name, so the report reads back to the same label; the code
value and scheme carry the concept (pydicom compares codes by value and scheme only).

The SR joins the source study (same StudyInstanceUID and patient module) in a new series.

Example:
    >>> image = read_image("chest.dcm")
    >>> write_classification_sr(predictor.predict_sample(image), image, Path("chest_sr.dcm"),
    ...                         label_names=["normal", "pneumonia"], model="resnet18", version="run-3")
    >>> read_classification_sr(Path("chest_sr.dcm"))["probability"]
    0.91
"""

from __future__ import annotations

import numbers
import re
from pathlib import Path
from typing import Any

from medsight.atomic_write import replacing
from medsight.errors import MedsightError, UnreadableFileError, UnsupportedFileError
from medsight.io.phi import no_patient_warnings
from medsight.sample import Sample

#: class name (lower case, letters only) -> SNOMED CT code value (the concept named in the comment)
FINDING_CODES = {
    "pneumonia": "233604007",  # Pneumonia
    "normal": "17621005",  # Normal
    "abnormal": "263654008",  # Abnormal
    "malignant": "21594007",  # Malignant
    "benign": "30807003",  # Benign
    "nodule": "27925004",  # Nodule
    "tumor": "108369006", "tumour": "108369006", "neoplasm": "108369006",  # Neoplasm
    "mass": "4147007",  # Mass
    "lesion": "52988006",  # Lesion
    "fracture": "125605004",  # Fracture of bone
}
#: the documented fallback coding scheme for class names without a SNOMED CT code
PRIVATE_SCHEME = "99MEDSIGHT"
#: DCM concept *Algorithm Version*
ALGORITHM_VERSION = "111003"
#: DCM concept *Comment*, the text item that says why an input is out of domain
COMMENT = "121106"
OUT_OF_DOMAIN_PREFIX = "out of domain: "


class PredictionError(MedsightError):
    """A prediction that cannot be written: missing fields, an unknown label, a probability outside [0, 1]."""


def finding_code(name: str):
    """The code for a class name: SNOMED CT where it maps, else ``99MEDSIGHT`` (meaning = the name)."""
    import highdicom as hd

    value = FINDING_CODES.get(re.sub(r"[^a-z]", "", name.lower()))
    if value is None:
        return hd.sr.CodedConcept(value=re.sub(r"[^A-Za-z0-9]+", "-", name)[:16] or "unnamed",
                                  scheme_designator=PRIVATE_SCHEME, meaning=name)
    return hd.sr.CodedConcept(value=value, scheme_designator="SCT", meaning=name)


def source_datasets(image: Sample) -> list:
    """The source DICOM headers of ``image`` (slices of a series in order, or the one file), without pixels.

    Raises:
        UnsupportedFileError: the image was not read from DICOM.
    """
    import pydicom

    files = image.meta.get("slice_files") or ([image.meta["path"]] if image.meta.get("format") == "dicom" else [])
    if not files:
        raise UnsupportedFileError(image.meta.get("path", "image"), "is not a DICOM image",
                                   "DICOM SR and secondary capture output need the source DICOM file(s); "
                                   "read the image from DICOM (read_image on the .dcm file or series folder)")
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for ds in datasets:  # real files carry an empty SpecificCharacterSet, which highdicom refuses
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
    return datasets


def write_classification_sr(prediction: dict, image: Sample, path: Path, *, label_names: list[str], model: str,
                            version: str) -> Path:
    """Write ``prediction`` (as from ``Predictor.predict_sample``) for ``image`` as a TID 1500 SR at ``path``.

    Raises:
        UnsupportedFileError: the image was not read from DICOM.
        PredictionError: the prediction lacks ``label``/``probabilities``, names a class not in
            ``label_names``, or holds a probability that is not a number in ``[0, 1]``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    finding, probability, label = _checked(prediction, label_names, path)
    sources = source_datasets(image)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"medsight {model} result"),
        finding_type=finding_code(finding),
        algorithm_id=hd.sr.AlgorithmIdentification(name=f"medsight {model}", version=version),
        measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=probability,
                                        unit=hd.sr.CodedConcept(value="1", scheme_designator="UCUM",
                                                                meaning="no units"))],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Conclusion, value=finding_code(label)),
                                 *_domain_evaluation(prediction)],
    )
    _add_domain_reasons(group, prediction)
    return save_dataset(report_document(sources, [group], model=model, kind="classification"), path)


def report_document(sources: list, groups: list, *, model: str, kind: str):
    """The Comprehensive 3D SR holding a TID 1500 report of ``groups`` about ``sources`` (their headers), in the
    sources' study, a new series described ``medsight <model> <kind>``, observed by the device medsight <model>.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from medsight import __version__

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="medsight", manufacturer_name="medsight", model_name=model),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_procedure(str(sources[0].get("Modality", ""))),
        imaging_measurements=groups or None, referenced_images=library_entries(sources) or None,
    )
    with no_patient_warnings():
        document = hd.sr.Comprehensive3DSR(
            evidence=sources, content=report, series_instance_uid=generate_uid(), series_number=901,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="medsight",
            manufacturer_model_name=f"medsight {model}", software_versions=f"medsight {__version__}",
            device_serial_number="none", series_description=f"medsight {model} {kind}", is_complete=True,
        )
    _identify_private_scheme(document)
    return document


def _identify_private_scheme(document) -> None:
    """Describe ``99MEDSIGHT`` in the Coding Scheme Identification Sequence where the document uses it."""
    from pydicom.dataset import Dataset

    if not any(e.keyword == "CodingSchemeDesignator" and e.value == PRIVATE_SCHEME for e in document.iterall()):
        return
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "medsight class names"
    scheme.CodingSchemeResponsibleOrganization = "medsight"
    document.CodingSchemeIdentificationSequence = [scheme]


def _domain_evaluation(prediction: dict) -> list:
    """The *Out of domain* Yes/No evaluation of a checked prediction; none where nothing was checked."""
    import highdicom as hd

    flagged = prediction.get("out_of_domain")
    if flagged is None:
        return []
    answer = ("373066001", "Yes") if flagged else ("373067005", "No")
    return [hd.sr.QualitativeEvaluation(
        name=hd.sr.CodedConcept(value="OUT-OF-DOMAIN", scheme_designator=PRIVATE_SCHEME, meaning="Out of domain"),
        value=hd.sr.CodedConcept(value=answer[0], scheme_designator="SCT", meaning=answer[1]))]


def _add_domain_reasons(group, prediction: dict) -> None:
    """A *Comment* text item ``out of domain: <reasons>`` in the measurement group of an out-of-domain input."""
    import highdicom as hd

    if not prediction.get("out_of_domain"):
        return
    reasons = "; ".join(str(r) for r in prediction.get("domain_reasons") or []) or "no reason recorded"
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=hd.sr.CodedConcept(value=COMMENT, scheme_designator="DCM", meaning="Comment"),
        value=f"{OUT_OF_DOMAIN_PREFIX}{reasons}", relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))


def library_entries(sources: list) -> list:
    """Headers highdicom can describe in the Image Library (TID 1604 for CT, MR and PET: spacing, thickness,
    orientation, position), taken from the functional groups of an enhanced file; headers without them are left out.
    """
    import copy

    from medsight.io import dicom_geometry as geo

    entries = []
    for source in sources:
        if source.get("Modality") not in _CROSS_SECTIONAL:
            entries.append(source)
            continue
        entry = copy.deepcopy(source)
        for keyword, sequence in _DESCRIPTORS.items():
            value = geo.attribute(source, sequence, keyword)
            if value not in (None, ""):
                setattr(entry, keyword, value)
        if all(entry.get(keyword) not in (None, "") for keyword in _DESCRIPTORS):
            entries.append(entry)
    return entries


#: Modalities whose Image Library entries highdicom describes with TID 1604, and where each descriptor lives
_CROSS_SECTIONAL = ("CT", "MR", "PT")
_DESCRIPTORS = {"PixelSpacing": "PixelMeasuresSequence", "SliceThickness": "PixelMeasuresSequence",
                "ImageOrientationPatient": "PlaneOrientationSequence",
                "ImagePositionPatient": "PlanePositionSequence"}


def read_sr(path: Path):
    """The highdicom SR of ``path``.

    Raises:
        UnreadableFileError: not a readable DICOM SR (whatever the decoder raised).
    """
    import highdicom as hd
    from pydicom.errors import InvalidDicomError

    try:
        return hd.sr.srread(path)
    except (InvalidDicomError, RuntimeError, ValueError, AttributeError, OSError) as exc:
        raise UnreadableFileError(path, f"is not a readable DICOM SR ({type(exc).__name__})",
                                  "pass a report written by medsight") from None


def read_classification_sr(path: Path) -> dict[str, Any]:
    """Read a report written by :func:`write_classification_sr` back with highdicom.

    Returns:
        ``{"label", "finding", "probability", "model", "version", "study_uid", "referenced_series_uid",
        "out_of_domain", "domain_reasons"}``; ``out_of_domain`` is None for a report of an unchecked input.

    Raises:
        UnreadableFileError: not a DICOM SR, or one without a medsight classification group.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sr = read_sr(path)
    report = sr.content
    groups = report.get_image_measurement_groups() if isinstance(report, hd.sr.MeasurementReport) else []
    if not groups:
        raise UnreadableFileError(path, "holds no TID 1500 measurement group", "pass a report written by medsight")
    group = groups[0]
    measurement = next(iter(group.get_measurements(name=codes.DCM.Probability)), None)
    evaluation = next(iter(group.get_qualitative_evaluations(name=codes.DCM.Conclusion)), None)
    if measurement is None or evaluation is None:
        raise UnreadableFileError(path, "has no probability or conclusion", "pass a report written by medsight")
    device = report.get_observer_contexts(observer_type=codes.DCM.Device)
    series = sr.get_evidence_series(current_procedure_only=True)
    return {
        "label": evaluation.value.meaning,
        "finding": group.finding_type.meaning if group.finding_type is not None else None,
        "probability": float(measurement.value),
        "model": device[0].observer_identifying_attributes.model_name if device else None,
        "version": text_item(group[0], ALGORITHM_VERSION),
        "study_uid": str(sr.StudyInstanceUID),
        "referenced_series_uid": str(series[0][1]) if series else None,
        **_domain_read(group),
    }


def _domain_read(group) -> dict[str, Any]:
    """``out_of_domain`` (None: not checked) and ``domain_reasons`` of a measurement group."""
    flagged = next((item.value.meaning == "Yes" for item in group.get_qualitative_evaluations()
                    if item.name.value == "OUT-OF-DOMAIN" and item.name.scheme_designator == PRIVATE_SCHEME), None)
    comment = text_item(group[0], COMMENT) or ""
    reasons = comment.removeprefix(OUT_OF_DOMAIN_PREFIX).split("; ") if comment.startswith(OUT_OF_DOMAIN_PREFIX) else []
    return {"out_of_domain": flagged, "domain_reasons": reasons}


def _checked(prediction: dict, label_names: list[str], path: Path) -> tuple[str, float, str]:
    """(finding, its probability, decided label) from a prediction, or a PredictionError."""
    label, probabilities = prediction.get("label"), prediction.get("probabilities")
    if not isinstance(probabilities, dict) or label is None:
        raise PredictionError(path, "the prediction has no 'label' and 'probabilities'",
                              "pass the dict that Predictor.predict_sample returns")
    unknown = sorted({str(n) for n in (label, *probabilities)} - set(label_names))
    if unknown:
        raise PredictionError(path, f"the prediction names classes {unknown} not in label_names {label_names}",
                              "pass the bundle's label_names")
    for name, value in probabilities.items():
        valid = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= value <= 1.0
        if not valid:  # NaN fails the range test too
            raise PredictionError(path, f"the probability of {name!r} is {value!r}, not a number in [0, 1]",
                                  "pass probabilities (after softmax/sigmoid), not logits")
    finding = label_names[1] if len(label_names) == 2 else label
    if finding not in probabilities:
        raise PredictionError(path, f"the prediction has no probability for {finding!r}",
                              "pass the probabilities of every class")
    return finding, float(probabilities[finding]), label


def _procedure(modality: str):
    """The CID 100 procedure code for a modality (*Imaging procedure* where none is specific)."""
    from pydicom.sr.codedict import codes

    name = {"CT": "CTUnspecifiedBodyRegion", "MR": "MRIUnspecifiedBodyRegion", "PT": "PETUnspecifiedBodyRegion",
            "NM": "NMUnspecifiedBodyRegion", "CR": "XRUnspecifiedBodyRegion", "DX": "XRUnspecifiedBodyRegion"}
    return getattr(codes.LN, name[modality]) if modality in name else codes.SCT.ImagingProcedure


def text_item(container, concept_value: str) -> str | None:
    """The text value of the first item named ``concept_value`` under ``container`` (depth-first)."""
    for item in getattr(container, "ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None
        if name == concept_value and "TextValue" in item:
            return str(item.TextValue)
        found = text_item(item, concept_value)
        if found is not None:
            return found
    return None


def save_dataset(dataset, path: Path) -> Path:
    """Write whole or not at all (:func:`medsight.atomic_write.replacing`), creating the folder.

    Raises:
        OutputWriteError: the disk is full, or the folder is not writable.
    """
    path = Path(path)
    with replacing(path) as staging:
        dataset.save_as(staging)
    return path
