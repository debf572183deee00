"""A classifier's operating point from held-out logits: the calibration temperature and the threshold.

One rule for a single run (chosen on its validation split) and a cross-validation's fold ensemble
(chosen on the out-of-fold predictions): temperature scaling where those cases support it
(``eval.calibration``, :func:`medsight.classification.calibration.choose_temperature`), then the binary
threshold on the calibrated probabilities (``eval.threshold``: youden, sensitivity or fixed,
:func:`medsight.classification.metrics.choose_threshold`); multi-class takes the argmax.

Example:
    >>> point = choose_operating_point(val_logits, y_val, head="softmax", cfg=EvalConfig(),
    ...                                chosen_on="the validation split (n=80)")
    >>> point.temperature, point.threshold, point.note
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medsight.classification.calibration import TemperatureChoice, choose_temperature
from medsight.classification.metrics import choose_threshold
from medsight.config import EvalConfig
from medsight.inference.classifier import probs_from_logits

_HOW = {
    "youden": "maximises Youden's J (sensitivity + specificity - 1)",
    "sensitivity": "the highest threshold reaching sensitivity >= {target}",
    "fixed": "fixed in the config",
}


@dataclass(frozen=True)
class OperatingPoint:
    """The temperature choice, the threshold (None: argmax) and its note, and the cases' probabilities
    with (``probs``) and without (``uncalibrated``) the temperature."""

    calibration: TemperatureChoice
    threshold: float | None
    note: str
    probs: np.ndarray
    uncalibrated: np.ndarray

    @property
    def temperature(self) -> float | None:
        return self.calibration.temperature


def choose_operating_point(logits: torch.Tensor, y: np.ndarray, *, head: str, cfg: EvalConfig,
                           chosen_on: str) -> OperatingPoint:
    """Temperature and threshold from uncalibrated ``logits`` of cases with labels ``y``; ``chosen_on``
    names those cases in the note (e.g. ``the out-of-fold predictions of 5232 cases``)."""
    if cfg.calibration == "none":
        calibration = TemperatureChoice("off", "switched off (eval.calibration: none)")
    else:
        calibration = choose_temperature(logits.numpy(), y, head=head)
    probs = probs_from_logits(logits, head, calibration.temperature)
    if probs.shape[1] != 2:
        return OperatingPoint(calibration, None, "multi-class: the predicted class is the most probable one",
                              probs, probs_from_logits(logits, head))
    threshold = choose_threshold(y, probs, method=cfg.threshold, target_sensitivity=cfg.target_sensitivity,
                                 fixed=cfg.fixed_threshold)
    note = f"{_HOW[cfg.threshold].format(target=cfg.target_sensitivity)}, chosen on {chosen_on}"
    if calibration.temperature is not None:
        note += f", on probabilities calibrated by temperature scaling (T = {calibration.temperature:.3f})"
    return OperatingPoint(calibration, float(threshold), note, probs, probs_from_logits(logits, head))
