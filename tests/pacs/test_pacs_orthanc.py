"""The PACS client against a real Orthanc: query (QIDO-RS), run a bundle (WADO-RS in, SEG out by STOW-RS)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pydicom
import pytest
import typer
from typer.testing import CliRunner

from medsight.cli import pacs_cmd
from medsight.pacs import NoMatchingSeriesError, PacsClient, PacsError, PacsUnavailableError, SeriesFilter, run_study

CT_STUDY = "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"


@pytest.fixture(scope="module")
def source(orthanc, ct_series: list[Path]) -> dict:
    """The CT series uploaded to Orthanc; its UIDs and each slice's position by SOPInstanceUID."""
    orthanc.upload(ct_series)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in ct_series]
    return {"study": str(headers[0].StudyInstanceUID), "series": str(headers[0].SeriesInstanceUID),
            "positions": {str(h.SOPInstanceUID): [float(v) for v in h.ImagePositionPatient] for h in headers},
            "patient": str(headers[0].PatientName)}


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(pacs_cmd.app, name="pacs")
    return app


def test_query_lists_the_study_and_its_series_without_patient_fields(orthanc, source: dict) -> None:
    client = PacsClient(orthanc.dicomweb)
    studies = client.studies()
    assert [s.study_uid for s in studies] == [CT_STUDY] == [source["study"]]
    assert studies[0].modalities == ("CT",) and studies[0].date == "20030417"
    assert client.studies(modality="MR") == []
    series = client.series(source["study"], where=SeriesFilter(modality="ct"))
    assert [(s.series_uid, s.modality, s.n_instances) for s in series] == [(source["series"], "CT", 3)]
    assert client.series(source["study"], where=SeriesFilter(description="*liver*")) == []

    result = CliRunner().invoke(_cli(), ["pacs", "query", "--url", orthanc.dicomweb])
    assert result.exit_code == 0, result.output
    assert CT_STUDY in result.output and "20030417" in result.output
    assert source["patient"] not in result.output  # PatientName is never asked for nor printed
    result = CliRunner().invoke(_cli(), ["pacs", "query", "--url", orthanc.dicomweb, "--study", CT_STUDY, "--json"])
    rows = json.loads(result.stdout)
    assert rows[0]["series_uid"] == source["series"] and rows[0]["n_instances"] == 3


def _check_seg(client: PacsClient, source: dict, seg_series_uid: str, tmp_path: Path) -> None:
    """The SEG as Orthanc serves it: same study, references the source series, one frame per aligned slice."""
    files = client.retrieve_series(source["study"], seg_series_uid, tmp_path / "seg")
    assert len(files) == 1
    seg = pydicom.dcmread(files[0])
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == source["study"]
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source["series"]
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == set(source["positions"])
    frames = seg.PerFrameFunctionalGroupsSequence
    assert len(frames) == 3  # every voxel is 'body' (threshold 0): one frame per source slice
    seen = set()
    for frame in frames:
        sop = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, source["positions"][sop], atol=1e-3), (sop, position)
        seen.add(sop)
    assert seen == set(source["positions"])
    assert seg.pixel_array.shape == (3, 512, 512) and seg.pixel_array.all()


def test_run_study_stores_a_seg_aligned_with_the_source_slices(orthanc, source, seg_bundle, tmp_path) -> None:
    client = PacsClient(orthanc.dicomweb)
    stored = run_study(client, source["study"], seg_bundle, work_dir=tmp_path / "work",
                       where=SeriesFilter(modality="CT"))
    assert stored["study_uid"] == source["study"]
    [output] = stored["outputs"]
    assert output["kind"] == "SEG" and output["source_series_uid"] == source["series"]
    segs = [s for s in client.series(source["study"]) if s.series_uid == output["series_instance_uid"]]
    assert [(s.modality, s.n_instances) for s in segs] == [("SEG", 1)]
    _check_seg(client, source, output["series_instance_uid"], tmp_path)


