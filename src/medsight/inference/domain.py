"""The bundle knows its domain: what a model was trained on, and whether an input lies outside it.

At training time :func:`domain_record` (a classifier) or :func:`input_domain_record` (a detector: the input rules
alone, without the feature distance) builds a :class:`~medsight.bundle_fields.DomainRecord` from the data's
fingerprint and the network's feature space; the bundle keeps it (``domain`` in ``bundle.json``, the feature
vectors in ``domain.safetensors``). At prediction :class:`DomainCheck` checks each input against it before its
answer is trusted. An input is out of domain, with one reason per failed rule, when

* its DICOM ``Modality`` is not one the training data had (the fingerprint's DICOM modalities, or the
  modality the config stated; a guessed modality is not used). CR, DX and RG count as the radiograph ``XR``;
* its DICOM ``BodyPartExamined`` is not one the training data's DICOM headers named;
* its channel count is not one the training images had;
* a spatial axis is more than :data:`SIZE_FACTOR` times smaller than the smallest training size or larger
  than the largest;
* more than :data:`OUTSIDE_SHARE` of its values, in the file's own units (HU for CT), lie outside the training
  intensities: the fingerprint's 0.5 and 99.5 percentiles widened by :data:`INTENSITY_MARGIN` of their span on
  each side;
* it is blank: every pixel has one value;
* its distance in the network's feature space to the training images
  (:mod:`medsight.inference.domain_features`) is above the recorded threshold, the 0.99 quantile of the
  distances of calibration cases the model never trained on.

Example:
    >>> record = domain_record(model, train_images, val_images, fingerprint, action="flag")
    >>> DomainCheck(record).input_reasons(read_image("ct.dcm"))
    ['DICOM Modality CT was not seen in training (seen: MR)', ...]
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from medsight.bundle_fields import DomainRecord, FeatureReference, IntensityRange
from medsight.errors import BundleError, ConfigError, InvalidImageError
from medsight.inference.domain_features import calibrate, features_of, head_layers, knn_distance
from medsight.sample import Sample

#: an axis this many times smaller than the smallest training size, or larger than the largest, is out of domain
SIZE_FACTOR = 4.0
#: the training intensity range is widened by this share of its span on each side
INTENSITY_MARGIN = 0.25
#: more than this share of values outside the widened range is out of domain
OUTSIDE_SHARE = 0.05
#: DICOM modalities that are one kind of image for the check
MODALITY_FAMILY = {"CR": "XR", "DX": "XR", "RG": "XR"}
NO_RECORD = "this bundle has no domain record: inputs are not checked against the training data"
CHECK_OFF = "the out-of-domain check is off"
ACTIONS = ("flag", "refuse", "off")
log = logging.getLogger(__name__)


class OutOfDomainError(InvalidImageError):
    """An input refused because it lies outside the model's training domain; ``reasons`` lists why."""

    def __init__(self, where: str, reasons: list[str]) -> None:
        super().__init__(where, f"outside the model's training domain: {'; '.join(reasons)}",
                         "predict images like the ones the model was trained on, or predict with "
                         "--out-of-domain flag to get an answer marked out_of_domain")
        self.reasons = list(reasons)


def domain_record(model: nn.Module, train_images: torch.Tensor | None, calibration_images: torch.Tensor | None,
                  fingerprint: dict | None, *, action: str = "flag", max_reference: int = 2000, k: int = 5,
                  quantile: float = 0.99, seed: int = 0, device: torch.device | str = "cpu",
                  member: int | None = None) -> DomainRecord:
    """The domain record of a trained classifier, for its bundle.

    Args:
        model: the trained network (a fold ensemble: every member's features, concatenated).
        train_images: preprocessed training images ``(N, C, *size)``; a seeded subsample of at most
            ``max_reference`` is kept as the feature reference.
        calibration_images: preprocessed images the model never trained on (out-of-fold cases, or the validation
            split): half set the threshold (the ``quantile`` of their distances), the other half measure the
            false-alarm rate.
        fingerprint: the data's fingerprint (``RUN/fingerprint.json``); None: only the feature distance and the
            blank-image rule are checked.
        action: the training config's ``predict.out_of_domain``.
        member: a fold ensemble's member whose features alone are used (its fold's training images as the
            reference, its fold's validation cases, which it never trained on, as calibration); None: the whole
            network's.

    Returns:
        the record; ``notes`` say what it could not record.
    """
    notes: list[str] = []
    fields = _fingerprint_fields(fingerprint, notes)
    features, reference = _feature_reference(model, train_images, calibration_images, notes,
                                             max_reference=max_reference, k=k, quantile=quantile, seed=seed,
                                             device=device, member=member)
    return DomainRecord(action=action, **fields, features=features, notes=notes, reference=reference)


