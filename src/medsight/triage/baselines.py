"""Two fixed rules a learnt triage policy has to beat, fitted on the same training episodes.

* ``fixed_threshold``: automate every case: report positive when ``p_finding`` reaches the
  Youden threshold (chosen on the training episodes, the validation split by default), else negative.
* ``uncertainty_threshold``: refer the most uncertain ``x`` of the cases (entropy above the
  training episodes' ``1 - x`` quantile) and report the rest at the same threshold; ``x`` is
  swept over 0, 5%, ..., 100% (refer everything) and the one with the lowest mean cost on the training episodes is kept.

Example:
    >>> rules = fit_baselines(p, uncertainty, finding, costs)
    >>> baseline_actions(rules["uncertainty_threshold"], p, uncertainty)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medsight.triage.costs import NEGATIVE, POSITIVE, REFER, CostTable, action_costs

REFER_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(21))
NAMES = ("fixed_threshold", "uncertainty_threshold")


def fit_baselines(
    p_finding: np.ndarray, uncertainty: np.ndarray, finding: np.ndarray, costs: CostTable
) -> dict[str, dict[str, Any]]:
    """Both rules' parameters, fitted on the training episodes.

    Raises:
        DatasetError: the episodes hold one class only (no Youden threshold).
    """
    from medsight.classification.metrics import choose_threshold

    p = np.asarray(p_finding, dtype=np.float64)
    threshold = choose_threshold(np.asarray(finding, dtype=int), np.stack([1 - p, p], axis=1), method="youden")
    cost = action_costs(finding, costs)
    best: dict[str, Any] | None = None
    for fraction in REFER_FRACTIONS:
        rule = {"threshold": threshold, "refer_fraction": fraction,
                "max_uncertainty": refer_cutoff(uncertainty, fraction)}
        mean = float(cost[np.arange(len(p)), baseline_actions(rule, p, uncertainty)].mean())
        if best is None or mean < best["train_mean_cost"] - 1e-12:
            best = {**rule, "train_mean_cost": mean}
    return {"fixed_threshold": {"threshold": threshold, "refer_fraction": 0.0, "max_uncertainty": None},
            "uncertainty_threshold": best}


def refer_cutoff(uncertainty: np.ndarray, fraction: float) -> float | None:
    """The entropy above which the most uncertain ``fraction`` of these cases lie; None for no referrals."""
    return float(np.quantile(uncertainty, 1 - fraction)) if 0 < fraction < 1 else None


def baseline_actions(rule: dict[str, Any], p_finding: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
    """The rule's action per case (indices into ``ACTIONS``)."""
    actions = np.where(np.asarray(p_finding) >= rule["threshold"], POSITIVE, NEGATIVE)
    if rule["refer_fraction"] >= 1:
        return np.full(len(actions), REFER)
    if rule.get("max_uncertainty") is not None:
        actions = np.where(np.asarray(uncertainty) > rule["max_uncertainty"], REFER, actions)
    return actions


__all__ = ["NAMES", "REFER_FRACTIONS", "baseline_actions", "fit_baselines", "refer_cutoff"]
