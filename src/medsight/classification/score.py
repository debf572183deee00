"""Scores of a classifier on tensors: calibrated and raw probabilities and per-case entropy, the same for
training's report and ``medsight evaluate``."""

from __future__ import annotations

from medsight.classification.batches import TensorSet
from medsight.config import EvalConfig
from medsight.inference.classifier import CalibratedClassifier


def score(classifier: CalibratedClassifier, tensors: TensorSet, *, cfg: EvalConfig) -> dict:
    """Calibrated and raw probabilities plus per-case entropy (``cfg.uncertainty``) of ``tensors``."""
    from medsight.classification.uncertainty import case_entropy

    logits = classifier.logits(tensors)
    entropy, info = case_entropy(classifier, tensors.images, method=cfg.uncertainty, passes=cfg.uncertainty_passes)
    return {
        "probs": classifier.probabilities(logits),
        "uncalibrated": classifier.probabilities(logits, calibrated=False),
        "entropy": entropy,
        "uncertainty": info,
    }


def calibration_kwargs(scored: dict, temperature: float | None, choice: dict | None) -> dict:
    """What :func:`evaluate_predictions` needs on calibration; the probabilities before scaling only when
    a temperature was applied (else they are the same probabilities, and a before/after plot would mislead)."""
    return {"uncalibrated": scored["uncalibrated"] if temperature is not None else None,
            "temperature": temperature, "temperature_choice": choice, "entropy": scored["entropy"],
            "uncertainty": scored["uncertainty"]}
