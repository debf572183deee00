"""``medsight triage train`` and ``medsight triage evaluate`` on a tiny trained bundle, and their clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medsight.cli import triage_cmd

runner = CliRunner()
app = typer.Typer()
app.add_typer(triage_cmd.app, name="triage")


@pytest.fixture(scope="module")
def triaged(trained_run: Path, small_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's trained bundle with a triage policy trained on its val split."""
    bundle = shutil.copytree(trained_run / "model", tmp_path_factory.mktemp("triage") / "model")
    result = runner.invoke(app, ["triage", "train", str(bundle), "--data", str(small_phantoms), "--no-progress",
                                 "--missed-finding", "8", "--epochs", "10"])
    assert result.exit_code == 0, result.output
    assert "trained on 12 val cases (6 positive), 10 epochs" in result.output
    return bundle


def test_train_saves_a_policy_bound_to_the_model(triaged: Path) -> None:
    from medsight.triage.policy import load_policy, model_hash

    record = json.loads((triaged / "triage" / "triage.json").read_text())
    assert record["model_hash"] == model_hash(triaged)
    assert record["costs"] == {"missed_finding": 8.0, "false_alarm": 1.0, "radiologist_time": 0.5}
    assert record["actions"] == ["report_negative", "report_positive", "refer"]
    assert record["state_features"] == ["p_finding", "uncertainty", "embedding_norm", "embedding_pc1"]
    assert record["training"]["cases"] == 12 and len(record["training"]["mean_reward_per_epoch"]) == 10
    policy = load_policy(triaged)
    assert policy.version == record["policy_version"] and policy.version.startswith("sha256:")
    assert policy.agent.sizes == (10, 3, 2, 2)
    assert int(policy.agent.cases[0].sum()) == 12  # every val case is one episode


def test_evaluate_reports_the_agent_and_both_baselines(triaged: Path, small_phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = runner.invoke(app, ["triage", "evaluate", str(triaged), "--data", str(small_phantoms), "--split", "test",
                                 "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "triage_metrics.json").read_text())
    assert [row["policy"] for row in metrics["rows"]] == ["agent", "fixed_threshold", "uncertainty_threshold"]
    assert metrics["held_out"] is True and metrics["trained_on"] == "val" and metrics["split"] == "test"
    for row in metrics["rows"]:
        assert row["n"] == 12
        assert row["referrals"] == round(12 * (1 - row["automation_rate"]))
        automated = 12 - row["referrals"]
        assert row["error_rate"] * automated == pytest.approx(row["missed_findings"] + row["false_alarms"])
        assert row["mean_cost"] == pytest.approx(
            (8 * row["missed_findings"] + row["false_alarms"] + 0.5 * row["referrals"]) / 12)
    assert metrics["rows"][1]["automation_rate"] == 1.0  # the fixed threshold automates every case
    assert len(metrics["uncertainty_sweep"]) == 21
    table = (out / "triage_table.md").read_text()
    assert table.count("\n| ") == 3 and "| uncertainty_threshold | 12 |" in table
    assert (out / "triage_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "| agent | 12 |" in result.output


def test_a_policy_for_other_weights_is_refused(triaged: Path, small_phantoms: Path, tmp_path: Path) -> None:
    other = shutil.copytree(triaged, tmp_path / "model")
    manifest = json.loads((other / "bundle.json").read_text())
    manifest["metrics"]["val_auc"] = 0.123  # another model version: a different bundle hash
    (other / "bundle.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["triage", "evaluate", str(other), "--data", str(small_phantoms),
                                 "--out", str(tmp_path / "eval"), "--no-progress"])
    assert result.exit_code == 2
    assert "the triage policy was trained for model sha256:" in result.output
    assert "medsight triage train" in result.output


def test_a_segmentation_bundle_and_negative_costs_are_clear_errors(tmp_path: Path, small_phantoms: Path) -> None:
    import torch

    from medsight.bundle import Bundle
    from medsight.config import ModelConfig, PreprocessConfig
    from medsight.models import create_model

    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2, width=4)
    seg = Bundle(task="segmentation", model=ModelConfig(name="compact_cnn", kwargs={"width": 4}),
                 preprocess=PreprocessConfig(size=[32, 32], channels=1), label_names=["background", "lesion"],
                 state_dict={k: torch.as_tensor(v) for k, v in net.state_dict().items()}).save(tmp_path / "seg")
    result = runner.invoke(app, ["triage", "train", str(seg), "--data", str(small_phantoms), "--no-progress"])
    assert result.exit_code == 2
    assert "is a segmentation bundle" in result.output and "classification bundle" in result.output
    result = runner.invoke(app, ["triage", "train", str(seg), "--data", str(small_phantoms),
                                 "--radiologist-time", "-1"])
    assert result.exit_code == 2 and "costs must be finite and >= 0" in result.output
    result = runner.invoke(app, ["triage", "evaluate", str(tmp_path / "nowhere"), "--data", str(small_phantoms),
                                 "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "no bundle.json here" in result.output
