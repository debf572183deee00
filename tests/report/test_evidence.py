"""A report draws a conclusion from a correlation only where its n and p-value support one (issue 31:
"the more uncertain cases are the lower-Dice ones" was concluded from rho = -0.5, n = 3, p = 0.67)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsight.report.evidence import MIN_CASES_FOR_CORRELATION, SIGNIFICANCE_LEVEL, correlation_reading
from medsight.report.segmentation import SegCase, write_segmentation_report
from medsight.segmentation.evaluate import uncertainty_vs_dice

CONCLUSION = "the more uncertain cases are the lower-Dice ones"


def _report(tmp_path: Path, uncertainty: dict) -> str:
    truth = np.zeros((8, 8), np.int64)
    truth[2:6, 2:6] = 1
    case = SegCase("c0", np.zeros((1, 8, 8), np.float32), truth, truth, 1.0)
    summary = {"foreground": {"metrics": {"dice": {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0}}}}
    return write_segmentation_report(tmp_path, title="t", summary=summary, cases=[case],
                                     uncertainty=uncertainty).read_text()


def test_three_cases_with_rho_minus_half_are_too_few_to_judge(tmp_path: Path) -> None:
    link = uncertainty_vs_dice([0.1, 0.2, 0.3], [0.8, 0.9, 0.7])  # ranks (1, 2, 3) against (2, 3, 1)
    assert link["n"] == 3 and link["spearman_vs_dice"] == pytest.approx(-0.5)
    assert link["p_value"] == pytest.approx(0.667, abs=1e-3)
    assert link["reading"] == "too few cases to judge: 3, fewer than the 10 needed"
    report = _report(tmp_path, link)
    assert "-0.500 (p = 0.667, n = 3): too few cases to judge: 3, fewer than the 10 needed." in report
    assert CONCLUSION not in report and "does not flag" not in report


def test_forty_cases_with_a_strong_negative_correlation_give_the_conclusion(tmp_path: Path) -> None:
    uncertainty = np.linspace(0.05, 0.6, 40)
    dice = 0.95 - uncertainty + 0.05 * np.sin(np.arange(40))  # falls with uncertainty, a little noise
    link = uncertainty_vs_dice(uncertainty.tolist(), dice.tolist())
    assert link["spearman_vs_dice"] < -0.9 and link["p_value"] < SIGNIFICANCE_LEVEL
    assert link["reading"] == f"{CONCLUSION} (p < 0.05)"
    assert f"{CONCLUSION} (p &lt; 0.05)" in _report(tmp_path, link)


def test_forty_cases_with_a_strong_positive_correlation_say_the_opposite() -> None:
    uncertainty = np.linspace(0.05, 0.6, 40)
    link = uncertainty_vs_dice(uncertainty.tolist(), (0.3 + uncertainty).tolist())
    assert link["reading"] == ("the more uncertain cases are the higher-Dice ones: the uncertainty does not flag "
                               "the low-Dice cases (p < 0.05)")


def test_forty_uncorrelated_cases_give_no_evidence_either_way(tmp_path: Path) -> None:
    uncertainty = np.arange(40) / 40
    dice = 0.9 - (np.arange(40) - 19.5) ** 2 / 1000  # symmetric about the middle: rho is exactly 0
    link = uncertainty_vs_dice(uncertainty.tolist(), dice.tolist())
    assert link["spearman_vs_dice"] == pytest.approx(0.0, abs=1e-12) and link["p_value"] == pytest.approx(1.0)
    assert link["reading"].startswith("no evidence either way (p = 1.00, not below 0.05)")
    report = _report(tmp_path, link)
    assert "no evidence either way" in report and CONCLUSION not in report


@pytest.mark.parametrize(
    ("rho", "p_value", "n", "expected"),
    [
        (-0.9, 0.001, MIN_CASES_FOR_CORRELATION - 1, "too few cases to judge: 9, fewer than the 10 needed"),
        (-0.7, 0.03, MIN_CASES_FOR_CORRELATION, "lower (p < 0.05)"),
        (-0.7, SIGNIFICANCE_LEVEL, 12, "no evidence either way (p = 0.05, not below 0.05): these cases neither "
         "show a link nor rule one out"),
        (float("nan"), float("nan"), 20, "undefined: one of the two values is the same for every case"),
    ],
)
def test_the_reading_at_its_boundaries(rho: float, p_value: float, n: int, expected: str) -> None:
    assert correlation_reading(rho, p_value, n, negative="lower", positive="higher") == expected
