"""Evaluating and predicting with a classification fold ensemble: its probabilities are the members' mean,
calibrated by the ensemble's own temperature, and its labels follow the ensemble's own threshold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from class_ensemble import THRESHOLD, class_ensemble, member_probabilities, prepared, write_squares
from typer.testing import CliRunner

from medsight.bundle import load_bundle
from medsight.cli.main import app
from medsight.inference.predictor import Predictor

#: float32 networks against the same sums in float64: a few float32 steps (~1e-7 each); the CSVs keep 6 decimals
ATOL = 1e-5


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return class_ensemble(tmp_path_factory)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    """12 pictures the members never saw (another seed)."""
    return write_squares(tmp_path_factory.mktemp("held_out") / "data", n_per_class=6, seed=7)


def _by_hand(built, files: list[Path]) -> np.ndarray:
    return member_probabilities(built.members, prepared(files, load_bundle(built.bundle).preprocess))


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as handle:
        return {Path(row.get("case_id") or row["path"]).name: row for row in csv.DictReader(handle)}


def test_the_predictor_gives_the_members_mean_at_the_ensembles_temperature(built, held_out: Path) -> None:
    files = sorted(held_out.rglob("*.png"))
    predictor = Predictor(built.bundle, backend="torch")
    by_hand = _by_hand(built, files)
    got = np.array([list(predictor.predict_file(path)["probabilities"].values()) for path in files])
    np.testing.assert_allclose(got, by_hand, atol=ATOL)
    labels = [predictor.predict_file(path)["label"] for path in files]
    assert labels == ["nodule" if p >= THRESHOLD else "normal" for p in by_hand[:, 1]]
    assert labels == [path.parent.name for path in files]  # a square is a nodule: the ensemble learnt it


def test_predict_writes_the_ensembles_probabilities(built, held_out: Path, tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["predict", str(built.bundle), str(held_out), "--out", str(tmp_path / "p.csv"),
                                    "--no-progress"])
    assert done.exit_code == 0, done.output
    rows = _rows(tmp_path / "p.csv")
    files = sorted(held_out.rglob("*.png"))
    by_hand = _by_hand(built, files)
    got = np.array([[float(rows[f.name]["prob_normal"]), float(rows[f.name]["prob_nodule"])] for f in files])
    np.testing.assert_allclose(got, by_hand, atol=ATOL)
    assert {row["threshold"] for row in rows.values()} == {str(THRESHOLD)}


def test_evaluate_scores_every_held_out_case_with_the_ensemble(built, held_out: Path, tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["evaluate", str(built.bundle), "--data", str(held_out), "--out",
                                    str(tmp_path / "ev"), "--no-progress"])
    assert done.exit_code == 0, done.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["threshold"] == THRESHOLD and metrics["temperature"] == pytest.approx(1.7)
    rows = _rows(tmp_path / "ev" / "per_case.csv")
    files = sorted(held_out.rglob("*.png"))
    by_hand = _by_hand(built, files)
    got = np.array([float(rows[f.name]["prob_nodule"]) for f in files])
    np.testing.assert_allclose(got, by_hand[:, 1], atol=ATOL)
    assert [rows[f.name]["predicted_label"] for f in files] == \
        ["nodule" if p >= THRESHOLD else "normal" for p in by_hand[:, 1]]
