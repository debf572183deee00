"""``medsight plan`` for classification and ``medsight train`` planning itself when given neither a recipe nor a
config file (issue 33, part 1): plan.json written, the user's flags winning, ``--resume`` and DDP ranks reading
the plan back, ``--recipe none`` keeping the plain defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.config import load_config
from medsight.data.phantoms import make_chest_phantoms
from medsight.errors import ConfigError
from medsight.workflows.plan import plan_for_training, plan_task

#: one quick epoch of one train/validation split, no bootstrap
QUICK = ["--time-budget", "0.2", "--folds", "1", "--set", "train.epochs=1", "--set", "eval.bootstrap=0",
         "--no-progress"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chest_phantoms(tmp_path_factory.mktemp("tiny"), n_per_class=8, size=16, seed=1)


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_plan_command_plans_a_classification_folder(tiny: Path, tmp_path: Path) -> None:
    result = _invoke("plan", str(tiny), "--out", str(tmp_path / "p"), "--time-budget", "0.5", "--no-progress")
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    fingerprint = json.loads((tmp_path / "p" / "fingerprint.json").read_text())
    assert fingerprint["task"] == "classification" and fingerprint["class_counts"] == {"nodule": 8, "normal": 8}
    assert plan["size"] == [16, 16] and plan["normalize"] == "zscore" and plan["time_budget_min"] == 0.5
    assert set(plan["notes"]) >= {"size", "normalize", "channels", "network", "epochs", "folds", "augment"}
    lines = result.output.splitlines()
    assert any(line.startswith("normalize") and "zscore" in line for line in lines)  # one row per decision
    assert lines[-1] == f"wrote {tmp_path / 'p' / 'plan.json'} and {tmp_path / 'p' / 'fingerprint.json'}"


def test_plan_task_tells_classification_from_segmentation(tiny: Path, tmp_path: Path) -> None:
    assert plan_task(tiny) == "classification"
    (tmp_path / "m.csv").write_text("path,label\n")
    assert plan_task(tmp_path / "m.csv") == "classification"
    pairs = tmp_path / "pairs"
    for folder in ("images", "masks"):
        (pairs / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(pairs / folder / "case1.png")
    assert plan_task(pairs) == "segmentation"  # images/ + masks/ would open as two 'classes'
    (tmp_path / "empty").mkdir()
    assert plan_task(tmp_path / "empty") == "segmentation"  # segmentation's reader says what is wrong


def test_train_without_recipe_plans_and_resume_reads_the_plan_back(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _invoke("train", "--data", str(tiny), "--out", str(run), *QUICK)
    assert first.exit_code == 0, first.output
    assert "no recipe or config: the run is planned from the data within 0.2 min" in first.output
    assert f"every decision and why: {run / 'plan.json'}" in first.output
    plan = json.loads((run / "plan.json").read_text())
    assert (run / "fingerprint.json").is_file()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["folds"] == 1 and cfg["train"]["epochs"] == 1  # the user's flags win
    assert cfg["train"]["time_limit_min"] is None  # the budget's safety net goes with the user's epochs
    assert cfg["preprocess"]["normalize"] == plan["normalize"] == "zscore"  # the plan fills in the rest
    assert cfg["model"]["kwargs"] == plan["model_kwargs"] and cfg["augment"]["flip_h"] == plan["augment"]["flip_h"]
    written = (run / "plan.json").read_bytes()

    again = _invoke("train", "--data", str(tiny), "--out", str(run), "--resume", *QUICK)
    assert again.exit_code == 0, again.output
    assert f"planned run: {run / 'plan.json'} read back ({plan['epochs']} epochs, not measured again)" in again.output
    assert (run / "plan.json").read_bytes() == written


def test_recipe_none_keeps_the_plain_defaults(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _invoke("train", "--recipe", "none", "--data", str(tiny), "--out", str(run), "--epochs", "1",
                     "--set", "preprocess.size=[16,16]", "--set", "eval.bootstrap=0", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "planned" not in result.output and not (run / "plan.json").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["preprocess"]["normalize"] == "minmax"


def test_time_budget_without_planning_is_refused(tiny: Path, tmp_path: Path) -> None:
    result = _invoke("train", "--recipe", "demo", "--data", str(tiny), "--out", str(tmp_path / "run"),
                     "--time-budget", "3")
    assert result.exit_code == 2
    assert "--time-budget: sets the budget of a planned classification, but this run is not planned" in result.output
    assert not (tmp_path / "run").exists()


def test_resume_or_a_ddp_rank_without_a_plan_is_a_clear_error(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    result = _invoke("train", "--data", str(tiny), "--out", str(tmp_path / "run"), "--resume", "--no-progress")
    assert result.exit_code == 2
    assert f"{tmp_path / 'run' / 'plan.json'}: is missing" in result.output and "--recipe none" in result.output
    from medsight.cli import train_cmd
    from medsight.runtime import distributed

    monkeypatch.setattr(distributed, "under_torchrun", lambda: True)
    cfg = load_config(overrides={"data.path": str(tiny)})
    with pytest.raises(ConfigError, match="is missing"):
        train_cmd._planned(cfg, tmp_path / "rank", planned=True, time_budget=None, resume=False, progress=False)


def test_a_rank_reads_the_plan_its_launcher_wrote(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = load_config(overrides={"data.path": str(tiny)})
    planned, _ = plan_for_training(cfg, tmp_path, time_budget_min=0.2, progress=False)
    from medsight.cli import train_cmd
    from medsight.runtime import distributed

    monkeypatch.setattr(distributed, "under_torchrun", lambda: True)
    rank = train_cmd._planned(cfg, tmp_path, planned=True, time_budget=None, resume=False, progress=False)
    assert rank == planned
