"""Several seeded members per fold (``train.members_per_fold``, issue 33): a 2-fold x 2-member cross-validation of
60 16-px phantoms (1 epoch each): the members' folders and seeds, the out-of-fold probabilities as the mean of the
fold's members' kept predictions, the ensemble of all four, resume training only what is missing, and the clear
refusals."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medsight.bundle import load_bundle
from medsight.classification.tta import VAL_LOGITS, KeptLogits
from medsight.config import load_config
from medsight.data.phantoms import make_chest_phantoms
from medsight.errors import ConfigError, MedsightError
from medsight.workflows.train import run_training

FOLDS, MEMBERS, SEED = 2, 2, 3
#: the folders in training order: every fold's member 0 (the plain layout), then every fold's member 1
FOLDERS = ["fold0", "fold1", "fold0-member1", "fold1-member1"]
# float32 log-sum-exp of logits of size ~10 (a few ulps each), then 6 decimals in per_case.csv
TOL = 64 * float(np.finfo(np.float32).eps) + 5e-7


def _config(data: Path, **overrides):
    return load_config(recipe="demo", overrides={
        "data.path": str(data), "data.folds": FOLDS, "data.test_fraction": 0.1, "preprocess.size": [16, 16],
        "train.epochs": 1, "train.seed": SEED, "train.members_per_fold": MEMBERS, "eval.bootstrap": 0,
        "eval.tta": "flips", **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chest_phantoms(tmp_path_factory.mktemp("phantoms"), n_per_class=30, size=16, seed=4)


@pytest.fixture(scope="module")
def cv(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("members")
    return out, run_training(_config(data), out=out, progress=False)


def test_each_fold_trains_its_members_with_consecutive_seeds_in_their_own_folders(cv) -> None:
    out, text = cv
    assert sorted(p.name for p in out.glob("fold*")) == sorted(FOLDERS)
    seeds = [load_config(out / name / "config.yaml").train.seed for name in FOLDERS]
    assert seeds == [SEED, SEED, SEED + 1, SEED + 1]
    folds = [load_config(out / name / "config.yaml").data.fold for name in FOLDERS]
    assert folds == [0, 1, 0, 1]
    for k in range(FOLDS):  # the members of a fold validated the same cases
        assert KeptLogits.load(out / f"fold{k}" / VAL_LOGITS).ids == KeptLogits.load(
            out / f"fold{k}-member1" / VAL_LOGITS).ids
    assert f"out-of-fold ({FOLDS} folds x {MEMBERS} members, n=" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["extra"]["folds"], metrics["extra"]["members per fold"]) == (FOLDS, MEMBERS)
    assert f"{FOLDS} folds x {MEMBERS} member(s)" in metrics["title"]
    cv_metrics = json.loads((out / "cv_metrics.json").read_text())  # the per-fold table: member 0 of each fold
    assert cv_metrics["folds"] == FOLDS and "member 0 of each fold" in cv_metrics["title"]


def test_the_ensemble_holds_every_member_with_its_fold_and_seed(cv) -> None:
    out, _ = cv
    bundle = load_bundle(out / "model")
    assert bundle.model.name == "fold_ensemble" and bundle.model.kwargs["members"] == FOLDS * MEMBERS
    for i, name in enumerate(FOLDERS):
        for key, value in load_bundle(out / name / "model").state_dict.items():
            assert torch.equal(bundle.state_dict[f"members.{i}.{key}"], value)
    records = bundle.provenance["folds"]
    assert [(r["fold"], r["member"], r["seed"]) for r in records] == [
        (0, 0, SEED), (1, 0, SEED), (0, 1, SEED + 1), (1, 1, SEED + 1)]
    assert records[0]["val"] == records[2]["val"] == KeptLogits.load(out / "fold0" / VAL_LOGITS).ids
    assert bundle.provenance["members_per_fold"] == MEMBERS
    net, flips = bundle.build_model(), bundle.model.kwargs.get("flips", [])
    assert flips == [[-1]]  # eval.tta: flips
    x = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        views = [x, torch.flip(x, [-1])]
        expected = torch.stack([torch.softmax(m(v).double(), 1) for v in views for m in net.members]).mean(0)
        assert torch.allclose(torch.softmax(net(x).double(), 1), expected, atol=TOL, rtol=0)
    assert bundle.domain is not None and bundle.domain.features.member == 0  # member 0: fold 0, seed SEED


def test_out_of_fold_probabilities_are_the_mean_of_the_folds_members(cv) -> None:
    """Recomputed here from the members' val_logits.npz: the mean softmax over the fold's two members and the
    two views, then the ensemble's temperature, equals per_case.csv's probabilities."""
    out, _ = cv
    bundle = load_bundle(out / "model")
    expected: dict[str, np.ndarray] = {}
    for k in range(FOLDS):
        kept = [KeptLogits.load(out / name / VAL_LOGITS) for name in (f"fold{k}", f"fold{k}-member1")]
        probs = [torch.softmax(torch.from_numpy(m.view(v)).double(), 1).numpy() for m in kept for v in ([], [-1])]
        mean = np.mean(probs, axis=0)
        if bundle.temperature is not None:
            mean = torch.softmax(torch.log(torch.from_numpy(mean)) / bundle.temperature, 1).numpy()
        expected.update(zip(kept[0].ids, mean, strict=True))
    with (out / "per_case.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["case_id"] for row in rows} == set(expected)
    got = np.array([[float(row["prob_normal"]), float(row["prob_nodule"])] for row in rows])
    want = np.array([expected[row["case_id"]] for row in rows])
    assert np.abs(got - want).max() <= TOL


def test_resume_trains_only_the_members_that_are_missing(cv, data: Path, tmp_path: Path, monkeypatch) -> None:
    """Interrupted: fold1-member1 never started, fold0-member1 finished training but not its bundle. The resume
    trains fold1-member1 afresh, trains no epoch of the others (their checkpoints stay byte for byte) and
    rebuilds the same ensemble (the seeds repeat the lost member)."""
    import medsight.workflows.train as workflow

    out, _ = cv
    copy = shutil.copytree(out, tmp_path / "run")
    shutil.rmtree(copy / "fold1-member1")
    shutil.rmtree(copy / "fold0-member1" / "model")
    shutil.rmtree(copy / "model")
    checkpoints = {name: _digest(copy / name / "checkpoints" / "last.safetensors") for name in FOLDERS[:3]}
    calls, real = [], workflow.train_classifier

    def spy(cfg, ds, *, out, resume, **kwargs):
        calls.append((out.name, resume))
        return real(cfg, ds, out=out, resume=resume, **kwargs)

    monkeypatch.setattr(workflow, "train_classifier", spy)
    run_training(_config(data), out=copy, resume=True, progress=False)
    assert calls == [("fold0", True), ("fold1", True), ("fold0-member1", True), ("fold1-member1", False)]
    assert {name: _digest(copy / name / "checkpoints" / "last.safetensors") for name in FOLDERS[:3]} == checkpoints
    first, again = load_bundle(out / "model"), load_bundle(copy / "model")
    assert all(torch.equal(first.state_dict[key], again.state_dict[key]) for key in first.state_dict)
    assert (first.threshold, first.temperature) == (again.threshold, again.temperature)


def test_retrain_gives_each_member_its_own_fold(cv) -> None:
    """retrain fine-tunes member by member on the fold its provenance record names (k x n members, k folds)."""
    from medsight.workflows.retrain import _members

    out, _ = cv
    members = _members(load_bundle(out / "model"))
    assert [m.data.config.fold for m in members] == [0, 1, 0, 1]
    for member, name in zip(members, FOLDERS, strict=True):
        own = load_bundle(out / name / "model").state_dict
        assert all(torch.equal(member.state_dict[key], value) for key, value in own.items())


def test_evaluate_recognises_the_members_ensembles_own_data(cv, data: Path) -> None:
    from medsight.workflows.evaluate import default_split, is_training_data

    out, _ = cv
    bundle = load_bundle(out / "model", weights=False)
    assert is_training_data(bundle, data) and default_split(bundle, data)[0] == "test"


def test_the_k_x_n_ensemble_exports_as_one_graph_with_parity(cv, tmp_path: Path) -> None:
    """The exporter's parity check compares the graph with the PyTorch ensemble of all four members."""
    import onnx

    from medsight.export.exporter import PARITY_TOLERANCE, export_bundle
    from medsight.inference.predictor import Predictor

    out, _ = cv
    folder = shutil.copytree(out / "model", tmp_path / "model")
    record = export_bundle(bundle=folder, fmt="onnx", progress=False)
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["model.onnx"] and len(
        onnx.load(str(folder / "model.onnx")).graph.input) == 1
    assert record["parity"]["max_abs_diff"] <= PARITY_TOLERANCE
    assert f"the {FOLDS * MEMBERS} member networks" in " ".join(record["preprocessing"]["in_graph"])
    assert Predictor(folder).backend == "onnx"  # served from the one graph


