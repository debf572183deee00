"""``retrain`` end to end on tiny phantoms: fine-tune production on feedback, gate, record, promote or not."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medsight.feedback import FeedbackStore
from medsight.registry import ModelRegistry


@pytest.fixture
def setup(trained_run: Path, small_phantoms: Path, tmp_path: Path) -> tuple[ModelRegistry, Path]:
    reg = ModelRegistry(tmp_path / "registry")
    reg.promote(reg.register(trained_run / "model"))
    store = FeedbackStore(tmp_path / "feedback")
    for label in ("normal", "nodule"):
        for path in sorted((small_phantoms / label).iterdir())[:3]:
            data = path.read_bytes()
            store.add(sha256=hashlib.sha256(data).hexdigest(), input_data=data, input_kind="png", user_id="key-1",
                      model_name="compact_cnn", model_version=reg.get(1)["hash"], kind="label", label=label,
                      prediction={"label": "normal"})
    return reg, tmp_path / "feedback"


def test_retrain_registers_a_gated_candidate(setup, small_phantoms: Path, tmp_path: Path) -> None:
    from medsight.workflows.retrain import retrain

    reg, feedback = setup
    result = retrain(registry=reg.root, feedback=feedback, data=small_phantoms, out=tmp_path / "rt", epochs=1,
                     lr=1e-4, n_boot=200, progress=False)
    record = reg.get(result["version"])
    assert result["version"] == 2 and record["parent"] == 1 and result["parent"] == 1
    gate = record["notes"]["gate"]
    assert gate["metric"] == "AUC" and gate["n_cases"] == 12 and gate["ci_low"] <= gate["difference"] <= gate["ci_high"]
    assert record["notes"]["retrain"]["feedback_cases"] == 6
    assert record["data_hash"] != reg.get(1)["data_hash"]  # the feedback cases are part of its data
    assert reg.production()["version"] == (2 if gate["passed"] else 1)
    assert result["promoted"] is gate["passed"] and "AUC" in result["table"]


def test_a_ruined_candidate_is_rejected_and_production_stays(setup, small_phantoms: Path, tmp_path: Path) -> None:
    from medsight.workflows.retrain import retrain

    reg, feedback = setup
    result = retrain(registry=reg.root, feedback=feedback, data=small_phantoms, out=tmp_path / "rt", epochs=1,
                     lr=50.0, n_boot=200, margin=0.02, progress=False)
    assert result["promoted"] is False
    assert result["gate"]["difference"] < -0.02 and "REJECTED" in result["table"]
    assert reg.production()["version"] == 1 and reg.get(2)["stage"] == "candidate"
    assert reg.get(2)["notes"]["gate"]["passed"] is False


def test_retrain_without_production_is_a_clear_error(tmp_path: Path, small_phantoms: Path) -> None:
    from medsight.registry import RegistryError
    from medsight.workflows.retrain import retrain

    with pytest.raises(RegistryError, match="no production version"):
        retrain(registry=tmp_path / "reg", feedback=tmp_path / "fb", data=small_phantoms, out=tmp_path / "o")