def input_domain_record(fingerprint: dict | None, *, action: str, no_features: str) -> DomainRecord:
    """A record of the input rules alone (modality, body part, channels, size, intensity, blank), for a model
    without a feature reference (a detector); ``no_features`` says why, in the record's notes."""
    notes: list[str] = []
    fields = _fingerprint_fields(fingerprint, notes)
    return DomainRecord(action=action, **fields, notes=[*notes, no_features])


def _fingerprint_fields(fingerprint: dict | None, notes: list[str]) -> dict:
    """Modalities, body parts, channels, size range and intensity range from the fingerprint's keys."""
    if fingerprint is None:
        notes.append("no fingerprint: modality, body part, channels, size and intensity are not checked")
        return {}
    modalities = {_family(m) for m, n in (fingerprint.get("dicom_modalities") or {}).items() if n}
    stated = fingerprint.get("modality") or {}
    if stated.get("value") and stated.get("source") in ("dicom", "config"):
        modalities.add(_family(stated["value"]))
    elif stated.get("value"):
        notes.append(f"the modality {stated['value']!r} was a guess: the input's DICOM Modality is not checked")
    sizes = fingerprint.get("sizes") or {}
    intensity = fingerprint.get("intensity") or {}
    has_range = intensity.get("p00_5") is not None and intensity.get("p99_5") is not None
    return {
        "modalities": sorted(modalities),
        "body_parts": sorted(str(p).upper() for p, n in (fingerprint.get("body_parts") or {}).items() if n),
        "channels": sorted(int(c) for c, n in (fingerprint.get("channels") or {}).items() if n),
        "size_min": [int(v) for v in sizes["min"]] if sizes.get("min") else None,
        "size_max": [int(v) for v in sizes["max"]] if sizes.get("max") else None,
        "intensity": IntensityRange(unit=str(intensity.get("unit") or "stored value"), low=intensity["p00_5"],
                                    high=intensity["p99_5"], min=intensity.get("min"), max=intensity.get("max"))
        if has_range else None,
    }


def _feature_reference(model: nn.Module, train_images, calibration_images, notes: list[str], *, max_reference: int,
                       k: int, quantile: float, seed: int, device,
                       member: int | None) -> tuple[FeatureReference | None, np.ndarray | None]:
    """The feature reference and its threshold, or ``(None, None)`` with a note saying why there is none."""
    if train_images is None or len(train_images) == 0:
        notes.append("no training images: the feature distance is not checked")
        return None, None
    if calibration_images is None or len(calibration_images) == 0:
        notes.append("no calibration cases (out-of-fold or validation): the feature distance is not checked")
        return None, None
    try:
        head_layers(model, member)
    except BundleError:
        notes.append(f"{type(model).__name__} has no nn.Linear head: the feature distance is not checked")
        return None, None
    picked = np.random.default_rng(seed).permutation(len(train_images))[:max_reference]
    picked = torch.from_numpy(np.sort(picked))
    reference = features_of(model, train_images[picked], device=device, member=member)
    reference = reference.astype(np.float16).astype(np.float32)  # as domain.safetensors keeps it
    distances = knn_distance(features_of(model, calibration_images, device=device, member=member), reference, k=k)
    threshold, false_alarms, n_setting, n_holdout = calibrate(distances, quantile=quantile, seed=seed)
    record = FeatureReference(n_reference=len(reference), dim=reference.shape[1], k=min(k, len(reference)),
                              quantile=quantile, threshold=threshold, n_threshold_cases=n_setting,
                              n_holdout_cases=n_holdout, false_alarm_rate=false_alarms, seed=seed, member=member)
    return record, reference


