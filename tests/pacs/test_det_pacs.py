"""``pacs run`` and ``pacs watch`` with a detection bundle against a real Orthanc: the findings at the bundle's
threshold are stored in the study as a TID 1500 SR (2D model: each image of the series; 3D model: the volume),
read back to the boxes the Detector predicts, once per study across watcher restarts, with no patient field logged.

The bundles are untrained RetinaNets (seeded) that keep every box (score floor 0): what is checked is that the SR
carries exactly the Detector's findings, not that they are right.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import typer
from typer.testing import CliRunner

from medsight.bundle import Bundle, build_bundle, provenance
from medsight.cli import pacs_cmd
from medsight.config import DetectConfig, PreprocessConfig
from medsight.inference.detector import Detector
from medsight.io import read_image
from medsight.io.dicom_series import read_dicom_series
from medsight.io.sr_boxes import read_detection_sr
from medsight.models.detectors import build_detector
from medsight.pacs import PacsClient, SeriesFilter, load_state, run_study, watch

NAMES = ["nodule"]
#: the Detector's boxes of the same image in another batch agree to float32 rounding of the pixels (see
#: tests/inference/test_detector.py); the SR stores them as float32 too
PIXELS, SCORES = 1e-3, 1e-5


def _bundle(spatial_dims: int, size: list[int], anchors: list[list[float]], threshold: float, *,
            keep_aspect: bool = True) -> Bundle:
    torch.manual_seed(0)
    detect = DetectConfig(score_floor=0.0, max_detections=4)
    detector = build_detector(spatial_dims, 1, NAMES, detect, anchors, backbone="resnet10", fpn_channels=8)
    return build_bundle(
        task="detection", model=detector.spec.model_config(), label_names=NAMES, provenance=provenance(),
        preprocess=PreprocessConfig(size=size, channels=1, normalize="zscore", keep_aspect=keep_aspect),
        state_dict=detector.network.state_dict(),
        detection=detector.spec.settings(detect, score_threshold=threshold, threshold_note="a test's"))


@pytest.fixture(scope="module")
def slices(ct_series: list[Path]) -> dict:
    """The CT slices as 2D images, keyed by SOPInstanceUID, and the study's UIDs and patient name."""
    header = pydicom.dcmread(ct_series[0], stop_before_pixels=True)
    images = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): read_image(f) for f in ct_series}
    return {"images": images, "study": str(header.StudyInstanceUID), "series": str(header.SeriesInstanceUID),
            "patient": str(header.PatientName)}


@pytest.fixture(scope="module")
def bundle_2d(slices: dict) -> tuple[Bundle, float]:
    """A 2D bundle whose threshold lies in the widest gap between the scores it gives the slices (so some boxes
    are findings and some are not), and that threshold."""
    bundle = _bundle(2, [64, 64], [[8.0, 8.0], [16.0, 16.0]], 0.0)
    scores = np.sort(np.concatenate([b.scores for b in Detector(bundle).predict(list(slices["images"].values()))]))
    gaps = np.diff(scores)
    widest = int(np.argmax(gaps))
    assert gaps[widest] > 10 * SCORES  # the threshold is 5 x SCORES from any score: no batch moves one across
    threshold = float(scores[widest] + gaps[widest] / 2)
    bundle.detection = bundle.detection.model_copy(update={"score_threshold": threshold})
    return bundle, threshold


@pytest.fixture(scope="module")
def server(orthanc_factory, ct_series):
    """An Orthanc of its own holding the CT study (the session's shared Orthanc keeps only what its tests expect)."""
    pacs = orthanc_factory()
    pacs.upload(ct_series)
    return pacs


def test_pacs_run_with_a_2d_model_stores_the_findings_of_each_image(server, slices, bundle_2d, tmp_path, caplog):
    bundle, threshold = bundle_2d
    client = PacsClient(server.dicomweb)
    caplog.set_level(logging.DEBUG)
    stored = run_study(client, slices["study"], bundle, work_dir=tmp_path / "work", where=SeriesFilter(modality="CT"))
    [output] = stored["outputs"]
    assert output["kind"] == "SR" and output["source_series_uid"] == slices["series"]
    [path] = client.retrieve_series(slices["study"], output["series_instance_uid"], tmp_path / "sr")
    report = read_detection_sr(path, label_names=NAMES)
    assert (report.study_uid, report.model, report.score_threshold) == (slices["study"], "retinanet", threshold)
    assert set(report.boxes) == set(slices["images"])  # every slice is listed, with or without findings
    detector = Detector(bundle)
    found = 0
    for uid, image in slices["images"].items():
        expected = detector.findings(detector.predict([image])[0])
        got = report.boxes[uid]
        assert len(got) == len(expected) and (got.scores >= threshold).all()
        np.testing.assert_allclose(got.corners, expected.corners, rtol=0, atol=PIXELS)
        np.testing.assert_allclose(got.scores, expected.scores, rtol=0, atol=SCORES)
        found += len(got)
    assert 0 < found < 4 * len(slices["images"])  # the threshold kept some boxes and dropped others
    assert slices["patient"] not in caplog.text


