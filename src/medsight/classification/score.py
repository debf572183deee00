"""Scores of a classifier on tensors: calibrated and raw probabilities and per-case entropy, the same for
training and evaluation."""

from __future__ import annotations

from medsight.config import EvalConfig


def score(model, tensors, *, head: str, temperature: float | None, cfg: EvalConfig) -> dict:
    """Calibrated and raw probabilities plus per-case entropy: the same for training and evaluation."""
    from medsight.classification.predict import predict_logits, probs_from_logits
    from medsight.classification.uncertainty import case_entropy

    logits = predict_logits(model, tensors)
    entropy, info = case_entropy(model, tensors.images, head=head, temperature=temperature,
                                 method=cfg.uncertainty, passes=cfg.uncertainty_passes)
    return {
        "probs": probs_from_logits(logits, head, temperature),
        "uncalibrated": probs_from_logits(logits, head, None),
        "entropy": entropy,
        "uncertainty": info,
    }


def calibration_kwargs(scored: dict, temperature: float | None, choice: dict | None) -> dict:
    """What :func:`evaluate_predictions` needs on calibration; the probabilities before scaling only when
    a temperature was applied (else they are the same probabilities, and a before/after plot would mislead)."""
    return {"uncalibrated": scored["uncalibrated"] if temperature is not None else None,
            "temperature": temperature, "temperature_choice": choice, "entropy": scored["entropy"],
            "uncertainty": scored["uncertainty"]}
