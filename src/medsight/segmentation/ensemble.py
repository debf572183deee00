"""The fold ensemble: the k models of a segmentation cross-validation as one bundle (nnU-Net's way).

After ``medsight train --task segmentation --folds k`` (with ``segment.ensemble``, the default)
:func:`ensemble_folds` writes ``RUN/model``: a ``fold_ensemble`` bundle that averages the fold
models' probabilities, with the folds' inference settings. Binary tasks get the threshold that
maximises the pooled Dice of the **out-of-fold** predictions: every case scored by the one fold
model that did not train on it, so the threshold is chosen on all the cases instead of one
fold's share. ``RUN/metrics.json``, ``per_case.csv`` and ``report.html`` score those
out-of-fold predictions at that threshold. Scoring the ensemble itself on the training cases
would not be honest (each case was trained on by k - 1 of its members); score it on held-out
data with ``medsight evaluate``.

The folds keep their validation probabilities (``fold{k}/val_probabilities/``), so this step
runs no network; a fold that did not keep them (an older run) is predicted again.

What any task's fold ensemble needs (which fold predicts which case out of fold, choosing the
threshold on those predictions, the members' weights and fold records) is
:mod:`medsight.training.folds`; this module keeps what is segmentation's own: the kept probability
maps (:class:`OutOfFold`), the Dice-maximising threshold and the out-of-fold report.

Example:
    >>> metrics = ensemble_folds(cfg, Path("runs/drive"), [Path("runs/drive/fold0"), Path("runs/drive/fold1")])
    >>> metrics["auc"], metrics["threshold"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medsight.bundle import Bundle, build_bundle, load_bundle, provenance
from medsight.bundle_fields import DataSettings, SplitRecord, ThresholdChoice
from medsight.config import RunConfig
from medsight.inference.segmenter import Segmenter
from medsight.sample import Sample
from medsight.segmentation.evaluate import DatasetCases, evaluate_segmentation, keep_probabilities, probabilities_file
from medsight.segmentation.thresholds import centring_level, choose_thresholds
from medsight.segmentation.train import VAL_PROBABILITIES
from medsight.training.folds import (
    check_members_agree,
    ensemble_model,
    fold_records,
    member_weights,
    out_of_fold,
    threshold_out_of_fold,
)


class OutOfFold:
    """One case's out-of-fold segmenter: its fold's model, with the probabilities the fold kept for it
    (predicted again, and kept, when the fold has none)."""

    def __init__(self, segmenter: Segmenter, folder: Path, case_id: str) -> None:
        self.segmenter, self.path = segmenter, probabilities_file(folder, case_id)

    def prepare(self, sample: Sample) -> np.ndarray:
        return self.segmenter.prepare(sample)

    def probabilities(self, sample: Sample) -> np.ndarray:
        """The kept probabilities, centred as the segmenter says (so at the ensemble's level once it is set)."""
        if self.path.is_file():
            probs = np.load(self.path).astype(np.float32)
            if probs.shape[1:] == sample.spatial_shape:
                return self.segmenter.centred(probs)
        probs = self.segmenter.probabilities(sample)
        keep_probabilities(self.path, probs)
        return probs

    def labels_from(self, probs: np.ndarray) -> np.ndarray:
        return self.segmenter.labels_from(probs)


def ensemble_folds(cfg: RunConfig, out: Path, folds: list[Path], *, progress: bool = False) -> dict[str, Any]:
    """Write the fold ensemble ``out/model`` and score the out-of-fold predictions in ``out``.

    Returns:
        The out-of-fold ``metrics.json`` (``dice``, ``hd95``, ...; binary: ``auc``, ``f1``, ``threshold``).

    Raises:
        MedsightError: a fold's model is missing, or the folds were trained with other settings
            (network, preprocessing or plan), so they cannot share one input.
    """
    from medsight.data.seg_layouts import open_seg_dataset
    from medsight.progress import track
    from medsight.runtime.device import pick_device
    from medsight.segmentation.profiles import with_profiles

    bundles = [load_bundle(fold / "model") for fold in folds]
    check_members_agree(bundles, folds, _shared_settings)
    device = str(pick_device(cfg.train.device))
    members = [Segmenter(bundle, device=device) for bundle in bundles]
    val_cases = [bundle.split.of("val") for bundle in bundles]
    every_oof = out_of_fold(val_cases, lambda k, case: OutOfFold(members[k], folds[k] / VAL_PROBABILITIES, case))
    dataset = open_seg_dataset(cfg.data.path, label_names=dict(enumerate(bundles[0].label_names)))
    items = [item for item in dataset.items if item.case_id in every_oof]
    oof = {item.case_id: every_oof[item.case_id] for item in items}

    def cases():
        for case_id, sample, truth, roi in track(DatasetCases(dataset, items), description="out-of-fold threshold",
                                                 enabled=progress):
            yield case_id, (sample, truth, roi)

    thresholds, note, level = threshold_out_of_fold(
        cases, oof, lambda member, case: (member.probabilities(case[0]), *case[1:]),
        lambda probs, what: _thresholds(cfg, len(bundles[0].label_names), probs, what))
    for member in members:
        member.thresholds, member.logit_median = thresholds, level
    bundle = _ensemble_bundle(cfg, bundles, val_cases, thresholds, note, level,
                              all_cases=[item.case_id for item in dataset.items])
    bundle.segmentation = with_profiles(bundle.segmentation, lambda case_id: oof[case_id].segmenter,
                                        DatasetCases(dataset, items), members=len(bundles), progress=progress)
    states = bundle.provenance["folds"]
    metrics = evaluate_segmentation(  # members[0] gives the label names and the (shared) threshold
        members[0], DatasetCases(dataset, items), out=out, segmenter_for=oof.__getitem__,
        title=f"{cfg.name}: the {len(folds)} fold models, each case scored by the fold that did not train on it",
        progress=progress,
        extra={"split": "out of fold", "data": str(cfg.data.path), "model": f"fold_ensemble of {len(folds)} "
               f"{bundles[0].model.name}", "folds": len(folds), "threshold_note": note,
               "best_epoch": [s["best_epoch"] for s in states], "epochs_run": [s["epochs_run"] for s in states],
               "training_seconds": bundle.provenance["train_seconds"],
               "cases_per_split": {"out_of_fold": len(items)}},
    )
    bundle.metrics = {f"oof_{key}": metrics[key] for key in ("dice", "auc", "f1") if key in metrics}
    bundle.save(out / "model")
    return metrics


def _shared_settings(bundle: Bundle) -> tuple:
    """What the members must share to take one input: the network, the preprocessing and the plan's
    normalisation (every segmentation setting but the thresholds), and the labels."""
    settings = bundle.segmentation.model_dump(exclude={"thresholds", "logit_median", "profiles", "default_profile",
                                                       "profile_note"})
    return (bundle.model.model_dump(), bundle.preprocess.model_dump(), settings, bundle.label_names)


def _thresholds(cfg: RunConfig, n_labels: int, probs, what: str) -> tuple[dict[int, float], str, float | None]:
    """``(thresholds, note, logit_median)`` from ``probs()`` (``(probabilities, labels, roi)`` per case):
    :func:`centring_level` and :func:`choose_thresholds`, as a single model's are chosen."""
    level, centred = centring_level(cfg, probs)
    return (*choose_thresholds(cfg, n_labels, centred, what), level)


def _ensemble_bundle(cfg: RunConfig, bundles: list[Bundle], val_cases: list[list[str]], thresholds: dict[int, float],
                     note: str, level: float | None, all_cases: list[str]) -> Bundle:
    first = bundles[0]
    folds = fold_records(bundles, val_cases, "val_dice")
    return build_bundle(
        task="segmentation",
        model=ensemble_model(bundles),
        preprocess=first.preprocess,
        label_names=first.label_names,
        provenance=provenance(
            run=cfg.name, plan=first.provenance.get("plan"), seed=cfg.train.seed, folds=folds,
            train_seconds=round(sum(fold["train_seconds"] or 0 for fold in folds), 1),
        ),
        state_dict=member_weights(bundles),
        segmentation=first.segmentation.with_thresholds(thresholds, level),
        data=DataSettings(path=str(cfg.data.path), config=first.data.config),
        split=SplitRecord(cases={"train": all_cases, "val": []}, note="a fold ensemble: each case trained all but "
                          "one of its members; the out-of-fold scores are in the run folder's metrics.json"),
        threshold_choice=ThresholdChoice(note=note),
    )