def test_cli_pacs_run_with_a_3d_model_stores_the_volume_findings(server, slices, ct_series, tmp_path):
    # squashed, not padded: keeping the aspect of 3 x 512 x 512 voxels would pad the volume to 256 slices first
    folder = _bundle(3, [8, 32, 32], [[4.0, 8.0, 8.0], [8.0, 16.0, 16.0]], 0.0, keep_aspect=False).save(
        tmp_path / "model")
    app = typer.Typer()
    app.add_typer(pacs_cmd.app, name="pacs")
    result = CliRunner().invoke(app, ["pacs", "run", "--url", server.dicomweb, "--study", slices["study"],
                                      "--bundle", str(folder), "--modality", "CT",
                                      "--work-dir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    [output] = json.loads(result.stdout)["outputs"]
    client = PacsClient(server.dicomweb)
    [path] = client.retrieve_series(slices["study"], output["series_instance_uid"], tmp_path / "sr")
    volume = read_dicom_series(ct_series[0].parent)
    report = read_detection_sr(path, label_names=NAMES, volume=volume)
    [(uid, got)] = report.boxes.items()
    expected = Detector.from_bundle(folder).predict([volume])[0]
    assert uid == slices["series"] and len(got) == len(expected) > 0
    # millimetres in float32 (|mm| < 512) and back through the affine add well under 1e-3 voxel
    np.testing.assert_allclose(got.corners, expected.corners, rtol=0, atol=2 * PIXELS)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=0, atol=SCORES)


def _sr_count(client: PacsClient, study: str) -> int:
    return sum(s.modality == "SR" for s in client.series(study))


def test_watch_stores_the_detection_sr_once_across_restarts(orthanc_factory, ct_series, slices, bundle_2d, tmp_path,
                                                            caplog):
    bundle, _ = bundle_2d
    pacs = orthanc_factory()
    pacs.upload(ct_series)
    client = PacsClient(pacs.dicomweb)
    state_path = tmp_path / "state.json"
    caplog.set_level(logging.INFO, logger="medsight")
    state = watch(client, bundle, state_path=state_path, filters=SeriesFilter(modality="CT"), interval=0, once=True)
    assert list(state.processed) == [slices["study"]] and state.failed == {}
    assert [o["kind"] for o in state.processed[slices["study"]]["outputs"]] == ["SR"]
    again = watch(client, bundle, state_path=state_path, filters=SeriesFilter(modality="CT"), interval=0, max_polls=2)
    assert again == state == load_state(state_path)
    assert _sr_count(client, slices["study"]) == 1
    state_path.unlink()  # a crash after the STOW, before the state save: the SR in the PACS is found, not redone
    recovered = watch(client, bundle, state_path=state_path, filters=SeriesFilter(modality="CT"), interval=0,
                      once=True)
    assert recovered.processed[slices["study"]]["found_in_pacs"]
    assert _sr_count(client, slices["study"]) == 1
    assert slices["patient"] not in caplog.text


def test_detect_dicom_refuses_a_folder_without_images_and_a_volume_for_a_2d_model(shared_data, bundle_2d, tmp_path):
    from medsight.detection.dicom_report import detect_dicom
    from medsight.errors import DatasetError, InvalidImageError

    detector = Detector(bundle_2d[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: holds no DICOM image.*the folder the series was retrieved into"):
        detect_dicom(detector, tmp_path / "empty", tmp_path / "sr.dcm")
    with pytest.raises(InvalidImageError, match="eCT_Supplemental.dcm: this model takes 2D images"):
        detect_dicom(detector, shared_data / "dicom/pydicom/eCT_Supplemental.dcm", tmp_path / "sr.dcm")
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no report written
