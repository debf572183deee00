"""How sure is the classifier about each case: predictive entropy and the selective-prediction curve.

The entropy of the mean probability over several stochastic or transformed passes,
``H = -sum_k p_k log p_k`` in nats, is 0 when every pass puts all mass on one class and
``log K`` when the mean is uniform. Two ways to get the passes:

* ``"tta"``: test-time augmentation by mirroring: the identity, then left-right,
  up-down, both... (the first ``passes`` of the ``2 ** spatial_dims`` flip combinations).
  Deterministic, works with any network.
* ``"mc_dropout"``: Monte Carlo dropout: the network in eval mode with only its dropout
  layers switched on, ``passes`` times, from a fixed seed (reproducible).
* ``"none"``: the entropy of the single plain prediction (no extra passes).

The passes only measure uncertainty: the reported metrics and the predicted labels come
from the plain (calibrated) prediction, so they equal what the service answers.

The selective-prediction curve keeps the ``k`` most certain cases (lowest entropy) and
plots their accuracy against the coverage ``k / N``. A useful uncertainty makes the curve
fall from left to right: the cases the model is sure about are the ones it gets right.
At coverage 1 the accuracy is the plain accuracy.

Example:
    >>> classifier = CalibratedClassifier(model, head="softmax", temperature=1.7)
    >>> entropy, info = case_entropy(classifier, val.images, method="tta", passes=4)
    >>> curve = selective_curve(correct, entropy)      # {"coverage", "accuracy", "area", ...}
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from medsight.errors import ConfigError, DatasetError
from medsight.inference.classifier import CalibratedClassifier
from medsight.models.heads import entropy

METHODS = ("none", "tta", "mc_dropout")
MC_SEED = 0
COVERAGES = (1.0, 0.9, 0.8, 0.5)
_MAX_POINTS = 101  # points of the selective curve stored in metrics.json


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of ``(N, K)`` probabilities (``0 log 0 = 0``).

    Example:
        >>> predictive_entropy(np.array([[1.0, 0.0], [0.5, 0.5]]))
        array([0.        , 0.69314718])
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise DatasetError("probs", f"has shape {p.shape}, expected (cases, classes)", "pass (N, K) probabilities")
    return entropy(p, axis=1)


def case_entropy(
    classifier: CalibratedClassifier, images: torch.Tensor, *, method: str, passes: int
) -> tuple[np.ndarray, dict]:
    """Per-case predictive entropy of ``classifier`` (its network, head and temperature) on ``images``
    ``(N, C, *spatial)``.

    Returns:
        ``(entropy (N,), info)``; ``info`` says the method and the number of passes used (``tta``
        uses at most ``2 ** spatial_dims`` passes, the distinct flip combinations).

    Raises:
        ConfigError: an unknown method, ``passes < 1``, or ``mc_dropout`` on a network without dropout.
    """
    if method not in METHODS:
        raise ConfigError(f"eval.uncertainty={method}", "unknown method", f"use one of {', '.join(METHODS)}")
    if passes < 1:
        raise ConfigError(f"eval.uncertainty_passes={passes}", "needs at least one pass", "use e.g. 4")
    if method == "none":
        return predictive_entropy(classifier.predict(images)), {"method": "none", "passes": 1}
    if method == "tta":
        combos = flip_combinations(images.ndim - 2)[:passes]
        mean = np.mean([classifier.predict(torch.flip(images, axes) if axes else images) for axes in combos], axis=0)
        return predictive_entropy(mean), {"method": "tta", "passes": len(combos)}
    model = classifier.network
    check_dropout(model)
    with dropout_active(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(MC_SEED)
        mean = np.mean([classifier.predict(images, eval_mode=False) for _ in range(passes)], axis=0)
    return predictive_entropy(mean), {"method": "mc_dropout", "passes": passes}


def flip_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """Axes to flip for each TTA pass: ``()`` first, then the last axis, the second-last, both, ...

    Example:
        >>> flip_combinations(2)
        [(), (-1,), (-2,), (-2, -1)]
    """
    axes = [-(i + 1) for i in range(spatial_dims)]
    combos = [tuple(sorted(c)) for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]
    return combos


def check_dropout(model: nn.Module) -> None:
    """Raise unless ``model`` has a dropout layer with ``p > 0`` (needed by MC dropout).

    Raises:
        ConfigError: no such ``nn.Dropout*`` module in the network.
    """
    if not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        raise ConfigError(
            "eval.uncertainty=mc_dropout",
            f"the network {type(model).__name__} has no dropout layer with a rate above 0",
            "use eval.uncertainty: tta, or a model with dropout (e.g. model.kwargs.dropout: 0.2)",
        )


@contextlib.contextmanager
def dropout_active(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode with only its dropout layers training; every module's mode is restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


def selective_curve(correct: np.ndarray, entropy: np.ndarray) -> dict:
    """Accuracy of the most certain cases against the fraction of cases kept.

    Cases are ranked by entropy (ties keep their order). The area is the mean accuracy over
    every coverage ``k / N``, ``k = 1..N`` (1 is perfect; a useless ranking gives about the plain
    accuracy). At most ``_MAX_POINTS`` evenly spaced points are stored; the last is coverage 1.

    Returns:
        ``{"coverage": [...], "accuracy": [...], "area", "accuracy_at_full", "at_coverage"}``; the last
        maps each of ``COVERAGES`` (as text, e.g. ``"0.9"``) to the accuracy of the most certain
        ``ceil(c * N)`` cases.

    Raises:
        DatasetError: lengths differ or there are no cases.
    """
    hit = np.asarray(correct, dtype=np.float64).ravel()
    ent = np.asarray(entropy, dtype=np.float64).ravel()
    if len(hit) != len(ent) or len(hit) == 0:
        raise DatasetError("entropy", f"has {len(ent)} values for {len(hit)} cases", "pass one entropy per case")
    order = np.argsort(ent, kind="stable")
    kept = np.arange(1, len(hit) + 1)
    accuracy = np.cumsum(hit[order]) / kept
    points = np.unique(np.round(np.linspace(1, len(hit), min(len(hit), _MAX_POINTS))).astype(int)) - 1
    return {
        "coverage": (kept[points] / len(hit)).tolist(),
        "accuracy": accuracy[points].tolist(),
        "area": float(accuracy.mean()),
        "accuracy_at_full": float(accuracy[-1]),
        "at_coverage": {f"{c:g}": float(accuracy[max(1, math.ceil(c * len(hit) - 1e-9)) - 1]) for c in COVERAGES},
    }


__all__ = [
    "METHODS", "case_entropy", "check_dropout", "dropout_active", "flip_combinations", "predictive_entropy",
    "selective_curve",
]
