"""A classification fold ensemble in the registry: registered, listed, promoted and gated like any bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
from class_ensemble import class_ensemble
from typer import Typer
from typer.testing import CliRunner

from medsight.bundle import bundle_hash
from medsight.cli import registry_cmd
from medsight.registry import ModelRegistry


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return class_ensemble(tmp_path_factory)


def test_an_ensemble_is_registered_listed_and_promoted(built, tmp_path: Path) -> None:
    app = Typer()
    app.add_typer(registry_cmd.app, name="registry")
    runner, reg = CliRunner(), str(tmp_path / "reg")
    runner.invoke(app, ["registry", "register", str(built.members[0]), "--registry", reg])
    done = runner.invoke(app, ["registry", "register", str(built.bundle), "--registry", reg, "--parent", "1"])
    assert done.exit_code == 0 and "version 2 (candidate)" in done.output, done.output
    promoted = runner.invoke(app, ["registry", "promote", "2", "--registry", reg])
    assert promoted.exit_code == 0 and "version 2" in promoted.output
    listed = runner.invoke(app, ["registry", "list", "--registry", reg]).output.splitlines()
    assert listed[1].split()[:3] == ["2", "production", "parent=1"] and "oof_auc=0.5000" in listed[1]
    registry = ModelRegistry(reg)
    record = registry.production()
    assert record["model"] == "fold_ensemble" and record["task"] == "classification"
    assert record["hash"] == bundle_hash(built.bundle) != bundle_hash(built.members[0])  # the weights hashed
    assert (registry.production_bundle() / "weights.safetensors").read_bytes() == \
        (built.bundle / "weights.safetensors").read_bytes()


def test_the_gate_scores_an_ensemble_against_a_single_model(built) -> None:
    from medsight.registry.gate import compare_bundles

    gate = compare_bundles(built.bundle, built.members[0], data=built.data, split="val", n_boot=200, seed=0)
    result = gate.as_dict()
    assert result["metric"] == "AUC" and result["n_cases"] == 10  # fold 0's validation split
    assert result["candidate"] == result["production"] == 1.0  # both rank every square above every plain picture
    assert result["difference"] == 0.0 and gate.passed
