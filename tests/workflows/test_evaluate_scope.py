"""Which cases ``medsight evaluate`` scores when no ``--split`` is given (issue 33, part 4).

External data is scored whole; the model's own training data is scored on its held-out test split; a run
that kept no test split is a clear error on its own data. The summary line says which cases and how many.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.data.phantoms import make_chest_phantoms
from medsight.errors import DatasetError
from medsight.workflows.evaluate import run_evaluation


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 images the model never saw (16 per class), drawn with another seed."""
    return make_chest_phantoms(tmp_path_factory.mktemp("held_out"), n_per_class=16, size=32, seed=7)


def _n_images(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.png"))


def test_external_data_is_scored_whole(trained_run: Path, held_out: Path, tmp_path: Path) -> None:
    """The issue's report: a held-out set of 32 images was scored on 4 (a "test" split carved out of it)."""
    result = CliRunner().invoke(app, ["evaluate", str(trained_run / "model"), "--data", str(held_out),
                                      "--out", str(tmp_path / "ev"), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert _n_images(held_out) == 32 and metrics["n"] == 32 and metrics["split"] == "all"
    assert f"scored 32 cases of {held_out}: every case (the data is not the model's training data)" in result.output
    assert metrics["extra"]["cases scored"] == "every case (the data is not the model's training data)"


def test_the_training_data_is_scored_on_its_held_out_test_split(trained_run: Path, small_phantoms: Path,
                                                                tmp_path: Path) -> None:
    at_training = json.loads((trained_run / "metrics.json").read_text())
    metrics = run_evaluation(bundle=trained_run / "model", data=str(small_phantoms), out=tmp_path, progress=False)
    assert metrics["split"] == "test" and at_training["split"] == "test"
    assert 0 < metrics["n"] == at_training["n"] < _n_images(small_phantoms)
    assert metrics["auc"] == pytest.approx(at_training["auc"], abs=1e-12)
    assert metrics["scored"] == (f"scored {metrics['n']} cases of {small_phantoms}: "
                                 "the held-out test split of the model's training data")


def test_the_training_data_without_a_test_split_is_a_clear_error(trained_run: Path, small_phantoms: Path,
                                                                 tmp_path: Path) -> None:
    """A run that kept no test split (``data.test_fraction: 0``): scoring its own data by default would
    score cases that chose the weights, the epoch or the threshold; say so instead, and write nothing."""
    model = tmp_path / "model"
    shutil.copytree(trained_run / "model", model)
    manifest = json.loads((model / "bundle.json").read_text())
    manifest["provenance"]["data_config"]["test_fraction"] = 0.0
    (model / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="is the data the model was trained on, and its run kept no held-out "
                                           "test split") as info:
        run_evaluation(bundle=model, data=str(small_phantoms), out=tmp_path / "ev", progress=False)
    assert "--split val or --split all" in str(info.value)
    assert not (tmp_path / "ev").exists()
    metrics = run_evaluation(bundle=model, data=str(small_phantoms), split="all", out=tmp_path / "all",
                             progress=False)
    assert metrics["n"] == _n_images(small_phantoms)  # --split still works as before


def test_a_rebuilt_training_split_counts_as_the_training_data(trained_run: Path, small_phantoms: Path) -> None:
    """The same files and labels under another spelling of the folder are still the training data."""
    from medsight.bundle import load_bundle
    from medsight.workflows.evaluate import is_training_data

    bundle = load_bundle(trained_run / "model")
    bundle.data.path = "/somewhere/else"  # as if trained from another working directory
    assert is_training_data(bundle, small_phantoms)
    assert not is_training_data(bundle, make_chest_phantoms(Path(str(small_phantoms) + "_other"), n_per_class=40,
                                                            size=32, seed=2))
