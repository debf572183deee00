"""The loaded model behind the service: one per worker process, loaded once at start-up.

:class:`ModelService` reads the bundle, builds the classifier (:class:`Predictor`), the
segmenter or the detector (:class:`~medsight.inference.detector.Detector`), and answers for the
model: its version (name, a hash of the bundle files, the creation stamp), its model card,
predictions, masks, boxes and (when ``medsight.explain`` is installed) heatmaps.

Example:
    >>> service = ModelService("runs/demo/model")
    >>> service.card()["label_names"]
    ['normal', 'nodule']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from medsight.bundle import bundle_hash, load_bundle
from medsight.errors import BundleError, ConfigError
from medsight.inference.domain import CHECK_OFF, NO_RECORD, OutOfDomainError, domain_check, unchecked
from medsight.inference.predictor import Predictor
from medsight.sample import Sample
from medsight.serve.errors import ExplainUnavailableError
from medsight.serve.pictures import middle_slice, preview_png
from medsight.triage.policy import served_policy

TASKS = ("classification", "segmentation", "detection")
#: Provenance keys that may list source files (and so patient names in file names); dropped from the card.
_FILE_LIST_KEYS = ("file", "files", "paths", "skipped", "ids", "cases")
_SPLIT_KEYS = ("split", "splits")


class ModelService:
    """A bundle loaded for serving: the network, its preprocessing, version and card."""

    def __init__(self, bundle_path: str | Path, *, device: str = "cpu", mixed_precision: bool = False,
                 out_of_domain: str | None = None, profile: str | None = None) -> None:
        """``mixed_precision``: a segmenter's network runs under autocast (bfloat16 on a CPU with native
        bf16); classifiers run as they are. ``version["precision"]`` says what it computes in.
        ``out_of_domain``: a classifier's action for inputs outside its training domain (None: the bundle's).
        ``profile``: a segmenter's inference profile (None: the bundle's default)."""
        start = perf_counter()
        self.path = Path(bundle_path)
        self.task = load_bundle(self.path, weights=False).task
        # the runners get the folder, not a loaded Bundle, so a classifier can pick its ONNX export
        if self.task == "classification":
            self.runner: Any = Predictor(self.path, device=device, out_of_domain=out_of_domain)
        elif self.task == "segmentation":
            from medsight.inference.segmenter import Segmenter

            self.runner = Segmenter(self.path, device=device, mixed_precision=mixed_precision, profile=profile)
        elif self.task == "detection":
            from medsight.inference.detector import Detector

            self.runner = Detector.from_bundle(self.path)  # on the CPU
        else:
            raise BundleError(self.path, f"task {self.task!r} cannot be served", f"serve one of {', '.join(TASKS)}")
        self.bundle = self.runner.bundle
        self.version = {**model_version(self.path, self.bundle.model.name, self.bundle.provenance),
                        "backend": getattr(self.runner, "backend", "torch"),
                        "precision": getattr(self.runner, "precision", "float32"),
                        **({"profile": self.runner.profile_name} if self.task == "segmentation" else {})}
        self.explainer = load_explainer()
        # the bundle's triage policy (medsight triage train), None without one; one for other weights is an error
        self.triage = served_policy(self.path, self.runner) if self.task == "classification" else None
        # a detector's check of each input against the bundle's domain record (None: not checked); a classifier's
        # Predictor runs its own
        self.domain = domain_check(self.bundle.domain, out_of_domain) if self.task == "detection" else None
        self._warm_up()
        self.load_seconds = perf_counter() - start

    def _warm_up(self) -> None:
        """One prediction on a synthetic ramp, so the first request does not pay for lazy set-up."""
        cfg = self.bundle.preprocess
        size = tuple(int(n) for n in cfg.size)
        ramp = np.linspace(0.0, 1.0, int(np.prod(size)) * cfg.channels, dtype=np.float32)
        sample = Sample(ramp.reshape(cfg.channels, *size), spacing=(1.0,) * len(size))
        if self.task == "classification":
            with suppress(OutOfDomainError):  # a ramp is outside any domain; refusing it warmed the model up too
                self.classify(sample)
        elif self.task == "detection":
            with suppress(OutOfDomainError):
                self.detect(sample)
        else:
            self.segment(sample)

    def classify(self, sample: Sample) -> dict[str, Any]:
        """Label, probabilities, threshold, ``out_of_domain`` and ``domain_reasons``, as
        :meth:`Predictor.predict_sample` (which raises :class:`OutOfDomainError`, a 422, when it refuses); with a
        triage policy in the bundle, also ``triage``: ``{action, expected_costs, policy_version}``."""
        result = self.runner.predict_sample(sample)
        if self.triage is not None:
            result["triage"] = self.triage.decide_sample(sample)
        return result

    def segment(self, sample: Sample):
        """A :class:`SegmentationResult` on the sample's own grid."""
        return self.runner.segment_sample(sample)

    def detect(self, sample: Sample) -> tuple[Any, dict[str, Any]]:
        """``(boxes, domain fields)``: every box the detector keeps (its score floor, NMS and box limit), scored,
        in the sample's own index space (:class:`~medsight.boxes.Boxes`), and ``out_of_domain``,
        ``domain_reasons`` and ``domain_note``.

        Raises:
            InvalidImageError: a volume for a 2D model or the reverse.
            OutOfDomainError: the bundle has a domain record, the input lies outside it and the action is
                ``refuse`` (checked before the detector runs).
        """
        if self.domain is None:
            domain = {**unchecked(), "domain_note": NO_RECORD if self.bundle.domain is None else CHECK_OFF}
        else:  # the file's own reasons; a detector has no penultimate features to measure a distance on
            where = str(sample.meta.get("path", "image"))
            domain = {**self.domain.verdict(where, self.domain.input_reasons(sample)), "domain_note": None}
        return self.runner.predict([sample])[0], domain

    def preview(self, sample: Sample) -> bytes:
        """PNG of what the model sees: the preprocessed input (classification) or the image on its own grid
        after the intensity steps (segmentation and detection, so the mask or boxes overlay it); the middle slice
        of a volume."""
        from medsight.transforms.preprocess import intensity_steps, preprocess

        cfg = self.bundle.preprocess
        image = preprocess(sample, cfg) if self.task == "classification" else intensity_steps(sample, cfg)
        return preview_png(middle_slice(image, sample.spatial_dims))

    def require_explainer(self) -> Callable[..., bytes]:
        """``medsight.explain.explain_png``.

        Raises:
            ExplainUnavailableError: no ``medsight.explain`` module with ``explain_png`` is installed.
            ConfigError: the model is a detector (a 422: its boxes say where it looked).
        """
        if self.task == "detection":
            raise ConfigError("/v1/explain", "heatmaps (Grad-CAM) are for classifiers; this model finds boxes",
                              "use /v1/predict: each box is where the detector found a finding")
        if self.explainer is None:
            raise ExplainUnavailableError(
                "/v1/explain",
                "heatmaps (Grad-CAM) are not available in this medsight version",
                "use /v1/predict for the label and probabilities; upgrade medsight for explanations",
            )
        return self.explainer

    def explain(self, sample: Sample, *, target: str | None = None) -> bytes:
        """A heatmap PNG from ``medsight.explain.explain_png(runner, sample, target=...)``.

        Raises:
            ExplainUnavailableError: explanations are not installed.
        """
        return self.require_explainer()(self.runner, sample, target=target)

    def _domain_card(self) -> dict[str, Any] | None:
        if self.task != "detection":
            return domain_card_of(self.runner)
        if self.domain is None:
            return {"action": "off", "note": NO_RECORD if self.bundle.domain is None else CHECK_OFF}
        return self.domain.summary()

    def card(self) -> dict[str, Any]:
        """The model card: what the model does, what it expects, how well it did, where it came from."""
        bundle = self.bundle
        return {
            "task": bundle.task,
            "model": bundle.model.model_dump(mode="json"),
            "label_names": bundle.label_names,
            "preprocess": bundle.preprocess.model_dump(mode="json"),
            "spatial_dims": bundle.spatial_dims,
            "threshold": bundle.detection.score_threshold if bundle.detection is not None else bundle.threshold,
            "temperature": bundle.temperature,
            "segmentation": None if bundle.segmentation is None else bundle.segmentation.model_dump(mode="json"),
            "detection": None if bundle.detection is None else bundle.detection.model_dump(mode="json"),
            "metrics": bundle.metrics,
            "version": self.version,
            "provenance": public_provenance(bundle.provenance),
            "explain_available": self.explainer is not None,
            "domain": self._domain_card(),
            "accepts": ["DICOM", "NIfTI (.nii, .nii.gz)", "PNG", "JPEG"],
        }