class DomainCheck:
    """A bundle's domain record at prediction: the reasons an input lies outside it.

    Args:
        record: the bundle's record.
        action: ``flag``, ``refuse`` or ``off``; None takes the record's (the training config's).
    """

    def __init__(self, record: DomainRecord, action: str | None = None) -> None:
        self.record = record
        self.action = action or record.action

    @property
    def uses_features(self) -> bool:
        return self.record.features is not None and self.record.reference is not None

    def input_reasons(self, sample: Sample) -> list[str]:
        """The reasons from the file itself: DICOM tags, channels, size, intensities, a blank image."""
        record = self.record
        reasons = [_tag_reason("Modality", sample.meta.get("modality"), record.modalities, _family),
                   _tag_reason("BodyPartExamined", sample.meta.get("BodyPartExamined"), record.body_parts, str.upper)]
        if record.channels and sample.channels not in record.channels:
            reasons.append(f"{sample.channels} channel(s); the training images had {_listed(record.channels)}")
        reasons += [_size_reason(sample.spatial_shape, record), _blank_reason(sample.array)]
        if record.intensity is not None and reasons[-1] is None:
            reasons.append(_intensity_reason(sample.array, record.intensity))
        return [reason for reason in reasons if reason]

    def feature_reasons(self, features: np.ndarray) -> list[str]:
        """The feature-distance reason of one input's penultimate features ``(1, dim)``, if it is too far."""
        if not self.uses_features:
            return []
        ref = self.record.features
        distance = float(knn_distance(features, self.record.reference, k=ref.k)[0])
        if distance <= ref.threshold:
            return []
        return [f"feature distance {distance:.4g} to the training images is above the threshold {ref.threshold:.4g} "
                f"(the {ref.quantile:g} quantile of {ref.n_threshold_cases} calibration cases)"]

    def verdict(self, where: str, reasons: list[str]) -> dict:
        """``{"out_of_domain", "domain_reasons"}`` for a result.

        Raises:
            OutOfDomainError: reasons, and the action is ``refuse``.
        """
        if reasons and self.action == "refuse":
            raise OutOfDomainError(where, reasons)
        return {"out_of_domain": bool(reasons), "domain_reasons": list(reasons)}

    def summary(self) -> dict:
        """What the model card shows: the action and the record (no feature vectors)."""
        return {"action": self.action, **self.record.model_dump(mode="json")}


def domain_check(record: DomainRecord | None, action: str | None = None) -> DomainCheck | None:
    """The check a predictor runs: None where nothing is checked (no record, stated once in the log; or ``off``).

    Args:
        record: the bundle's domain record (None: an older bundle).
        action: ``flag``, ``refuse`` or ``off``; None takes the record's.

    Raises:
        ConfigError: an unknown action.
    """
    if action not in (None, *ACTIONS):
        raise ConfigError(f"out_of_domain={action}", "is not an action", f"use one of {', '.join(ACTIONS)}")
    if record is None:
        log.info(NO_RECORD)
        return None
    check = DomainCheck(record, action)
    return None if check.action == "off" else check


def unchecked() -> dict:
    """The domain fields of a result that was not checked (no record, or ``off``)."""
    return {"out_of_domain": None, "domain_reasons": []}


def _family(modality: str) -> str:
    code = str(modality).strip().upper()
    return MODALITY_FAMILY.get(code, code)


def _tag_reason(keyword: str, value, seen: list[str], normal) -> str | None:
    if not seen or not value or not str(value).strip():
        return None
    if normal(str(value).strip()) in seen:
        return None
    return f"DICOM {keyword} {str(value).strip()} was not seen in training (seen: {_listed(seen)})"


def _size_reason(shape: tuple[int, ...], record: DomainRecord) -> str | None:
    if record.size_min is None or record.size_max is None or len(record.size_min) != len(shape):
        return None
    too_small = any(n * SIZE_FACTOR < low for n, low in zip(shape, record.size_min, strict=True))
    too_large = any(n > high * SIZE_FACTOR for n, high in zip(shape, record.size_max, strict=True))
    if not (too_small or too_large):
        return None
    return (f"size {_shape(shape)} is more than {SIZE_FACTOR:g}x {'smaller' if too_small else 'larger'} than the "
            f"training sizes ({_shape(record.size_min)} to {_shape(record.size_max)})")


def _blank_reason(array: np.ndarray) -> str | None:
    low, high = float(np.min(array)), float(np.max(array))
    return f"the image is blank: every pixel is {low:g}" if low == high else None


def _intensity_reason(array: np.ndarray, intensity: IntensityRange) -> str | None:
    margin = INTENSITY_MARGIN * (intensity.high - intensity.low)
    low, high = intensity.low - margin, intensity.high + margin
    outside = float(np.mean((array < low) | (array > high)))
    if outside <= OUTSIDE_SHARE:
        return None
    return (f"{100 * outside:.0f}% of the values lie outside the training intensities [{low:g}, {high:g}] "
            f"{intensity.unit} (the 0.5-99.5 percentiles widened by {100 * INTENSITY_MARGIN:g}% of their span; "
            f"the limit is {100 * OUTSIDE_SHARE:g}%)")


def _listed(values) -> str:
    return ", ".join(str(v) for v in values)


def _shape(shape) -> str:
    return "x".join(str(int(n)) for n in shape)
