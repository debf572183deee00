"""``watch``: each study once across polls and restarts, bad studies fail alone, a PACS crash loses nothing."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medsight.errors import OutputWriteError
from medsight.pacs import PacsClient, SeriesFilter, WatchState, WatchStateError, load_state, save_state, watch
from medsight.pacs.client import backoff_delays


def test_backoff_doubles_up_to_the_cap() -> None:
    assert backoff_delays(5, 0.5, 3.0) == [0.5, 1.0, 2.0, 3.0]
    assert backoff_delays(1, 0.5, 3.0) == []


def test_state_round_trips_and_is_replaced_atomically(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "state.json"
    assert load_state(path) == WatchState()  # no file yet: nothing done
    save_state(WatchState(processed={"1.2.3": {"outputs": []}}, attempts={"1.2.4": 1}), path)
    assert load_state(path) == WatchState(processed={"1.2.3": {"outputs": []}}, attempts={"1.2.4": 1})

    def disk_full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OutputWriteError, match="state.json: could not be written: the disk is full"):
        save_state(WatchState(failed={"9.9": {}}), path)
    monkeypatch.undo()
    assert load_state(path).processed == {"1.2.3": {"outputs": []}}  # the old state is intact
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind


@pytest.mark.parametrize(("text", "problem"), [
    ('{"processed": {', "is not valid JSON"),
    ('["1.2.3"]', "is not a version-1 medsight watch state"),
    ('{"version": 1, "processed": [], "failed": {}, "attempts": {}}', "is not a version-1 medsight watch state"),
])
def test_a_corrupt_state_file_is_a_clear_error(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(WatchStateError, match=f"{problem}.*delete it to start over"):
        load_state(path)


def _bad_series(ct_series: list[Path], folder: Path) -> tuple[str, list[Path]]:
    """A new CT study whose two slices have different sizes (512 and 256 px), which no reader accepts."""
    study, series = generate_uid(), generate_uid()
    folder.mkdir()
    paths = []
    for k, source in enumerate(ct_series[:2]):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if k == 1:
            pixels = np.ascontiguousarray(ds.pixel_array[::2, ::2])
            ds.Rows, ds.Columns, ds.PixelData = 256, 256, pixels.tobytes()
        paths.append(folder / f"{k}.dcm")
        ds.save_as(paths[-1])
    return study, paths


def _seg_count(client: PacsClient, study: str) -> int:
    return sum(s.modality == "SEG" for s in client.series(study))


def test_watch_processes_each_study_once_and_a_bad_study_fails_alone(orthanc_factory, ct_series, seg_bundle,
                                                                     tmp_path, caplog) -> None:
    server = orthanc_factory()
    bad_study, bad_files = _bad_series(ct_series, tmp_path / "bad")
    server.upload(bad_files + ct_series)
    good_study = str(pydicom.dcmread(ct_series[0], stop_before_pixels=True).StudyInstanceUID)
    client = PacsClient(server.dicomweb)
    state_path = tmp_path / "state.json"
    caplog.set_level(logging.INFO, logger="medsight.pacs")

    state = watch(client, seg_bundle, state_path=state_path, filters=SeriesFilter(modality="CT"), interval=0,
                  max_polls=2, max_attempts=2)
    assert list(state.processed) == [good_study]
    assert state.processed[good_study]["outputs"][0]["kind"] == "SEG"
    assert list(state.failed) == [bad_study]
    assert state.failed[bad_study]["attempts"] == 2 and "different sizes" in state.failed[bad_study]["error"]
    assert load_state(state_path) == state  # persisted
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(bad_study in e for e in errors) and "giving up" in errors[1]
    assert "JANCT000" not in caplog.text  # the PatientName never reaches the log
    assert _seg_count(client, good_study) == 1

    # a further poll, and a restarted watcher with the same state, do nothing
    again = watch(client, seg_bundle, state_path=state_path, filters=SeriesFilter(modality="CT"), interval=0,
                  once=True)
    restarted = watch(PacsClient(server.dicomweb), seg_bundle, state_path=state_path,
                      filters=SeriesFilter(modality="CT"), interval=0, max_polls=2)
    assert again == restarted == state
    assert _seg_count(client, good_study) == 1

    # a crash after the STOW but before the state save: the result in the PACS is found, not stored twice
    state_path.unlink()
    recovered = watch(client, seg_bundle, state_path=state_path, filters=SeriesFilter(modality="CT"), interval=0,
                      once=True)
    assert recovered.processed[good_study]["found_in_pacs"]
    assert _seg_count(client, good_study) == 1


def test_a_pacs_crash_during_watch_loses_no_study(orthanc_factory, ct_series, seg_bundle, tmp_path, caplog) -> None:
    server = orthanc_factory()  # empty: the study arrives after the crash
    state_path = tmp_path / "state.json"
    client = PacsClient(server.dicomweb, attempts=2, delay=0.05)
    stop = threading.Event()
    caplog.set_level(logging.WARNING, logger="medsight.pacs")
    watcher = threading.Thread(target=watch, args=(client, seg_bundle), daemon=True,
                               kwargs={"state_path": state_path, "interval": 0.1, "max_backoff": 0.4, "stop": stop})
    watcher.start()
    try:
        server.kill()
        deadline = time.monotonic() + 30
        while "PACS unavailable" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "PACS unavailable" in caplog.text
        assert watcher.is_alive()
        server.start()  # same storage, same port
        server.upload(ct_series)
        study = str(pydicom.dcmread(ct_series[0], stop_before_pixels=True).StudyInstanceUID)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and study not in (load_state(state_path).processed
                                                             if state_path.exists() else {}):
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join(timeout=60)
    state = load_state(state_path)
    assert list(state.processed) == [study] and state.failed == {} and state.attempts == {}
    assert _seg_count(client, study) == 1


def test_cli_watch_once_resumes_from_its_state(orthanc_factory, ct_series, seg_bundle, tmp_path) -> None:
    import typer
    from typer.testing import CliRunner

    from medsight.cli import pacs_cmd

    app = typer.Typer()
    app.add_typer(pacs_cmd.app, name="pacs")
    server = orthanc_factory()
    server.upload(ct_series)
    state = tmp_path / "state.json"
    args = ["pacs", "watch", "--url", server.dicomweb, "--bundle", str(seg_bundle), "--modality", "CT",
            "--state", str(state), "--once"]
    for _ in range(2):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "1 processed, 0 failed" in result.stdout
    study = str(pydicom.dcmread(ct_series[0], stop_before_pixels=True).StudyInstanceUID)
    assert _seg_count(PacsClient(server.dicomweb), study) == 1
    state.write_text("{not json")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "is not valid JSON" in result.output and "delete it to start over" in result.output
