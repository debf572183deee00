"""The task-neutral fold machinery (training/folds.py), driven by a tiny fake task: no network.

The fake task's "model" of fold k scores a case by its number plus k / 100; a case is positive when
its number is 3 or more, and the threshold is the score that best separates the classes.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from medsight.config import ModelConfig, load_config
from medsight.errors import DatasetError, MedsightError
from medsight.runtime.checkpoint import CHECKPOINT
from medsight.training.folds import (
    check_members_agree,
    cross_validate,
    ensemble_model,
    fold_owners,
    fold_records,
    fold_runs,
    member_weights,
    out_of_fold,
    summarise_folds,
    threshold_out_of_fold,
)

CASES = {f"case{n}": n for n in range(6)}  # case id -> its number
VAL = [["case0", "case3", "case5"], ["case1", "case2", "case4"]]  # what fold 0 and fold 1 validated


def test_fold_runs_give_each_fold_its_config_folder_and_resume(tmp_path: Path) -> None:
    cfg = load_config(overrides={"name": "cv", "data.folds": 3})
    (tmp_path / "fold1" / CHECKPOINT).parent.mkdir(parents=True)
    (tmp_path / "fold1" / CHECKPOINT).write_bytes(b"")
    runs = fold_runs(cfg, tmp_path, resume=True)
    assert [(r.config.name, r.config.data.fold, r.folder.name, r.resume) for r in runs] == [
        ("cv-fold0", 0, "fold0", False), ("cv-fold1", 1, "fold1", True), ("cv-fold2", 2, "fold2", False)]
    assert cfg.data.fold is None and cfg.name == "cv"  # the run's own config is left alone
    assert not any(r.resume for r in fold_runs(cfg, tmp_path, resume=False))


def test_members_per_fold_train_pass_by_pass_with_offset_seeds_in_their_own_folders(tmp_path: Path) -> None:
    cfg = load_config(overrides={"name": "cv", "data.folds": 2, "train.seed": 5})
    (tmp_path / "fold1-member1" / CHECKPOINT).parent.mkdir(parents=True)
    (tmp_path / "fold1-member1" / CHECKPOINT).write_bytes(b"")
    runs = fold_runs(cfg, tmp_path, resume=True, members=3)
    assert [(r.config.name, r.config.data.fold, r.config.train.seed, r.folder.name, r.resume, r.fold, r.member)
            for r in runs] == [
        ("cv-fold0", 0, 5, "fold0", False, 0, 0), ("cv-fold1", 1, 5, "fold1", False, 1, 0),
        ("cv-fold0-member1", 0, 6, "fold0-member1", False, 0, 1),
        ("cv-fold1-member1", 1, 6, "fold1-member1", True, 1, 1),
        ("cv-fold0-member2", 0, 7, "fold0-member2", False, 0, 2),
        ("cv-fold1-member2", 1, 7, "fold1-member2", False, 1, 2)]
    assert cfg.train.seed == 5  # the run's own config is left alone
    one = fold_runs(cfg, tmp_path, resume=False)  # one member per fold: the plain layout
    assert [(r.folder.name, r.config.train.seed, r.member) for r in one] == [("fold0", 5, 0), ("fold1", 5, 0)]
    members = [_member(float(k), 0.5 + k / 10) for k in range(6)]
    records = fold_records(members, [VAL[r.fold] for r in runs], "val_score", runs)
    assert [(r["fold"], r["member"], r["seed"], r["val"]) for r in records[1:3]] == [(1, 0, 5, VAL[1]),
                                                                                     (0, 1, 6, VAL[0])]
    _, folders = cross_validate(cfg, tmp_path, resume=False, train_fold=lambda run: {}, members=2)
    assert [f.name for f in folders] == ["fold0", "fold1", "fold0-member1", "fold1-member1"]


def test_cross_validate_trains_every_fold_with_the_tasks_function(tmp_path: Path) -> None:
    cfg = load_config(overrides={"data.folds": 2})
    trained = []

    def train_fold(run):
        trained.append(run.config.data.fold)
        return {"n": 3, "accuracy": 0.5 + 0.25 * run.config.data.fold}

    metrics, folders = cross_validate(cfg, tmp_path, resume=False, train_fold=train_fold)
    assert trained == [0, 1]
    assert [m["accuracy"] for m in metrics] == [0.5, 0.75]
    assert folders == [tmp_path / "fold0", tmp_path / "fold1"]


def test_each_case_is_predicted_by_the_one_fold_that_did_not_train_on_it() -> None:
    assert fold_owners(VAL) == {"case0": 0, "case3": 0, "case5": 0, "case1": 1, "case2": 1, "case4": 1}
    members = out_of_fold(VAL, lambda fold, case: (fold, case))
    assert members["case4"] == (1, "case4") and len(members) == 6
    with pytest.raises(MedsightError, match=r"fold1: validated case 'case3', which fold0 validated too"):
        fold_owners([["case3"], ["case3"]])


def test_the_threshold_is_chosen_on_the_out_of_fold_predictions_only() -> None:
    def model(fold):  # fold k scores a case by its number + k / 100
        return lambda number: number + fold / 100

    members = out_of_fold(VAL, lambda fold, case: model(fold))
    seen = []

    def choose(predictions, what):  # the fake task: the midpoint between the classes, passing twice
        scores = list(predictions())
        assert scores == list(predictions())
        seen.append(what)
        negatives = [s for s, positive in scores if not positive]
        positives = [s for s, positive in scores if positive]
        return (max(negatives) + min(positives)) / 2

    def cases():
        return ((case, number) for case, number in CASES.items())

    threshold = threshold_out_of_fold(cases, members, lambda m, number: (m(number), number >= 3), choose)
    # negatives 0 (fold 0: 0.00), 1 (fold 1: 1.01), 2 (fold 1: 2.01); positives 3 (fold 0: 3.00), 4, 5
    assert threshold == pytest.approx((2.01 + 3.00) / 2)
    assert seen == ["the out-of-fold predictions on 6 cases"]
    with pytest.raises(MedsightError, match="case9: has no fold that validated it"):
        threshold_out_of_fold(lambda: [("case9", 9)], members, lambda m, n: (m(n), True), choose)


def test_fold_metrics_are_summarised_as_mean_sd_and_per_fold() -> None:
    folds = [{"n": 3, "auc": 0.8, "hd95": 2.0, "distance_unit": "px"},
             {"n": 3, "auc": 0.9, "hd95": 4.0, "distance_unit": "px"}, {"n": 2, "auc": None, "hd95": 3.0}]
    summary = summarise_folds(folds, "fake", keys=("auc", "hd95"), distance_keys=("hd95",))
    assert summary["auc"] == pytest.approx(0.85)
    assert summary["metrics"]["auc"]["sd"] == pytest.approx(0.1 / math.sqrt(2))
    assert math.isnan(summary["metrics"]["auc"]["per_fold"][2])
    assert summary["hd95"] == 3.0 and summary["distance_unit"] == "px" and summary["n_per_fold"] == [3, 3, 2]
    folds[1]["distance_unit"] = "mm"
    mixed = summarise_folds(folds, "fake", keys=("hd95",), distance_keys=("hd95",))
    assert mixed["distance_unit"] == "mixed" and math.isnan(mixed["hd95"])  # no mean of px and mm
    with pytest.raises(DatasetError, match="fold_metrics: is empty"):
        summarise_folds([], "none", keys=("auc",))


def _member(weight: float, val_score: float, name: str = "fake") -> SimpleNamespace:
    return SimpleNamespace(model=ModelConfig(name=name, kwargs={"width": 2}), state_dict={"w": weight},
                           metrics={"val_score": val_score}, provenance={"best_epoch": 2, "epochs_run": 3})


def test_the_ensemble_keeps_each_members_weights_model_and_fold_record(tmp_path: Path) -> None:
    members = [_member(1.0, 0.7), _member(2.0, 0.8)]
    assert member_weights(members) == {"members.0.w": 1.0, "members.1.w": 2.0}
    model = ensemble_model(members)
    assert model.name == "fold_ensemble" and model.kwargs == {"member": "fake", "members": 2,
                                                              "member_kwargs": {"width": 2}}
    records = fold_records(members, VAL, "val_score")
    assert records[1] == {"fold": 1, "val": VAL[1], "val_score": 0.8, "best_epoch": 2, "epochs_run": 3,
                          "train_seconds": None}
    folders = [tmp_path / "fold0", tmp_path / "fold1"]
    check_members_agree(members, folders, lambda m: m.model.name)
    with pytest.raises(MedsightError, match=r"fold1/model: was trained with other .* settings than .*fold0"):
        check_members_agree([members[0], _member(2.0, 0.8, name="other")], folders, lambda m: m.model.name)
