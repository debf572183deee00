"""The fold ensemble of a classification cross-validation: k folds x n members as one bundle, judged out of fold.

After ``medsight train --folds k`` trains fold 0 .. k-1 (each validating on its own share of the
cross-validation pool: train plus an official val split; a test split is in no fold), each fold with
``train.members_per_fold`` n seeded members (seeds ``seed .. seed + n - 1`` on the fold's same cases; member 0
in ``fold{k}``, member r in ``fold{k}-member{r}``), :func:`ensemble_classifier_folds` writes ``RUN/model``: a
``fold_ensemble`` bundle that averages the probabilities of all k x n members, with segmentation's task-neutral
parts (:mod:`medsight.training.folds`).

Every member kept its validation cases' uncalibrated logits (``val_logits.npz``, with the flipped views), so
this step runs no network on them; a member whose file is missing or unreadable is predicted again from its
model and the data, and kept. Each case's **out-of-fold** prediction comes from the n members of the one fold
that did not train on it: per view, the logits of their mean probability (``log`` of the mean softmax, or the
logit of the mean sigmoid: :func:`medsight.models.ensemble.mean_probability_logits`, what the bundle's network
computes), so averaging over the flipped views and temperature scaling apply to them as to one model's logits.
Those predictions, concatenated in fold order, decide ``eval.tta``
(:func:`medsight.classification.tta.decide_tta`) and choose the temperature and the operating threshold
(:func:`medsight.classification.operating_point.choose_operating_point`), and ``RUN/metrics.json``,
``per_case.csv`` and ``report.html`` score them, with bootstrap CIs: the cross-validation's estimate of
how a model trained this way does on unseen cases. The ensemble itself is scored only on a test split
(``RUN/test/``): on the pool, each case was trained on by all members but its own fold's.

The temperature is fitted on the averaged members of one fold per case; the whole ensemble averages k times as
many members, so its probabilities are usually a little less confident: it errs toward under-confidence.

Example:
    >>> result = ensemble_classifier_folds(cfg, ds, Path("runs/cv"), [Path("runs/cv/fold0"), Path("runs/cv/fold1")])
    >>> result.oof["auc"], result.test and result.test["auc"]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsight.bundle import Bundle, build_bundle, load_bundle, provenance
from medsight.bundle_fields import DataSettings, SplitRecord, ThresholdChoice
from medsight.classification.domain import ensemble_domain
from medsight.classification.operating_point import OperatingPoint, choose_operating_point
from medsight.classification.train import data_hash
from medsight.classification.tta import (
    VAL_LOGITS,
    KeptLogits,
    TtaDecision,
    candidate_flips,
    decide_tta,
    kept_views,
    record_decision,
)
from medsight.classification.uncertainty import flip_combinations, predictive_entropy
from medsight.config import RunConfig
from medsight.errors import MedsightError
from medsight.inference.classifier import probs_from_logits
from medsight.models.ensemble import mean_probability_logits
from medsight.training.folds import (
    FoldRun,
    check_members_agree,
    ensemble_model,
    fold_records,
    fold_runs,
    member_weights,
    out_of_fold,
)

#: the split name of the out-of-fold estimate in metrics.json and the report
OUT_OF_FOLD = "out-of-fold"


@dataclass(frozen=True)
class EnsembleResult:
    """The out-of-fold ``metrics.json``, the ensemble's test-split metrics (None without a test split), the
    TTA decision and the folder of the test report."""

    oof: dict[str, Any]
    test: dict[str, Any] | None
    tta: TtaDecision
    test_folder: Path


def ensemble_classifier_folds(cfg: RunConfig, ds, out: Path, folders: list[Path], *, progress: bool = False,
                              fingerprint: dict | None = None) -> EnsembleResult:
    """Write the fold ensemble ``out/model``, the out-of-fold report in ``out`` and, with a test split, the
    ensemble's test report in ``out/test``. ``folders``: the members' run folders in
    :func:`~medsight.training.folds.fold_runs` order. Building it again from the same members writes the same
    bundle. The bundle's domain record (:func:`medsight.classification.domain.ensemble_domain`) uses the data's
    ``fingerprint``.

    Raises:
        MedsightError: a member's model is missing, the members were trained with other settings, two folds
            validated the same case, or the members of one fold validated other cases.
    """
    runs = fold_runs(cfg, out, resume=False, members=cfg.train.members_per_fold)
    if len(folders) != len(runs):
        raise MedsightError(out, f"has {len(folders)} member folders for {cfg.data.folds} folds x "
                            f"{cfg.train.members_per_fold} members",
                            "train every member first (medsight train --resume)")
    bundles = [load_bundle(folder / "model") for folder in folders]
    check_members_agree(bundles, folders, _shared_settings)
    head, spatial_dims = bundles[0].model.head, bundles[0].spatial_dims
    views = kept_views(cfg.augment, cfg.eval, spatial_dims)
    kept = [_fold_logits(run.config, ds, bundle, folder, views, progress=progress)
            for run, bundle, folder in zip(runs, bundles, folders, strict=True)]
    per_fold = [_members_mean(runs, kept, folders, fold, views) for fold in range(cfg.data.folds)]
    owner = out_of_fold([part.ids for part in per_fold], lambda fold, case: fold)
    oof = KeptLogits.concatenate([per_fold[fold].rows([c for c, f in owner.items() if f == fold])
                                  for fold in range(len(per_fold))])
    chosen_on = f"the out-of-fold predictions of {len(oof.ids)} cases"
    tta = decide_tta(cfg.eval.tta, candidate_flips(cfg.augment, spatial_dims), oof, head=head, chosen_on=chosen_on)
    point = choose_operating_point(oof.mean_of(tta.flips), oof.labels, head=head, cfg=cfg.eval, chosen_on=chosen_on)
    bundle = _ensemble_bundle(cfg, bundles, runs, [per_fold[run.fold].ids for run in runs], oof, point, tta)
    metrics = record_decision(_evaluate_out_of_fold(cfg, ds, out, oof, point, tta, bundle), out, tta)
    bundle.metrics = {f"oof_{key}": float(metrics[key]) for key in ("accuracy", "auc", "ece")
                      if metrics.get(key) is not None and np.isfinite(metrics[key])}
    bundle.domain = ensemble_domain(bundle, runs[0].config, ds, fingerprint, progress=progress)
    bundle.save(out / "model")
    test = _evaluate_test(cfg, ds, out / "test", bundle, progress=progress)
    return EnsembleResult(metrics, test, tta, out / "test")


def _members_mean(runs: list[FoldRun], kept: list[KeptLogits], folders: list[Path], fold: int,
                  views: list[list[int]]) -> KeptLogits:
    """Fold ``fold``'s out-of-fold logits: its one member's as they are, or per view the logits of its members'
    mean probability (:func:`~medsight.models.ensemble.mean_probability_logits`).

    Raises:
        MedsightError: a member of the fold validated other cases than its member 0.
    """
    at = [i for i, run in enumerate(runs) if run.fold == fold]
    first = kept[at[0]]
    if len(at) == 1:
        return first
    for i in at[1:]:
        if kept[i].ids != first.ids:
            raise MedsightError(folders[i] / VAL_LOGITS, f"holds other validation cases than {folders[at[0]]}",
                                "train every member of a fold with the run's one config (then --resume)")
    every = [[], *views]
    logits = [mean_probability_logits([torch.from_numpy(kept[i].view(v)) for i in at]).numpy() for v in every]
    return KeptLogits(list(first.ids), first.labels, every, np.stack(logits).astype(np.float32))


def _shared_settings(bundle: Bundle) -> tuple:
    """What the members must share to take one input: network, head, preprocessing and classes."""
    return bundle.model.model_dump(), bundle.preprocess.model_dump(), bundle.label_names


def _fold_logits(fold_cfg: RunConfig, ds, bundle: Bundle, folder: Path, views: list[list[int]], *,
                 progress: bool) -> KeptLogits:
    """The fold's kept validation logits; predicted again (and kept) where the file is missing, unreadable
    or lacks a view."""
    from medsight.classification.prepare import load_tensors
    from medsight.data.splits import resolve_splits

    kept = KeptLogits.load(folder / VAL_LOGITS)
    if kept is not None and kept.has(views):
        return kept
    warnings.warn(f"{folder}: no usable {VAL_LOGITS} (missing, unreadable or without the flipped views); "
                  "predicting its validation cases again with its model", stacklevel=2)
    indices = resolve_splits(ds, fold_cfg.data)["val"]
    tensors, _ = load_tensors(ds, indices, bundle.preprocess, on_bad_file=fold_cfg.data.on_bad_file,
                              progress=progress, desc=f"{folder.name} val")
    kept = KeptLogits.compute(bundle.build_model(), tensors, views=views)
    kept.save(folder / VAL_LOGITS)
    return kept


def _ensemble_bundle(cfg: RunConfig, bundles: list[Bundle], runs: list[FoldRun], val_cases: list[list[str]],
                     oof: KeptLogits, point: OperatingPoint, tta: TtaDecision) -> Bundle:
    first, n = bundles[0], cfg.train.members_per_fold
    folds = fold_records(bundles, val_cases, "val_auc", runs if n > 1 else None)
    return build_bundle(
        task="classification",
        model=ensemble_model(bundles, tta.flips),
        preprocess=first.preprocess,
        label_names=first.label_names,
        threshold=point.threshold,
        temperature=point.temperature,
        provenance=provenance(
            run=cfg.name, seed=cfg.train.seed, folds=folds, n_train=len(oof.ids), tta=tta.as_dict(),
            train_seconds=round(sum(fold["train_seconds"] or 0 for fold in folds), 1), members_per_fold=n,
        ),
        state_dict=member_weights(bundles),
        data=DataSettings.of(cfg.data, hash=data_hash(oof.ids, oof.labels.tolist())),
        split=SplitRecord(note=f"a fold ensemble of {cfg.data.folds} folds x {n} member(s): every case of the "
                          f"{len(oof.ids)}-case cross-validation pool trained all but its own fold's member(s); the "
                          "out-of-fold scores are in the run folder's metrics.json"),
        threshold_choice=ThresholdChoice(note=point.note, evaluation=cfg.eval, calibration=point.calibration.as_dict()),
    )


def _evaluate_out_of_fold(cfg: RunConfig, ds, out: Path, oof: KeptLogits, point: OperatingPoint,
                          tta: TtaDecision, bundle: Bundle) -> dict[str, Any]:
    """``out/metrics.json``, ``per_case.csv`` and ``report.html`` of the out-of-fold predictions."""
    from medsight.classification.evaluate import evaluate_predictions

    folds, k, n = bundle.provenance["folds"], cfg.data.folds, cfg.train.members_per_fold
    entropy, uncertainty = _entropy(cfg, oof, point)
    return evaluate_predictions(
        oof.labels, point.probs, label_names=ds.class_names, case_ids=oof.ids, threshold=point.threshold,
        threshold_note=point.note, cfg=cfg.eval,
        uncalibrated=point.uncalibrated if point.temperature is not None else None,
        temperature=point.temperature, temperature_choice=point.calibration.as_dict(),
        entropy=entropy, uncertainty=uncertainty, out=out,
        title=f"{cfg.name}: {k} folds x {n} member(s), each case scored by its own fold's member(s) (the mean of "
              "their probabilities), which did not train on it",
        split=OUT_OF_FOLD,
        extra={
            "data": str(cfg.data.path), "model": f"fold_ensemble of {len(folds)} {bundle.model.kwargs['member']}",
            "folds": k, "members per fold": n, "best epoch": [f["best_epoch"] for f in folds],
            "epochs run": [f["epochs_run"] for f in folds], "training time (s)": bundle.provenance["train_seconds"],
            "cases per split": {"out_of_fold": len(oof.ids)}, "test-time augmentation": tta.reason,
        },
    )


def _entropy(cfg: RunConfig, oof: KeptLogits, point: OperatingPoint) -> tuple[np.ndarray, dict]:
    """Per-case predictive entropy of the out-of-fold predictions: of the out-of-fold model's mean calibrated
    probability over the flips (``eval.uncertainty: tta``, from the kept views), else of the predictions
    themselves (Monte Carlo dropout needs a network, which this step does not run)."""
    if cfg.eval.uncertainty != "tta":
        return predictive_entropy(point.probs), {"method": "none", "passes": 1}
    combos = flip_combinations(len(cfg.preprocess.size))[:cfg.eval.uncertainty_passes]
    probs = [probs_from_logits(torch.from_numpy(oof.view(list(axes))), cfg.model.head, point.temperature)
             for axes in combos]
    return predictive_entropy(np.mean(probs, axis=0)), {"method": "tta", "passes": len(combos)}


def _evaluate_test(cfg: RunConfig, ds, out: Path, bundle: Bundle, *, progress: bool) -> dict[str, Any] | None:
    """The ensemble scored on the run's test split (``out``: its own report folder); None without one."""
    from medsight.classification.evaluate import evaluate_predictions
    from medsight.classification.prepare import load_tensors
    from medsight.classification.score import calibration_kwargs, score
    from medsight.data.splits import resolve_splits
    from medsight.inference.classifier import CalibratedClassifier

    indices = resolve_splits(ds, cfg.data)["test"]
    if not len(indices):
        return None
    tensors, _ = load_tensors(ds, indices, bundle.preprocess, on_bad_file=cfg.data.on_bad_file,
                              progress=progress, desc="test")
    classifier = CalibratedClassifier(bundle.build_model(), head=bundle.model.head, temperature=bundle.temperature)
    scored = score(classifier, tensors, cfg=cfg.eval)
    return evaluate_predictions(
        tensors.labels.numpy(), scored["probs"], label_names=ds.class_names, case_ids=tensors.ids,
        threshold=bundle.threshold, threshold_note=bundle.threshold_choice.note, cfg=cfg.eval,
        **calibration_kwargs(scored, bundle.temperature, bundle.threshold_choice.calibration), out=out,
        title=f"{cfg.name}: the fold ensemble on the test split", split="test",
        extra={"data": str(cfg.data.path), "model": f"fold_ensemble of {bundle.model.kwargs['members']} "
               f"{bundle.model.kwargs['member']}", "cases per split": {"test": len(tensors.ids)}},
    )


__all__ = ["OUT_OF_FOLD", "EnsembleResult", "ensemble_classifier_folds"]
