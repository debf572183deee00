"""DICOM SR (TID 1500) output of a classification: same study, new series, round trip to the same values."""

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medsight.errors import MedsightError, UnsupportedFileError
from medsight.io import read_image
from medsight.io.sr_writer import PredictionError, finding_code, read_classification_sr, write_classification_sr
from medsight.sample import Sample

NAMES = ["normal", "pneumonia"]
PREDICTION = {"label": "pneumonia", "probabilities": {"normal": 0.1234567891234, "pneumonia": 0.8765432108766},
              "threshold": 0.5}


@pytest.fixture(params=["dicom/pydicom/CT_small.dcm", "dicom/dcmqi/segmentations/ct-3slice"], ids=["2d", "series"])
def source(request, shared_data):
    return shared_data / request.param


def test_round_trip_gives_back_label_probability_model_and_uids(source, tmp_path):
    image = read_image(source)
    path = write_classification_sr(PREDICTION, image, tmp_path / "sr.dcm", label_names=NAMES, model="resnet18",
                                   version="run-3")
    back = read_classification_sr(path)
    assert back == {"label": "pneumonia", "finding": "pneumonia", "probability": 0.8765432108766,
                    "model": "resnet18", "version": "run-3", "study_uid": image.meta["StudyInstanceUID"],
                    "referenced_series_uid": image.meta["SeriesInstanceUID"], "out_of_domain": None,
                    "domain_reasons": []}
    sr = pydicom.dcmread(path)
    assert sr.SeriesInstanceUID != image.meta["SeriesInstanceUID"]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.Modality == "SR"  # Comprehensive 3D SR
    evidence = hd.sr.srread(path).get_evidence(current_procedure_only=True)
    assert len(evidence) == image.meta.get("n_slices", 1)


