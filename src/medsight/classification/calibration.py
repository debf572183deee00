"""Temperature scaling: one number, fitted on validation logits, that makes probabilities honest.

A network trained with cross-entropy is usually over-confident: it says 0.99 and is right
90% of the time. Dividing every logit by a temperature ``T > 1`` softens the probabilities
(``T < 1`` sharpens them) without changing which class is the most probable, so accuracy and
AUC stay the same and only the calibration moves (Guo et al., 2017, "On Calibration of
Modern Neural Networks").

``T`` is the minimiser of the validation negative log-likelihood. The NLL is convex in
``1 / T``, so a bounded 1-D search on ``1 / T`` finds the global minimum.

A temperature fitted on too few cases makes the probabilities worse, not better (a 38-image
validation split once raised the test ECE from 0.232 to 0.260). :func:`choose_temperature` fits
one only where the validation split can support it (:data:`MIN_CALIBRATION_CASES` cases and
:data:`MIN_CALIBRATION_ERRORS` errors), and keeps it only when it lowers the NLL of validation
cases it was not fitted on; it says why in every case.

Example:
    >>> T = fit_temperature(val_logits, y_val, head="softmax")    # e.g. 1.8
    >>> probs = calibrated_probs(test_logits, T, head="softmax")
    >>> choice = choose_temperature(val_logits, y_val, head="softmax")
    >>> choice.temperature, choice.reason    # None, "not fitted: 38 validation cases, fewer than the 100 needed"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medsight.errors import ConfigError, DatasetError

#: The search range of ``T``; a fit at either end says the model is far from calibrated.
T_MIN, T_MAX = 0.05, 20.0
#: Fewest validation cases a temperature is fitted on. The reports judge calibration by the 15-bin
#: ECE, and with n cases even a perfectly calibrated model shows an ECE of about
#: sqrt(2 / pi) * sqrt(p (1 - p)) * sqrt(bins used / n) from sampling alone: about 0.08 at n = 100
#: (p (1 - p) ~ 0.1, ~10 bins used), 0.13 at n = 38. Below 100 the split cannot show whether a
#: temperature helps, so none is fitted.
MIN_CALIBRATION_CASES = 100
#: Fewest misclassified validation cases (at T = 1). Temperature scaling is a one-parameter logistic
#: fit, and about 10 events per fitted parameter is the usual floor for such fits (Peduzzi et al.,
#: 1996); the errors are the informative events here: with none the NLL keeps falling as T -> 0, so
#: the fit would always sharpen the probabilities.
MIN_CALIBRATION_ERRORS = 10
#: The keep-or-drop check fits T on all but one of CHECK_FOLDS parts of the validation split and scores
#: the part left out: on the cases it was fitted on, a fitted T lowers the NLL by construction.
CHECK_FOLDS = 5
CHECK_SEED = 0


@dataclass(frozen=True)
class TemperatureChoice:
    """Whether temperature scaling was applied, and why (stored in the bundle and shown in reports).

    ``status`` is ``applied``, ``not_fitted`` (too little validation data), ``not_kept`` (the fitted
    T did not lower the held-out validation NLL) or ``off`` (``eval.calibration: none``).
    ``temperature`` is the applied T (None: the network's own probabilities). ``nll_*`` are the
    cross-fitted validation NLLs (nats per case) at T = 1 and with the fitted T; ``ece_*`` the
    validation ECE at T = 1 and with the T fitted on the whole split.
    """

    status: str
    reason: str
    temperature: float | None = None
    fitted: float | None = None
    n: int = 0
    errors: int = 0
    nll_before: float | None = None
    nll_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def choose_temperature(logits: np.ndarray, y_true: np.ndarray, *, head: str) -> TemperatureChoice:
    """Fit a temperature where the validation split can support it, and keep it where it helps.

    Not fitted below :data:`MIN_CALIBRATION_CASES` cases or :data:`MIN_CALIBRATION_ERRORS`
    misclassified cases. Otherwise ``T`` is fitted on the whole split and kept only when the
    cross-fitted NLL (each of :data:`CHECK_FOLDS` parts scored with a T fitted on the others) is
    lower than at ``T = 1``; a tie keeps ``T = 1``.

    Raises:
        DatasetError, ConfigError: as :func:`fit_temperature`.
    """
    z, y = _check(logits, y_true, head)
    n, errors = len(y), int(np.count_nonzero(z.argmax(axis=1) != y))
    if n < MIN_CALIBRATION_CASES:
        return TemperatureChoice("not_fitted", f"not fitted: {n} validation cases, fewer than the "
                                 f"{MIN_CALIBRATION_CASES} needed", n=n, errors=errors)
    if errors < MIN_CALIBRATION_ERRORS:
        return TemperatureChoice("not_fitted", f"not fitted: {errors} of the {n} validation cases are "
                                 f"misclassified, fewer than the {MIN_CALIBRATION_ERRORS} errors needed",
                                 n=n, errors=errors)
    fitted = _fit(z, y)
    before, after = _cross_fitted_nll(z, y)
    ece_before, ece_after = (_ece(z / t, y) for t in (1.0, fitted))
    figures = dict(fitted=fitted, n=n, errors=errors, nll_before=before, nll_after=after,
                   ece_before=ece_before, ece_after=ece_after)
    nll = f"validation NLL {before:.4f} -> {after:.4f}"
    if after < before:
        return TemperatureChoice("applied", f"fitted T = {fitted:.3f} lowered the {nll} (each case scored by "
                                 f"a T fitted on the other validation cases)", temperature=fitted, **figures)
    return TemperatureChoice("not_kept", f"fitted T = {fitted:.3f} but not kept: it did not lower the NLL of "
                             f"validation cases it was not fitted on ({nll})", **figures)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, *, head: str) -> float:
    """The temperature that minimises the NLL of ``y_true`` under ``softmax(logits / T)``.

    Args:
        logits: ``(N, K)`` for a softmax head, ``(N, 1)`` or ``(N,)`` for a sigmoid head.
        y_true: ``(N,)`` class indices.
        head: ``"softmax"`` or ``"sigmoid"``.

    Returns:
        ``T`` in ``[T_MIN, T_MAX]``; ``1.0`` when the NLL does not depend on ``T`` (all logits 0).

    Raises:
        DatasetError: shapes disagree, no cases, non-finite logits or labels out of range.
        ConfigError: an unknown head.
    """
    return _fit(*_check(logits, y_true, head))


def _fit(z: np.ndarray, y: np.ndarray) -> float:
    """:func:`fit_temperature` of checked softmax-shaped logits."""
    from scipy.optimize import minimize_scalar

    if not np.any(z):
        return 1.0
    result = minimize_scalar(
        lambda beta: _nll(z * beta, y), bounds=(1.0 / T_MAX, 1.0 / T_MIN), method="bounded",
        options={"xatol": 1e-6},
    )
    return float(1.0 / result.x)


def calibrated_probs(logits: np.ndarray, temperature: float | None, *, head: str) -> np.ndarray:
    """``(N, K)`` probabilities of ``logits / T`` (``None`` means ``T = 1``); sigmoid gives ``[1 - p, p]``."""
    import torch

    from medsight.inference.classifier import probs_from_logits

    return probs_from_logits(torch.as_tensor(np.asarray(logits, dtype=np.float32)), head, temperature)


def _cross_fitted_nll(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean NLL of every case at ``T = 1`` and at a T fitted on the other parts of the split."""
    parts = np.array_split(np.random.default_rng(CHECK_SEED).permutation(len(y)), CHECK_FOLDS)
    before = after = 0.0
    for part in parts:
        rest = np.setdiff1d(np.arange(len(y)), part)
        before += _nll(z[part], y[part]) * len(part)
        after += _nll(z[part] / _fit(z[rest], y[rest]), y[part]) * len(part)
    return before / len(y), after / len(y)


def _ece(z: np.ndarray, y: np.ndarray) -> float:
    """The report's ECE of the softmax of ``z`` (a sigmoid head's ``[0, s]`` gives ``[1 - p, p]``)."""
    from medsight.classification.metrics import expected_calibration_error

    shifted = np.exp(z - z.max(axis=1, keepdims=True))
    return expected_calibration_error(y, shifted / shifted.sum(axis=1, keepdims=True))


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the rows of ``(N, K)`` logits ``z``."""
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def _check(logits: np.ndarray, y_true: np.ndarray, head: str) -> tuple[np.ndarray, np.ndarray]:
    """Softmax-shaped float64 logits (a sigmoid logit ``s`` becomes ``[0, s]``) and int labels."""
    if head not in ("softmax", "sigmoid"):
        raise ConfigError(f"head={head}", "unknown head", "use softmax or sigmoid")
    z = np.asarray(logits, dtype=np.float64)
    if head == "sigmoid":
        z = z.reshape(len(z), -1)
        if z.shape[1] != 1:
            raise DatasetError("logits", f"has shape {z.shape}; a sigmoid head gives one logit per case",
                               "pass the (N, 1) logits of the sigmoid model")
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    y = np.asarray(y_true).ravel()
    if z.ndim != 2 or len(z) == 0 or len(z) != len(y):
        raise DatasetError("logits", f"has shape {z.shape} for {len(y)} labels", "pass one row of logits per case")
    if not np.all(np.isfinite(z)):
        raise DatasetError("logits", "contains NaN or infinite values", "check the model; training may have diverged")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise DatasetError("y_true", f"has labels outside 0..{z.shape[1] - 1}", "pass integer class indices")
    return z, y.astype(np.int64)


__all__ = [
    "MIN_CALIBRATION_CASES", "MIN_CALIBRATION_ERRORS", "T_MAX", "T_MIN", "TemperatureChoice", "calibrated_probs",
    "choose_temperature", "fit_temperature",
]
