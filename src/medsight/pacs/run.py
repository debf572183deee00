"""Run a bundle on one study of a PACS and store the result back into that study.

For each series of the study that the bundle applies to (the filter's modality and series
description; segmentations, reports and other non-image series are never inputs), the series
is retrieved (WADO-RS) into ``work_dir``, read as a volume, and

* a segmentation bundle writes a DICOM SEG referencing the source slices,
* a classification bundle writes a DICOM SR with the predicted label and probabilities, and whether the
  series lies outside the model's training domain and why (the bundle's ``predict.out_of_domain``: under
  ``refuse`` an out-of-domain series is an :class:`~medsight.inference.domain.OutOfDomainError`, no SR),
* a detection bundle writes a DICOM SR with one image region per finding at the bundle's threshold and its score
  (a 2D model runs on each image of the series, a 3D model on the volume: :mod:`medsight.detection.dicom_report`),

which is stored (STOW-RS) into the same study.

Example:
    >>> stored = run_study(PacsClient(url), "1.2.392...", "runs/ct/model", work_dir=Path("work"))
    >>> stored["outputs"][0]["kind"], stored["outputs"][0]["source_series_uid"]
    ('SEG', '1.2.392...')
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from medsight.bundle import Bundle, load_bundle
from medsight.pacs.client import PacsClient, PacsError, SeriesFilter, SeriesRef

log = logging.getLogger(__name__)


class NoMatchingSeriesError(PacsError):
    """The study holds no series the bundle applies to."""


def input_series(client: PacsClient, study_uid: str, where: SeriesFilter | None = None) -> list[SeriesRef]:
    """The image series of a study that match ``where`` (SEG, SR and other non-image series left out)."""
    from medsight.io.dicom_series import NON_IMAGE_MODALITIES

    return [s for s in client.series(study_uid, where=where) if s.modality.upper() not in NON_IMAGE_MODALITIES]


def stored_results(client: PacsClient, study_uid: str, bundle: Bundle) -> list[SeriesRef]:
    """The SEG / SR series this bundle's model already stored in the study (found by their series description).

    The watcher checks it before processing, so a crash between the STOW and the state save
    does not store a second result.
    """
    kind = bundle.task if bundle.task in ("segmentation", "detection") else "classification"
    description = f"medsight {bundle.model.name} {kind}".lower()
    return [s for s in client.series(study_uid) if s.modality.upper() in ("SEG", "SR")
            and s.description.lower() == description]


def run_study(client: PacsClient, study_uid: str, bundle: Bundle | str | Path, *, work_dir: str | Path,
              where: SeriesFilter | None = None, device: str = "cpu") -> dict[str, Any]:
    """Segment or classify every matching series of a study and STOW the SEG / SR objects back.

    Args:
        client: the PACS.
        study_uid: the StudyInstanceUID to process.
        bundle: a bundle folder or a loaded bundle (segmentation, classification or detection).
        work_dir: where the series are downloaded and the results written.
        where: which series the bundle applies to (default: every image series).
        device: where the model runs.

    Returns:
        ``{"study_uid", "outputs": [{"kind", "source_series_uid", "sop_instance_uid", "series_instance_uid",
        "path"}]}`` for each object stored.

    Raises:
        NoMatchingSeriesError: the study has no series that matches.
        PacsError / PacsUnavailableError: the PACS refused a request or is unreachable.
        MedsightError: a series the bundle cannot read.
    """
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    model = _model_for(loaded, device)
    series = input_series(client, study_uid, where)
    if not series:
        raise NoMatchingSeriesError(f"study {study_uid}", f"has no image series matching {_describe(where)}",
                                    "check --modality / --series-description against `medsight pacs query`")
    name = loaded.model.name
    version = loaded.version
    work = Path(work_dir) / _safe(study_uid)
    outputs = []
    for ref in series:
        folder = work / _safe(ref.series_uid)
        client.retrieve_series(study_uid, ref.series_uid, folder / "source")
        path = _infer_and_write(model, loaded, folder, ref.series_uid, name=name, version=version)
        stored = client.store([path], study_uid=study_uid)
        outputs.append(_record(path, ref.series_uid, stored[0]))
        log.info("study %s series %s: stored %s %s", study_uid, ref.series_uid, outputs[-1]["kind"], stored[0])
    return {"study_uid": study_uid, "outputs": outputs}


def _model_for(bundle: Bundle, device: str):
    """A Segmenter, Detector or Predictor for the bundle's task."""
    if bundle.task == "detection":
        from medsight.inference.detector import Detector

        return Detector(bundle)
    if bundle.task == "segmentation":
        from medsight.inference.segmenter import Segmenter

        return Segmenter(bundle, device=device)
    from medsight.inference.predictor import Predictor

    return Predictor(bundle, device=device)


def _infer_and_write(model, bundle: Bundle, folder: Path, series_uid: str, *, name: str, version: str) -> Path:
    from medsight.io.dicom_series import read_dicom_series

    if bundle.task == "detection":
        from medsight.detection.dicom_report import detect_dicom

        return detect_dicom(model, folder / "source", folder / "sr.dcm", series_uid=series_uid)

    sample = read_dicom_series(folder / "source", series_uid=series_uid)
    if bundle.task == "segmentation":
        from medsight.io.seg_writer import write_dicom_seg

        result = model.segment_sample(sample)
        return write_dicom_seg(result.labels, sample, folder / "seg.dcm", label_names=bundle.label_names,
                               model=name, version=version)
    from medsight.io.sr_writer import write_classification_sr

    prediction = model.predict_sample(sample)
    return write_classification_sr(prediction, sample, folder / "sr.dcm", label_names=bundle.label_names,
                                   model=name, version=version)


def _record(path: Path, source_series_uid: str, sop_uid: str) -> dict[str, Any]:
    import pydicom

    header = pydicom.dcmread(path, stop_before_pixels=True)
    return {"kind": str(header.Modality), "source_series_uid": source_series_uid, "sop_instance_uid": sop_uid,
            "series_instance_uid": str(header.SeriesInstanceUID), "path": str(path)}


def _describe(where: SeriesFilter | None) -> str:
    if where is None or (where.modality is None and where.description is None):
        return "(any)"
    return f"modality={where.modality or '*'} description={where.description or '*'}"


def _safe(uid: str) -> str:
    """A UID as a folder name (UIDs are digits and dots; anything else is replaced)."""
    return re.sub(r"[^0-9A-Za-z.]", "_", uid)