def test_report_is_tid1500_with_coded_finding_device_observer_and_unitless_probability(shared_data, tmp_path):
    image = read_image(shared_data / "dicom/pydicom/CT_small.dcm")
    path = write_classification_sr(PREDICTION | {"label": "normal"}, image, tmp_path / "sr.dcm", label_names=NAMES,
                                   model="resnet18", version="run-3")
    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    (group,) = report.get_image_measurement_groups()
    assert group.finding_type == Code("233604007", "SCT", "Pneumonia")  # value+scheme
    (probability,) = group.get_measurements(name=codes.DCM.Probability)
    assert probability.unit.value == "1" and probability.unit.scheme_designator == "UCUM"
    assert probability.value == pytest.approx(0.8765432108766, abs=1e-12)
    (decided,) = group.get_qualitative_evaluations(name=codes.DCM.Conclusion)
    assert (decided.value.value, decided.value.meaning) == ("17621005", "normal")  # SCT Normal
    (device,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    assert device.observer_identifying_attributes.name == "medsight"
    assert device.observer_identifying_attributes.model_name == "resnet18"
    assert read_classification_sr(path)["label"] == "normal"
    library = hd.sr.srread(path).ContentSequence
    assert any(item.ConceptNameCodeSequence[0].CodeValue == "111028" for item in library)  # Image Library


def test_multiclass_and_uncoded_names_fall_back_to_the_private_scheme(shared_data, tmp_path):
    image = read_image(shared_data / "dicom/pydicom/CT_small.dcm")
    names = ["cat a", "glioma", "meningioma"]
    prediction = {"label": "meningioma", "probabilities": {"cat a": 0.1, "glioma": 0.2, "meningioma": 0.7}}
    path = write_classification_sr(prediction, image, tmp_path / "sr.dcm", label_names=names, model="m", version="2")
    back = read_classification_sr(path)
    assert (back["label"], back["finding"], back["probability"]) == ("meningioma", "meningioma", 0.7)
    code = finding_code("Glioma grade 2")
    assert (code.scheme_designator, code.value, code.meaning) == ("99MEDSIGHT", "Glioma-grade-2", "Glioma grade 2")
    assert finding_code("Tumour").value == "108369006"


@pytest.mark.parametrize("prediction, match", [
    ({"label": "pneumonia", "probabilities": {"normal": -0.2, "pneumonia": 1.2}}, "not a number in \\[0, 1\\]"),
    ({"label": "pneumonia", "probabilities": {"normal": float("nan"), "pneumonia": 0.5}}, "not a number"),
    ({"label": "cat", "probabilities": {"normal": 0.5, "pneumonia": 0.5}}, "not in label_names"),
    ({"probabilities": {"normal": 0.5, "pneumonia": 0.5}}, "has no 'label'"),
])
def test_bad_predictions_are_clear_and_write_nothing(shared_data, tmp_path, prediction, match):
    image = read_image(shared_data / "dicom/pydicom/CT_small.dcm")
    with pytest.raises(PredictionError, match=match) as error:
        write_classification_sr(prediction, image, tmp_path / "sr.dcm", label_names=NAMES, model="m", version="1")
    assert isinstance(error.value, MedsightError) and error.value.fix
    assert not list(tmp_path.iterdir())


def test_non_dicom_image_and_non_sr_file_are_clear(shared_data, tmp_path):
    picture = Sample(np.zeros((1, 8, 8), np.float32), (1.0, 1.0), meta={"path": "x.png", "format": "png"})
    with pytest.raises(UnsupportedFileError, match="x.png: is not a DICOM image"):
        write_classification_sr(PREDICTION, picture, tmp_path / "sr.dcm", label_names=NAMES, model="m", version="1")
    with pytest.raises(MedsightError, match="not a readable DICOM SR"):
        read_classification_sr(shared_data / "dicom/pydicom/CT_small.dcm")


def test_no_patient_fields_in_warnings_or_errors(shared_data, tmp_path, recwarn):
    image = read_image(shared_data / "dicom/pydicom/CT_small.dcm")
    name = str(pydicom.dcmread(shared_data / "dicom/pydicom/CT_small.dcm").PatientName)
    read_classification_sr(write_classification_sr(PREDICTION, image, tmp_path / "sr.dcm", label_names=NAMES,
                                                   model="m", version="1"))
    with pytest.raises(PredictionError) as error:
        write_classification_sr({"label": "x", "probabilities": {}}, image, tmp_path / "b.dcm", label_names=NAMES,
                                model="m", version="1")
    assert all(name not in str(w.message) for w in recwarn) and name not in str(error.value)


def _library_images(path) -> list:
    """The IMAGE items of the report's Image Library (DCM 111028), with their descriptors."""
    def images(items):
        for item in items:
            if item.ValueType == "IMAGE":
                yield item
            yield from images(item.get("ContentSequence", []))

    library = [item for item in pydicom.dcmread(path).ContentSequence
               if item.ConceptNameCodeSequence[0].CodeValue == "111028"]
    return list(images(library))


def _descriptor(image_item, code: str) -> float:
    return next(float(item.MeasuredValueSequence[0].NumericValue) for item in image_item.ContentSequence
                if item.ConceptNameCodeSequence[0].CodeValue == code)


def test_an_enhanced_ct_is_described_from_its_functional_groups(shared_data, tmp_path):
    """highdicom reads PixelSpacing at the top level; an enhanced CT keeps it in the functional groups."""
    source = shared_data / "dicom/pydicom/eCT_Supplemental.dcm"
    path = write_classification_sr(PREDICTION, read_image(source), tmp_path / "sr.dcm", label_names=NAMES,
                                   model="m", version="1")
    assert read_classification_sr(path)["probability"] == 0.8765432108766
    (image,) = _library_images(path)
    header = pydicom.dcmread(source, stop_before_pixels=True)
    measures = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert _descriptor(image, "111026") == float(measures.PixelSpacing[1])  # Horizontal Pixel Spacing
    assert _descriptor(image, "112225") == float(measures.SliceThickness)  # Slice Thickness
    assert not hasattr(header, "PixelSpacing")  # the writer described a copy, not the source header


def test_an_image_without_geometry_stays_in_the_evidence_but_not_the_library(shared_data, tmp_path):
    """emri_small is an enhanced MR stripped of its functional groups: TID 1604 cannot describe it."""
    source = shared_data / "dicom/pydicom/emri_small.dcm"
    path = write_classification_sr(PREDICTION, read_image(source), tmp_path / "sr.dcm", label_names=NAMES,
                                   model="m", version="1")
    assert _library_images(path) == []
    evidence = hd.sr.srread(path).get_evidence(current_procedure_only=True)
    assert [str(sop) for _, _, sop, _ in evidence] == [pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID]


@pytest.mark.parametrize("flagged", [True, False])
def test_an_out_of_domain_input_says_so_and_why_in_the_report(shared_data, tmp_path, flagged):
    image = read_image(shared_data / "dicom/pydicom/CT_small.dcm")
    reasons = ["DICOM Modality CT was not seen in training (seen: MR)", "the image is blank: every pixel is 0"]
    prediction = PREDICTION | {"out_of_domain": flagged, "domain_reasons": reasons if flagged else []}
    path = write_classification_sr(prediction, image, tmp_path / "sr.dcm", label_names=NAMES, model="m", version="1")
    back = read_classification_sr(path)
    assert (back["out_of_domain"], back["domain_reasons"], back["label"]) == (flagged, prediction["domain_reasons"],
                                                                             "pneumonia")
    (group,) = hd.sr.srread(path).content.get_image_measurement_groups()
    (evaluation,) = [e for e in group.get_qualitative_evaluations() if e.name.meaning == "Out of domain"]
    assert (evaluation.value.value, evaluation.value.meaning) == (("373066001", "Yes") if flagged else
                                                                  ("373067005", "No"))
    comments = [item.TextValue for item in group[0].ContentSequence if "TextValue" in item
                and item.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert comments == ([f"out of domain: {reasons[0]}; {reasons[1]}"] if flagged else [])