def domain_card_of(runner: Any) -> dict[str, Any] | None:
    """The model card's ``domain``: the check's action and record, or the note that says why nothing is checked;
    None for a segmenter."""
    if not isinstance(runner, Predictor):
        return None
    if runner.domain is None:
        return {"action": "off", "note": runner.domain_note}
    return runner.domain.summary()


def model_version(folder: Path, name: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """``{"name", "hash", "created", "medsight"}``; the hash is SHA-256 over bundle.json and the weights."""
    return {
        "name": name,
        "hash": bundle_hash(folder),
        "created": provenance.get("created"),
        "medsight": provenance.get("medsight"),
    }


def public_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """Provenance without source file names or case ids, which may name a patient.

    Lists of files (``skipped_files``, ``*_paths``, ``case_ids``...) are dropped; a ``split``
    of case ids becomes the number of cases per split. The data set path (``data``) stays.
    """
    public: dict[str, Any] = {}
    for key, value in provenance.items():
        name = key.lower()
        if name in _SPLIT_KEYS and isinstance(value, dict):
            public[key] = {part: len(ids) if isinstance(ids, list) else ids for part, ids in value.items()}
        elif name not in _FILE_LIST_KEYS and not name.endswith(("_files", "_paths", "_ids")):
            public[key] = public_provenance(value) if isinstance(value, dict) else value
    return public


def load_explainer() -> Callable[..., bytes] | None:
    """``medsight.explain.explain_png`` when that module exists; None until then."""
    try:
        module = importlib.import_module("medsight.explain")
    except ModuleNotFoundError as exc:
        if exc.name == "medsight.explain":
            return None
        raise
    return getattr(module, "explain_png", None)

