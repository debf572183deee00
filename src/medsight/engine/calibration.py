"""Temperature scaling: one number, fitted on validation logits, that makes probabilities honest.

A network trained with cross-entropy is usually over-confident: it says 0.99 and is right
90% of the time. Dividing every logit by a temperature ``T > 1`` softens the probabilities
(``T < 1`` sharpens them) without changing which class is the most probable, so accuracy and
AUC stay the same and only the calibration moves (Guo et al., 2017, "On Calibration of
Modern Neural Networks").

``T`` is the minimiser of the validation negative log-likelihood. The NLL is convex in
``1 / T``, so a bounded 1-D search on ``1 / T`` finds the global minimum.

Example:
    >>> T = fit_temperature(val_logits, y_val, head="softmax")    # e.g. 1.8
    >>> probs = calibrated_probs(test_logits, T, head="softmax")
"""

from __future__ import annotations

import numpy as np

from medsight.errors import ConfigError, DatasetError

#: The search range of ``T``; a fit at either end says the model is far from calibrated.
T_MIN, T_MAX = 0.05, 20.0


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
    from scipy.optimize import minimize_scalar

    z, y = _check(logits, y_true, head)
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

    from medsight.engine.trainer import probs_from_logits

    return probs_from_logits(torch.as_tensor(np.asarray(logits, dtype=np.float32)), head, temperature)


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


__all__ = ["T_MAX", "T_MIN", "calibrated_probs", "fit_temperature"]
