"""Cross-validation for any task: the folds' configs and folders, out-of-fold predictions keyed by
case, the operating threshold chosen out of fold, the folds' metrics summarised, and the parts of
a fold-ensemble bundle that do not depend on the task.

A classifier's cross-validation may train several seeded members per fold (``train.members_per_fold``
n, :func:`fold_runs`'s ``members``): member r of fold k trains with ``train.seed + r`` on fold k's cases in
``out/fold{k}-member{r}``; member 0 keeps ``out/fold{k}``, so one member per fold is the plain layout.

A task brings only what is its own: how one fold trains (:func:`cross_validate`'s ``train_fold``,
returning the fold's metrics), what its out-of-fold member of a case is (:func:`out_of_fold`'s
``member_for``), and how its threshold is chosen from out-of-fold predictions
(:func:`threshold_out_of_fold`'s ``choose``). Segmentation's are in
:mod:`medsight.workflows.segmentation` and :mod:`medsight.segmentation.ensemble`.

Example:
    >>> metrics, folders = cross_validate(cfg, Path("runs/cv"), resume=False,
    ...                                   train_fold=lambda run: train(run.config, out=run.folder))
    >>> owners = fold_owners([["a", "b"], ["c"]])
    >>> owners
    {'a': 0, 'b': 0, 'c': 1}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from medsight.bundle import Bundle
from medsight.config import ModelConfig, RunConfig
from medsight.errors import DatasetError, MedsightError
from medsight.runtime.checkpoint import CHECKPOINT

#: the ``model.name`` of a bundle that averages its fold members
FOLD_ENSEMBLE = "fold_ensemble"

Member = TypeVar("Member")
Case = TypeVar("Case")
Prediction = TypeVar("Prediction")
Choice = TypeVar("Choice")


class FoldRun(NamedTuple):
    """One member of one fold of a cross-validation: its config (``data.fold`` set, ``train.seed`` offset by
    the member, the name suffixed), its run folder, whether it resumes from a checkpoint there, its fold and
    its member number within the fold."""

    config: RunConfig
    folder: Path
    resume: bool
    fold: int = 0
    member: int = 0


def member_name(fold: int, member: int = 0) -> str:
    """The folder (and name suffix) of member ``member`` of fold ``fold``: ``fold{k}``, ``fold{k}-member{r}``."""
    return f"fold{fold}" if member == 0 else f"fold{fold}-member{member}"


def fold_runs(cfg: RunConfig, out: Path, resume: bool, members: int = 1) -> list[FoldRun]:
    """The ``data.folds`` folds of ``cfg``, ``members`` seeded members each, pass by pass (every fold's member 0,
    then every fold's member 1, ...). Member r of fold k has ``data.fold = k``, ``train.seed = seed + r`` and the
    name ``<name>-fold<k>`` (``<name>-fold<k>-member<r>`` for r >= 1), trains in ``out/`` :func:`member_name`, and
    resumes when ``resume`` is asked and its folder has a checkpoint (one the interrupted run never reached starts
    afresh)."""
    runs = []
    for member in range(members):
        for fold in range(cfg.data.folds):
            fold_cfg = cfg.model_copy(deep=True)
            fold_cfg.data.fold = fold
            fold_cfg.train.seed = cfg.train.seed + member
            fold_cfg.name = f"{cfg.name}-{member_name(fold, member)}"
            folder = Path(out) / member_name(fold, member)
            runs.append(FoldRun(fold_cfg, folder, resume and (folder / CHECKPOINT).exists(), fold, member))
    return runs


def cross_validate(cfg: RunConfig, out: Path, *, resume: bool, train_fold: Callable[[FoldRun], dict],
                   members: int = 1) -> tuple[list[dict], list[Path]]:
    """Train every fold's ``members`` in turn (:func:`fold_runs`' order) with the task's ``train_fold`` (which
    returns the member's metrics).

    Returns:
        ``(the members' metrics, their run folders)``, in :func:`fold_runs`' order.
    """
    runs = fold_runs(cfg, out, resume, members)
    return [train_fold(run) for run in runs], [run.folder for run in runs]


def fold_owners(val_cases: Sequence[Sequence[str]]) -> dict[str, int]:
    """``{case id: the fold that validated it}``: the one fold model that never trained on the case.

    Raises:
        MedsightError: a case validated by two folds (its out-of-fold prediction would not be unique).
    """
    owners: dict[str, int] = {}
    for fold, cases in enumerate(val_cases):
        for case in cases:
            if owners.setdefault(case, fold) != fold:
                raise MedsightError(f"fold{fold}", f"validated case {case!r}, which fold{owners[case]} validated too",
                                    "train the folds of one cross-validation with one config and seed")
    return owners


def out_of_fold(val_cases: Sequence[Sequence[str]], member_for: Callable[[int, str], Member]) -> dict[str, Member]:
    """``{case id: member_for(fold, case id)}`` for the fold that validated each case: whatever the task
    predicts a case with out of fold (a model, or the probabilities the fold kept)."""
    return {case: member_for(fold, case) for case, fold in fold_owners(val_cases).items()}


def threshold_out_of_fold(
    cases: Callable[[], Iterable[tuple[str, Case]]],
    members: Mapping[str, Member],
    predict: Callable[[Member, Case], Prediction],
    choose: Callable[[Callable[[], Iterator[Prediction]], str], Choice],
) -> Choice:
    """The task's operating threshold, chosen on out-of-fold predictions only.

    ``cases()`` yields ``(case id, case)``; each case is predicted by its own out-of-fold member
    (``predict(members[case id], case)``), so none by a model that trained on it. ``choose`` gets a
    function that yields those predictions afresh (it may pass over them twice) and a description
    of them for the threshold's note, and returns whatever the task keeps (e.g. thresholds and note).

    Raises:
        MedsightError: a case without an out-of-fold member.
    """

    def predictions() -> Iterator[Prediction]:
        for case_id, case in cases():
            if case_id not in members:
                raise MedsightError(case_id, "has no fold that validated it",
                                    "choose the threshold on the cases the folds validated")
            yield predict(members[case_id], case)

    return choose(predictions, f"the out-of-fold predictions on {len(members)} cases")


def summarise_folds(fold_metrics: list[dict], title: str, keys: Sequence[str],
                    distance_keys: Sequence[str] = ()) -> dict:
    """Mean, standard deviation (n - 1) and per-fold values of each metric in ``keys``.

    Folds where a metric is undefined (NaN/None) are left out of its mean and sd; a metric defined
    in fewer than two folds has sd NaN. Folds that give a ``distance_unit`` pass it on; when they
    measured in different units (``mixed``) the ``distance_keys`` get no mean or sd.

    Returns:
        ``{"title", "folds", "n_per_fold", "metrics": {key: {"mean", "sd", "per_fold"}}}`` (with
        ``distance_unit`` when known) plus a flat ``key: mean`` for each metric.

    Raises:
        DatasetError: an empty fold list.
    """
    if not fold_metrics:
        raise DatasetError("fold_metrics", "is empty", "pass the metrics dict returned for each fold")
    summary: dict[str, Any] = {"title": title, "folds": len(fold_metrics),
                               "n_per_fold": [fold.get("n") for fold in fold_metrics], "metrics": {}}
    units = {fold["distance_unit"] for fold in fold_metrics if fold.get("distance_unit")}
    if units:
        summary["distance_unit"] = units.pop() if len(units) == 1 else "mixed"
    for key in keys:
        values = [math.nan if fold.get(key) is None else float(fold[key]) for fold in fold_metrics]
        pooled = not (key in distance_keys and summary.get("distance_unit") == "mixed")  # no mean of px and mm
        defined = np.array([v for v in values if not math.isnan(v)] if pooled else [])
        mean = float(defined.mean()) if defined.size else math.nan
        sd = float(defined.std(ddof=1)) if defined.size > 1 else math.nan
        summary["metrics"][key] = {"mean": mean, "sd": sd, "per_fold": values}
        summary[key] = mean
    return summary


def ensemble_model(members: list[Bundle], flips: Sequence[Sequence[int]] = ()) -> ModelConfig:
    """The fold ensemble's model: ``fold_ensemble`` of the members' network, settings and head, averaged
    also over the flipped views ``flips`` (test-time augmentation; none: the kwargs have no ``flips``)."""
    first = members[0]
    views = {"flips": [list(axes) for axes in flips]} if flips else {}
    return ModelConfig(name=FOLD_ENSEMBLE, head=first.model.head, kwargs={
        "member": first.model.name, "members": len(members), "member_kwargs": first.model.kwargs, **views})


def member_weights(members: list[Bundle]) -> dict[str, Any]:
    """The members' weights in one state dict, member k's under ``members.{k}.``."""
    return {f"members.{k}.{key}": value for k, member in enumerate(members) for key, value in member.state_dict.items()}


def fold_records(members: list[Bundle], val_cases: Sequence[Sequence[str]], score: str,
                 runs: Sequence[FoldRun] | None = None) -> list[dict[str, Any]]:
    """What the ensemble's provenance keeps of each member: its fold, its validation cases, its validation
    ``score`` (a metric key of the member bundle) and when it stopped; with the members' ``runs`` (several
    members per fold), also its ``member`` number within the fold and its ``seed``."""
    return [{"fold": k if runs is None else runs[k].fold,
             **({} if runs is None else {"member": runs[k].member, "seed": runs[k].config.train.seed}),
             "val": list(cases), score: member.metrics.get(score),
             **{key: member.provenance.get(key) for key in ("best_epoch", "epochs_run", "train_seconds")}}
            for k, (member, cases) in enumerate(zip(members, val_cases, strict=True))]


def check_members_agree(members: list[Bundle], folders: list[Path], shared: Callable[[Bundle], Any]) -> None:
    """The members can share one input: ``shared(member)`` (the task's settings) is the same for all.

    Raises:
        MedsightError: a fold trained with other settings than the first, named by its folder.
    """
    for folder, member in zip(folders[1:], members[1:], strict=True):
        if shared(member) != shared(members[0]):
            raise MedsightError(
                folder / "model", f"was trained with other network, preprocessing or plan settings than {folders[0]}",
                "train every fold with the same config (then --resume to build the ensemble)",
            )