def test_the_plan_written_for_training_picks_the_members_from_the_measured_seconds(data: Path,
                                                                                   tmp_path: Path) -> None:
    """plan_classification with the step timer mocked: a pass of 5 folds x 60 epochs of 60 tiny images takes a
    fraction of the 10 minutes, so the plan trains the most members, each with its share of the budget."""
    from medsight.workflows.plan import plan_classification

    def timer(name, kwargs, size, channels, batch):
        return 1e-4

    cfg, plan = plan_classification(load_config(overrides={"data.path": str(data)}), tmp_path, time_budget_min=10,
                                    progress=False, seconds_per_image=timer)
    written = json.loads((tmp_path / "plan.json").read_text())
    assert written["members_per_fold"] == plan.members_per_fold == 4 and written["folds"] == 5
    assert written["notes"]["members_per_fold"].startswith("4: ")
    assert cfg.train.members_per_fold == 4 and cfg.train.time_limit_min == round(10 / (5 * 4) * 1.5, 3)
    users = load_config(overrides={"data.path": str(data), "train.members_per_fold": 2})
    mine, _ = plan_classification(users, tmp_path / "mine", time_budget_min=10, progress=False,
                                  seconds_per_image=timer)
    assert mine.train.members_per_fold == 2  # the user's --set wins


