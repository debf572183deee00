"""The classification workflow end to end, on small synthetic phantoms."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medsight.bundle import load_bundle
from medsight.config import load_config
from medsight.errors import DatasetError
from medsight.workflows.evaluate import run_evaluation
from medsight.workflows.train import run_training


def test_run_folder_has_everything(trained_run: Path) -> None:
    for name in ("config.yaml", "metrics.csv", "metrics.json", "per_case.csv", "report.html"):
        assert (trained_run / name).is_file(), name
    assert (trained_run / "checkpoints" / "last.safetensors").is_file()
    assert any((trained_run / "tensorboard").iterdir())
    with (trained_run / "metrics.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]
    bundle = load_bundle(trained_run / "model")
    assert bundle.label_names == ["normal", "nodule"]
    assert 0.0 < bundle.threshold < 1.0
    assert "Youden" in bundle.provenance["threshold_note"]


def test_evaluate_reproduces_the_training_report(trained_run: Path, small_phantoms: Path, tmp_path: Path) -> None:
    at_training = json.loads((trained_run / "metrics.json").read_text())
    again = run_evaluation(
        bundle=trained_run / "model", data=str(small_phantoms), split="test", out=tmp_path, progress=False
    )
    assert at_training["split"] == "test"
    assert again["n"] == at_training["n"]
    for key in ("accuracy", "auc", "sensitivity", "specificity", "threshold"):
        assert again[key] == pytest.approx(at_training[key], abs=1e-9)


def test_offline_prediction_equals_evaluation_probability(trained_run: Path) -> None:
    from medsight.inference.predictor import Predictor

    predictor = Predictor(trained_run / "model")
    with (trained_run / "per_case.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows[:3]:
        result = predictor.predict_file(row["case_id"])
        assert result["probabilities"]["nodule"] == pytest.approx(float(row["prob_nodule"]), abs=1e-5)
        assert result["label"] == row["predicted_label"]


def test_evaluate_unknown_split_lists_the_choices(trained_run: Path, small_phantoms: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="holdout") as info:
        run_evaluation(bundle=trained_run / "model", data=str(small_phantoms), split="holdout", out=tmp_path)
    assert "test" in str(info.value)


def test_kfold_writes_an_aggregate(small_phantoms: Path, tmp_path: Path) -> None:
    cfg = load_config(
        recipe="demo",
        overrides={
            "data.path": str(small_phantoms),
            "data.folds": 2,
            "preprocess.size": [32, 32],
            "train.epochs": 1,
            "eval.bootstrap": 50,
        },
    )
    run_training(cfg, out=tmp_path, progress=False)
    summary = json.loads((tmp_path / "cv_metrics.json").read_text())
    assert (tmp_path / "fold0" / "model" / "bundle.json").is_file()
    assert (tmp_path / "fold1" / "model" / "bundle.json").is_file()
    assert (tmp_path / "cv_report.html").is_file()
    text = json.dumps(summary)
    assert "accuracy" in text and "auc" in text


def test_a_resumed_cross_validation_continues_started_folds_and_starts_the_rest(
    small_phantoms: Path, tmp_path: Path
) -> None:
    """A CV stopped before its last fold: ``--resume`` with more epochs goes on with fold 0 from its
    checkpoint and trains fold 1 from the start (it used to fail: fold 1 had no checkpoint)."""
    import shutil

    overrides = {"data.path": str(small_phantoms), "data.folds": 2, "preprocess.size": [32, 32],
                 "train.epochs": 1, "eval.bootstrap": 0}
    run_training(load_config(recipe="demo", overrides=overrides), out=tmp_path, progress=False)
    shutil.rmtree(tmp_path / "fold1")
    (tmp_path / "cv_metrics.json").unlink()
    run_training(load_config(recipe="demo", overrides={**overrides, "train.epochs": 2}), out=tmp_path,
                 resume=True, progress=False)
    for fold in ("fold0", "fold1"):
        with (tmp_path / fold / "metrics.csv").open() as handle:
            assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"], fold
    assert json.loads((tmp_path / "cv_metrics.json").read_text())


def test_a_given_fold_trains_alone_on_the_cv_folds_split(small_phantoms: Path, tmp_path: Path) -> None:
    """`data.fold=1` with `data.folds=2`: one run in the folder itself (no fold folders), whose val cases
    are fold 1's of the 2-fold split, disjoint from fold 0's."""
    from medsight.classification.split import bundle_split

    overrides = {"data.path": str(small_phantoms), "data.folds": 2, "preprocess.size": [32, 32],
                 "train.epochs": 1, "eval.bootstrap": 0}
    run_training(load_config(recipe="demo", overrides={**overrides, "data.fold": 1}), out=tmp_path, progress=False)
    assert not (tmp_path / "fold0").exists() and not (tmp_path / "cv_metrics.json").exists()
    model = load_bundle(tmp_path / "model")
    assert model.data.config.fold == 1
    _, _, val = bundle_split(model, small_phantoms, "val")
    model.data.config.fold = 0
    _, _, other = bundle_split(model, small_phantoms, "val")
    assert len(val) and len(other) and set(val.tolist()).isdisjoint(other.tolist())


def test_same_seed_same_weights(small_phantoms: Path, tmp_path: Path) -> None:
    overrides = {"data.path": str(small_phantoms), "preprocess.size": [32, 32], "train.epochs": 1, "eval.bootstrap": 0}
    for name in ("a", "b"):
        run_training(load_config(recipe="demo", overrides=overrides), out=tmp_path / name, progress=False)
    first = load_bundle(tmp_path / "a" / "model").state_dict
    second = load_bundle(tmp_path / "b" / "model").state_dict
    assert all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)


def test_trains_on_a_folder_of_dicom_files(tmp_path: Path) -> None:
    from medsight.data.phantoms import make_chest_phantoms

    data = make_chest_phantoms(tmp_path / "dicom", n_per_class=20, size=32, seed=3, fmt="dcm")
    assert sorted(p.suffix for p in (data / "nodule").iterdir())[0] == ".dcm"
    cfg = load_config(
        recipe="demo",
        overrides={"data.path": str(data), "preprocess.size": [32, 32], "train.epochs": 1, "eval.bootstrap": 0},
    )
    run_training(cfg, out=tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["split"] == "test"
    assert load_bundle(tmp_path / "run" / "model").label_names == ["normal", "nodule"]
