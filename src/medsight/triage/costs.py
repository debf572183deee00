"""The cost table a triage policy minimises, and the cost of each action on each case.

Three actions per case: report it negative automatically, report it positive automatically,
or refer it to a radiologist. A correct automatic report costs 0; a missed finding (reported
negative, truly positive) costs ``missed_finding``; a false alarm (reported positive, truly
negative) costs ``false_alarm``; a referral costs ``radiologist_time`` and always ends in the
correct answer (the radiologist reads the case).

Example:
    >>> costs = load_costs(None, {"missed_finding": 20})
    >>> action_costs(np.array([True, False]), costs)
    array([[20. ,  0. ,  0.5],
           [ 0. ,  1. ,  0.5]])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from medsight.errors import ConfigError

ACTIONS = ("report_negative", "report_positive", "refer")
NEGATIVE, POSITIVE, REFER = range(3)


class CostTable(BaseModel):
    """What each outcome costs, in one unit (e.g. minutes of radiologist time). A correct automatic report is 0."""

    model_config = ConfigDict(extra="forbid")

    missed_finding: float = 10.0
    false_alarm: float = 1.0
    radiologist_time: float = 0.5


def load_costs(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> CostTable:
    """The cost table from a YAML file (optional) with ``overrides`` on top (None values are ignored).

    Raises:
        ConfigError: an unreadable file, an unknown key, a value that is not a number, or a negative cost.
    """
    import yaml

    where = str(path) if path is not None else "costs"
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(path, "no such cost table file", "pass a YAML file with missed_finding, false_alarm, "
                              "radiologist_time")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(path, f"not valid YAML ({exc})", "fix the file") from exc
        if not isinstance(raw, dict):
            raise ConfigError(path, "expected a mapping of cost names to numbers", "e.g. missed_finding: 10")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        costs = CostTable.model_validate(raw)
    except ValidationError as exc:
        problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(where, problem, f"use the keys {', '.join(CostTable.model_fields)} with numbers") from exc
    negative = {k: v for k, v in costs.model_dump().items() if not v >= 0 or not np.isfinite(v)}
    if negative:
        raise ConfigError(where, f"costs must be finite and >= 0, got {negative}",
                          "a cost is what an outcome loses; a correct automatic report is 0")
    return costs


def action_costs(finding: np.ndarray, costs: CostTable) -> np.ndarray:
    """``(N, 3)`` cost of each action (``ACTIONS`` order) on cases whose truth is ``finding`` (True = positive)."""
    finding = np.asarray(finding, dtype=bool)
    out = np.empty((len(finding), len(ACTIONS)), dtype=np.float64)
    out[:, NEGATIVE] = np.where(finding, costs.missed_finding, 0.0)
    out[:, POSITIVE] = np.where(finding, 0.0, costs.false_alarm)
    out[:, REFER] = costs.radiologist_time
    return out


def expected_costs(p_finding: np.ndarray, costs: CostTable) -> np.ndarray:
    """``(N, 3)`` expected cost of each action when a case is positive with probability ``p_finding``."""
    p = np.asarray(p_finding, dtype=np.float64)
    return np.stack([p * costs.missed_finding, (1 - p) * costs.false_alarm, np.full_like(p, costs.radiologist_time)],
                    axis=1)


__all__ = ["ACTIONS", "NEGATIVE", "POSITIVE", "REFER", "CostTable", "action_costs", "expected_costs", "load_costs"]
