"""What a statistic in a report may be read as: a conclusion only where its own p-value supports it.

A report states a number with its p-value and ``n`` always; it adds a conclusion only when

* there are at least :data:`MIN_CASES_FOR_CORRELATION` cases, and
* the two-sided p-value is below :data:`SIGNIFICANCE_LEVEL`.

Otherwise it says that the cases are too few to judge, or that there is no evidence either way.
(A segmentation report once concluded "the more uncertain cases are the lower-Dice ones" from
rho = -0.5 with n = 3 and p = 0.67.)

Example:
    >>> correlation_reading(-0.5, 0.67, 3, negative="uncertain cases score lower", positive="...")
    'too few cases to judge: 3, fewer than the 10 needed'
"""

from __future__ import annotations

import math

#: Fewest cases for reading a rank correlation. Below 10, the 95% interval of a correlation of 0 already
#: spans about -0.6 to 0.6 (Fisher z, standard error 1 / sqrt(n - 3)), and SciPy's p-value for Spearman's
#: rho comes from a t approximation that is poor on so few pairs: the number is shown, not read.
MIN_CASES_FOR_CORRELATION = 10
#: Two-sided p-value below which a report states the direction of a correlation.
SIGNIFICANCE_LEVEL = 0.05


def correlation_reading(rho: float, p_value: float, n: int, *, negative: str, positive: str) -> str:
    """What a correlation coefficient supports, as a phrase for a report.

    Args:
        rho: the correlation coefficient (NaN when undefined).
        p_value: its two-sided p-value.
        n: the number of cases it was computed on.
        negative: the conclusion a supported negative correlation allows.
        positive: the conclusion a supported positive correlation allows.

    Returns:
        ``too few cases to judge ...`` below :data:`MIN_CASES_FOR_CORRELATION` cases; ``undefined ...``
        when rho is NaN (a constant column); ``no evidence either way ...`` when ``p_value`` is not
        below :data:`SIGNIFICANCE_LEVEL`; else ``negative`` or ``positive`` with the level.
    """
    if n < MIN_CASES_FOR_CORRELATION:
        return f"too few cases to judge: {n}, fewer than the {MIN_CASES_FOR_CORRELATION} needed"
    if not (math.isfinite(rho) and math.isfinite(p_value)):
        return "undefined: one of the two values is the same for every case"
    if p_value >= SIGNIFICANCE_LEVEL:
        return (f"no evidence either way (p = {p_value:.2f}, not below {SIGNIFICANCE_LEVEL:g}): these cases "
                "neither show a link nor rule one out")
    return f"{negative if rho < 0 else positive} (p < {SIGNIFICANCE_LEVEL:g})"


__all__ = ["MIN_CASES_FOR_CORRELATION", "SIGNIFICANCE_LEVEL", "correlation_reading"]
