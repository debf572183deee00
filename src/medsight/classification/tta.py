"""Flip test-time augmentation for classifiers: which views, the kept validation logits, and whether it pays.

``eval.tta`` says what a classifier's bundle predicts with:

- ``none``: the image as it is;
- ``flips``: the mean probability over the image and its flips: the flips the augmentation trained
  with (``augment.flip_h`` -> the last axis, ``augment.flip_v`` -> the second-to-last) and, with both,
  the two together; no flip configured means no TTA, and the decision says so;
- ``auto``: those flips only where they pay: where they lower the **log-loss** of the out-of-fold
  predictions of a cross-validation (of the validation split for a single run), each set of
  predictions scored at its own best temperature, so that averaging's softening of over-confident
  probabilities does not count as a gain by itself. The AUC with and without is recorded beside it.

Every fold (and a single run) keeps its validation cases' uncalibrated logits, of the image and of
each flipped view it may need, in ``val_logits.npz`` (:class:`KeptLogits`), so the decision and the
out-of-fold temperature and threshold run no network.

Example:
    >>> views = candidate_flips(cfg.augment, 2)          # [[-1]] with augment.flip_h > 0
    >>> kept = KeptLogits.compute(network, val, views=views, head="softmax")
    >>> decision = decide_tta("auto", views, kept, head="softmax", chosen_on="the validation split (n=80)")
    >>> decision.flips, decision.reason
"""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from medsight.atomic_write import atomic_write_bytes
from medsight.classification.batches import TensorSet
from medsight.classification.uncertainty import flip_combinations
from medsight.config import AugmentConfig, EvalConfig
from medsight.inference.classifier import batched_logits
from medsight.models.ensemble import mean_probability_logits

#: the file a fold (or a single run) keeps its validation logits in
VAL_LOGITS = "val_logits.npz"


def candidate_flips(augment: AugmentConfig, spatial_dims: int) -> list[list[int]]:
    """The flipped views the augmentation trained with: every non-empty combination of its flip axes.

    Example:
        >>> candidate_flips(AugmentConfig(flip_h=0.5, flip_v=0.5), 2)
        [[-1], [-2], [-2, -1]]
    """
    axes = [axis for axis, p in ((-1, augment.flip_h), (-2, augment.flip_v)) if p > 0 and -axis <= spatial_dims]
    return [sorted(c) for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]


def kept_views(augment: AugmentConfig, cfg: EvalConfig, spatial_dims: int) -> list[list[int]]:
    """The flipped views a fold keeps logits of: TTA's candidates (``eval.tta`` not ``none``) and the flips
    of the flip uncertainty (``eval.uncertainty: tta``), without repeats."""
    views = candidate_flips(augment, spatial_dims) if cfg.tta != "none" else []
    if cfg.uncertainty == "tta":
        views += [list(c) for c in flip_combinations(spatial_dims)[1:cfg.uncertainty_passes]]
    unique: list[list[int]] = []
    for view in views:
        if view not in unique:
            unique.append(view)
    return unique