def test_cli_run_prints_what_it_stored(orthanc, source, seg_bundle, tmp_path) -> None:
    result = CliRunner().invoke(_cli(), ["pacs", "run", "--url", orthanc.dicomweb, "--study", source["study"],
                                         "--bundle", str(seg_bundle), "--modality", "CT",
                                         "--work-dir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    stored = json.loads(result.stdout)
    [output] = stored["outputs"]
    uids = {s.series_uid: s.modality for s in PacsClient(orthanc.dicomweb).series(source["study"])}
    assert uids[output["series_instance_uid"]] == "SEG"


def test_a_study_without_a_matching_series_is_a_clear_error(orthanc, source, seg_bundle, tmp_path) -> None:
    with pytest.raises(NoMatchingSeriesError, match="no image series matching modality=MR.*pacs query"):
        run_study(PacsClient(orthanc.dicomweb), source["study"], seg_bundle, work_dir=tmp_path,
                  where=SeriesFilter(modality="MR"))
    result = CliRunner().invoke(_cli(), ["pacs", "run", "--url", orthanc.dicomweb, "--study", source["study"],
                                         "--bundle", str(seg_bundle), "--series-description", "*liver*",
                                         "--work-dir", str(tmp_path)])
    assert result.exit_code == 2 and "description=*liver*" in result.output


def test_a_4xx_answer_fails_at_once_without_retrying(orthanc, source, tmp_path) -> None:
    waits: list[float] = []
    client = PacsClient(orthanc.dicomweb, attempts=4, sleep=waits.append)
    with pytest.raises(PacsError, match="HTTP 404") as raised:
        client.retrieve_series(source["study"], "1.2.3.4.5", tmp_path)
    assert not isinstance(raised.value, PacsUnavailableError)
    assert waits == []


def test_an_unreachable_pacs_is_retried_with_backoff_then_reported(tmp_path) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []
    client = PacsClient(f"http://127.0.0.1:{port}/dicom-web", attempts=4, delay=0.25, max_delay=0.75,
                        sleep=waits.append)
    with pytest.raises(PacsUnavailableError, match="unreachable.*after 4 attempt.*check that it is running"):
        client.studies()
    assert waits == [0.25, 0.5, 0.75]


def test_credentials_are_checked_and_never_shown(monkeypatch) -> None:
    monkeypatch.setenv("MEDSIGHT_PACS_TOKEN", "s3cret-token")
    client = PacsClient("http://127.0.0.1:1/dicom-web")
    assert client._web._session.headers["Authorization"] == "Bearer s3cret-token"
    assert "s3cret" not in repr(client)
    with pytest.raises(PacsError, match="both a user and a bearer token"):
        PacsClient("http://127.0.0.1:1/dicom-web", user="ann", password="pw")
    monkeypatch.delenv("MEDSIGHT_PACS_TOKEN")
    with pytest.raises(PacsError, match="has no password"):
        PacsClient("http://127.0.0.1:1/dicom-web", user="ann")


def test_run_study_with_a_classifier_stores_an_sr_in_the_study(orthanc, source, tmp_path) -> None:
    import torch

    from medsight.bundle import Bundle, provenance
    from medsight.config import ModelConfig, PreprocessConfig
    from medsight.io.sr_writer import read_classification_sr
    from medsight.models import create_model

    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=3)
    bundle = Bundle(task="classification", model=ModelConfig(name="compact_cnn"),
                    preprocess=PreprocessConfig(size=[4, 32, 32], channels=1, normalize="minmax"),
                    label_names=["normal", "nodule"], threshold=0.5, provenance=provenance(),
                    state_dict=net.state_dict())
    client = PacsClient(orthanc.dicomweb)
    stored = run_study(client, source["study"], bundle, work_dir=tmp_path / "work")
    [output] = stored["outputs"]
    assert output["kind"] == "SR" and output["source_series_uid"] == source["series"]
    [path] = client.retrieve_series(source["study"], output["series_instance_uid"], tmp_path / "sr")
    report = read_classification_sr(path)
    assert report["study_uid"] == source["study"] and report["referenced_series_uid"] == source["series"]
    assert report["label"] in {"normal", "nodule"} and 0 <= report["probability"] <= 1
