"""The promotion gate: is a candidate at least as good as production on the same frozen validation cases?

Both models score the same cases; the metric difference (candidate - production) is bootstrapped
by resampling the cases *together* (a paired bootstrap), which is far tighter than comparing two
separate confidence intervals. The metric is the AUC for classifiers (macro one-vs-rest for more
than two classes) and the mean per-case Dice for segmenters. The candidate is rejected when the
CI's upper bound is below 0 (it is worse, beyond chance) or when the point estimate is below
``-margin``.

Example:
    >>> result = compare_bundles("cand/model", "prod/model", data="data/chest", split="val")
    >>> result.passed, result.table()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import DatasetError


@dataclass(frozen=True)
class GateResult:
    """The gate's numbers and its verdict."""

    metric: str
    n_cases: int
    candidate: float
    production: float
    difference: float
    ci_low: float
    ci_high: float
    ci: float
    margin: float
    n_boot: int
    passed: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """The numbers as a small text table, then the verdict."""
        rows = [
            ("metric", self.metric), ("cases", str(self.n_cases)),
            ("candidate", f"{self.candidate:.4f}"), ("production", f"{self.production:.4f}"),
            ("difference (cand - prod)", f"{self.difference:+.4f}"),
            (f"{self.ci:.0%} paired bootstrap CI", f"[{self.ci_low:+.4f}, {self.ci_high:+.4f}]"),
            ("margin", f"{self.margin:.4f}"), ("bootstrap resamples", str(self.n_boot)),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        lines.append(f"{'PASSED' if self.passed else 'REJECTED'}: {self.reason}")
        return "\n".join(lines)


def paired_gate(
    metric: Callable[[np.ndarray], float],
    n_cases: int,
    *,
    candidate_metric: Callable[[np.ndarray], float],
    name: str,
    n_boot: int = 1000,
    ci: float = 0.95,
    margin: float = 0.0,
    seed: int = 0,
) -> GateResult:
    """The gate on any metric: ``metric(idx)`` scores production, ``candidate_metric(idx)`` the candidate,
    both on the cases ``idx`` (an index array that the bootstrap resamples with replacement).

    Resamples where either metric is undefined (NaN, e.g. one class only) are dropped.
    """
    everything = np.arange(n_cases)
    prod, cand = float(metric(everything)), float(candidate_metric(everything))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n_cases, n_cases)
        d = candidate_metric(idx) - metric(idx)
        if np.isfinite(d):
            diffs.append(d)
    if not diffs:
        raise DatasetError("validation set", f"no bootstrap resample of its {n_cases} cases gave a {name}",
                           "use a validation set with every class present and more cases")
    alpha = (1.0 - ci) / 2
    low, high = (float(q) for q in np.quantile(diffs, [alpha, 1 - alpha]))
    diff = cand - prod
    if high < 0:
        passed, reason = False, f"the candidate's {name} is lower than production's ({ci:.0%} CI entirely below 0)"
    elif diff < -margin:
        passed, reason = False, f"the {name} difference {diff:+.4f} is below -margin (-{margin:.4f})"
    else:
        passed, reason = True, f"the candidate's {name} is not worse than production's"
    return GateResult(metric=name, n_cases=n_cases, candidate=cand, production=prod, difference=diff,
                      ci_low=low, ci_high=high, ci=ci, margin=margin, n_boot=len(diffs), passed=passed,
                      reason=reason)


def auc_gate(y: np.ndarray, candidate_probs: np.ndarray, production_probs: np.ndarray, **kwargs: Any) -> GateResult:
    """:func:`paired_gate` on the AUC of two ``(N, K)`` probability arrays for labels ``y``."""
    y = np.asarray(y)
    return paired_gate(lambda idx: _auc(y[idx], production_probs[idx]), len(y),
                       candidate_metric=lambda idx: _auc(y[idx], candidate_probs[idx]), name="AUC", **kwargs)


def dice_gate(candidate_dice: np.ndarray, production_dice: np.ndarray, **kwargs: Any) -> GateResult:
    """:func:`paired_gate` on the mean of per-case Dice scores."""
    cand, prod = np.asarray(candidate_dice, float), np.asarray(production_dice, float)
    return paired_gate(lambda idx: float(np.mean(prod[idx])), len(prod),
                       candidate_metric=lambda idx: float(np.mean(cand[idx])), name="Dice", **kwargs)


def compare_bundles(candidate: str | Path, production: str | Path, *, data: str | Path, split: str = "val",
                    **kwargs: Any) -> GateResult:
    """Score both bundles on the same frozen cases of ``data`` and run the gate.

    ``split`` picks the cases with the *production* bundle's stored split settings (``val``, ``test``,
    ``train``, or ``all``), so the candidate is judged on exactly the cases production was.

    Raises:
        DatasetError: the two bundles have different tasks or label names, or too few cases.
    """
    from medsight.bundle import load_bundle

    cand, prod = load_bundle(candidate), load_bundle(production)
    if cand.task != prod.task or cand.label_names != prod.label_names:
        raise DatasetError(candidate, f"task/labels ({cand.task}, {cand.label_names}) differ from production's "
                           f"({prod.task}, {prod.label_names})", "compare models trained for the same task")
    if prod.task == "segmentation":
        return _compare_segmenters(cand, prod, data=data, split=split, **kwargs)
    from medsight.classification.prepare import load_tensors
    from medsight.classification.split import bundle_split
    from medsight.inference.predictor import Predictor

    ds, data_cfg, indices = bundle_split(prod, data, split)
    probs = []
    for bundle in (cand, prod):
        tensors, _ = load_tensors(ds, indices, bundle.preprocess, on_bad_file=data_cfg.on_bad_file, progress=False)
        probs.append(Predictor(bundle).predict_tensors(tensors.images))
    return auc_gate(tensors.labels.numpy(), probs[0], probs[1], **kwargs)


def _compare_segmenters(cand, prod, *, data: str | Path, split: str, **kwargs: Any) -> GateResult:
    from medsight.inference.segmenter import Segmenter
    from medsight.segmentation.evaluate import open_split

    dataset, items = open_split(prod, str(data), split)
    runners = (Segmenter(cand), Segmenter(prod))
    scores: list[list[float]] = [[], []]
    for item in items:
        sample, truth, _ = dataset.read(item)
        for k, runner in enumerate(runners):
            scores[k].append(_dice(runner.segment_sample(sample).labels, truth))
    return dice_gate(np.array(scores[0]), np.array(scores[1]), **kwargs)


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground Dice (every non-zero label counts as foreground); 1.0 when both are empty."""
    a, b = np.asarray(pred).reshape(-1) > 0, np.asarray(truth).reshape(-1) > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def _auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUC of the positive class, or macro one-vs-rest; NaN when a class is missing."""
    from sklearn.metrics import roc_auc_score

    k = probs.shape[1]
    if len(np.unique(y)) < k:
        return float("nan")
    if k == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