@dataclass
class KeptLogits:
    """The uncalibrated logits of validation cases: ``logits[v]`` ``(N, outputs)`` of view ``views[v]``
    (``views[0] == []``: the image as it is), with the cases' ``ids`` and ``labels``."""

    ids: list[str]
    labels: np.ndarray
    views: list[list[int]]
    logits: np.ndarray

    @classmethod
    def compute(cls, network: torch.nn.Module, tensors: TensorSet, *, views: list[list[int]],
                batch_size: int = 256) -> KeptLogits:
        """Run ``network`` (in eval mode, float32, where its parameters are) on the image and each view."""
        param = next(network.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        every = [[], *views]
        logits = [batched_logits(network, torch.flip(tensors.images, v) if v else tensors.images,
                                 batch_size=batch_size, device=device, amp=False).numpy() for v in every]
        return cls(list(tensors.ids), tensors.labels.numpy().astype(np.int64), every, np.stack(logits))

    def view(self, axes: list[int]) -> np.ndarray:
        """The logits of one view (``[]``: the image as it is)."""
        return self.logits[self.views.index(list(axes))]

    def has(self, views: list[list[int]]) -> bool:
        return all(list(v) in self.views for v in views)

    def mean_of(self, views: list[list[int]]) -> torch.Tensor:
        """Logits of the mean probability over the image and ``views`` (the image alone: its own logits)."""
        if not views:
            return torch.from_numpy(self.view([]))
        return mean_probability_logits([torch.from_numpy(self.view(v)) for v in [[], *views]])

    def rows(self, ids: list[str]) -> KeptLogits:
        """These logits for the cases ``ids``, in that order."""
        at = {case: i for i, case in enumerate(self.ids)}
        index = np.array([at[case] for case in ids], dtype=np.int64)
        return KeptLogits(list(ids), self.labels[index], self.views, self.logits[:, index])

    @classmethod
    def concatenate(cls, parts: list[KeptLogits]) -> KeptLogits:
        return cls([i for p in parts for i in p.ids], np.concatenate([p.labels for p in parts]), parts[0].views,
                   np.concatenate([p.logits for p in parts], axis=1))

    def save(self, path: Path) -> None:
        """Write the npz atomically (a reader sees the old file or the whole new one)."""
        buffer = io.BytesIO()
        np.savez(buffer, ids=np.array(self.ids, dtype=str), labels=self.labels, views=json.dumps(self.views),
                 logits=self.logits.astype(np.float32))
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> KeptLogits | None:
        """The kept logits, or None where the file is missing, unreadable or inconsistent (predict again)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                kept = cls([str(i) for i in data["ids"]], data["labels"].astype(np.int64),
                           [list(v) for v in json.loads(str(data["views"]))], data["logits"].astype(np.float32))
        except (OSError, KeyError, ValueError):
            return None
        n = len(kept.ids)
        if kept.logits.ndim != 3 or kept.logits.shape[:2] != (len(kept.views), n) or len(kept.labels) != n:
            return None
        return kept


@dataclass(frozen=True)
class TtaDecision:
    """What ``eval.tta`` decided: the ``flips`` the bundle predicts with (``[]``: none), the ``candidates``
    it weighed, why, on which cases, and the numbers: log-loss (each at its best temperature) and AUC of
    the predictions without and with the candidates (None where they were not measured)."""

    mode: str
    flips: list[list[int]]
    candidates: list[list[int]]
    reason: str
    chosen_on: str | None = None
    log_loss_without: float | None = None
    log_loss_with: float | None = None
    auc_without: float | None = None
    auc_with: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def decide_tta(mode: str, candidates: list[list[int]], kept: KeptLogits, *, head: str,
               chosen_on: str) -> TtaDecision:
    """The flips a bundle predicts with under ``eval.tta`` = ``mode`` (see the module), from ``kept`` logits
    that hold every candidate view."""
    if mode == "none":
        return TtaDecision(mode, [], [], "off (eval.tta: none)")
    if not candidates:
        return TtaDecision(mode, [], [], "none: the augmentation has no flips (augment.flip_h and flip_v are 0), "
                                         "so there is no flip the model was trained to see")
    without, with_ = kept.mean_of([]), kept.mean_of(candidates)
    numbers = dict(chosen_on=chosen_on, log_loss_without=_best_log_loss(without, kept.labels, head),
                   log_loss_with=_best_log_loss(with_, kept.labels, head),
                   auc_without=_auc(without, kept.labels, head), auc_with=_auc(with_, kept.labels, head))
    what = f"flips {candidates}"
    figures = (f"log-loss {numbers['log_loss_without']:.5f} -> {numbers['log_loss_with']:.5f}, "
               f"AUC {numbers['auc_without']:.4f} -> {numbers['auc_with']:.4f} on {chosen_on}")
    if mode == "flips":
        return TtaDecision(mode, candidates, candidates, f"{what} (eval.tta: flips); {figures}", **numbers)
    if numbers["log_loss_with"] < numbers["log_loss_without"]:
        return TtaDecision(mode, candidates, candidates, f"{what} kept: they lowered the {figures}", **numbers)
    return TtaDecision(mode, [], candidates, f"{what} not kept: they did not lower the {figures}", **numbers)


def record_decision(metrics: dict, out: Path, decision: TtaDecision) -> dict:
    """``metrics`` (a run's metrics.json, already written in ``out``) with the decision under ``tta``, saved
    again (the report shows the decision's reason; the file keeps its numbers)."""
    from medsight.result_files import write_strict_json

    metrics["tta"] = decision.as_dict()
    write_strict_json(Path(out) / "metrics.json", metrics)
    return metrics


def _best_log_loss(logits: torch.Tensor, y: np.ndarray, head: str) -> float:
    """Mean negative log-likelihood (nats per case) at the temperature that minimises it."""
    from medsight.classification.calibration import fit_temperature

    z = logits.double()
    z = torch.cat([torch.zeros_like(z), z], dim=1) if head == "sigmoid" else z
    scaled = z / fit_temperature(z.numpy(), y, head="softmax")
    log_p = torch.log_softmax(scaled, dim=1)
    return float(-log_p[torch.arange(len(y)), torch.from_numpy(y)].mean())


def _auc(logits: torch.Tensor, y: np.ndarray, head: str) -> float:
    from medsight.classification.metrics import classification_metrics
    from medsight.inference.classifier import probs_from_logits

    return float(classification_metrics(y, probs_from_logits(logits, head), None)["auc"])