def test_members_of_one_fold_that_validated_other_cases_are_refused(tmp_path: Path) -> None:
    from medsight.classification.ensemble import _members_mean
    from medsight.training.folds import fold_runs

    runs = fold_runs(load_config(overrides={"data.folds": 2}), tmp_path, resume=False, members=2)
    logits = np.zeros((1, 2, 2), np.float32)

    def kept(ids: list[str]) -> KeptLogits:
        return KeptLogits(ids, np.array([0, 1]), [[]], logits)

    parts = [kept(["a", "b"]), kept(["c", "d"]), kept(["a", "b"]), kept(["c", "x"])]
    folders = [run.folder for run in runs]
    assert _members_mean(runs, parts, folders, 0, []).ids == ["a", "b"]
    with pytest.raises(MedsightError, match=r"fold1-member1/val_logits.npz: holds other validation cases than "
                                            r".*fold1; train every member of a fold with the run's one config"):
        _members_mean(runs, parts, folders, 1, [])


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"data.folds": 1}, "needs a cross-validation to put the members in (data.folds is 1)"),
    ({"task": "segmentation"}, "seeded members per fold are for classification; a segmentation cross-validation"),
])
def test_members_without_a_classification_cross_validation_are_refused(data: Path, tmp_path: Path, overrides,
                                                                       problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"train.members_per_fold=2: {problem}")) as err:
        run_training(_config(data, **overrides), out=tmp_path / "run", progress=False)
    assert "train.members_per_fold to 1" in str(err.value) or "leave train.members_per_fold at 1" in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
