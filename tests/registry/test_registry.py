"""The folder registry: register, promote, rollback, list, and clear errors for bad versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsight.registry import ModelRegistry, RegistryError


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    import torch

    from medsight.bundle import Bundle, provenance
    from medsight.config import ModelConfig, PreprocessConfig
    from medsight.models import create_model

    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2)
    return Bundle(task="classification", model=ModelConfig(name="compact_cnn"),
                  preprocess=PreprocessConfig(size=[32, 32], channels=1), label_names=["a", "b"],
                  metrics={"val_auc": 0.8}, provenance=provenance(data_hash="d1"),
                  state_dict=net.state_dict()).save(tmp_path / "run" / "model")


def test_register_promote_rollback(tmp_path: Path, bundle: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.list() == [] and reg.production() is None
    v1 = reg.register(bundle)
    v2 = reg.register(bundle, metrics={"val_auc": 0.9}, data_hash="d2", parent=v1)
    assert (v1, v2) == (1, 2)
    first, second = reg.list()
    assert first["metrics"] == {"val_auc": 0.8} and first["data_hash"] == "d1" and first["parent"] is None
    assert second["metrics"] == {"val_auc": 0.9} and second["data_hash"] == "d2" and second["parent"] == 1
    assert first["stage"] == second["stage"] == "candidate"
    assert (tmp_path / "reg" / "versions" / "2" / "model" / "bundle.json").is_file()
    assert first["hash"].startswith("sha256:") and first["hash"] == second["hash"]  # same bundle, same hash

    assert reg.promote(1)["stage"] == "production"
    assert reg.production_bundle() == tmp_path / "reg" / "versions" / "1" / "model"
    reg.promote(2)
    assert [v["stage"] for v in reg.list()] == ["archived", "production"]
    restored = reg.rollback()
    assert restored["version"] == 1
    assert [v["stage"] for v in reg.list()] == ["production", "archived"]
    on_disk = json.loads((tmp_path / "reg" / "registry.json").read_text())
    assert on_disk["production_history"] == [1]

    reg.annotate(2, gate={"passed": False})
    assert reg.get(2)["notes"] == {"gate": {"passed": False}}


def test_bad_version_and_rollback_errors(tmp_path: Path, bundle: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(bundle)
    with pytest.raises(RegistryError, match=r"version 7: is not in the registry .*versions: 1.*medsight registry list"):
        reg.promote(7)
    with pytest.raises(RegistryError, match="parent|version 3"):
        reg.register(bundle, parent=3)
    with pytest.raises(RegistryError, match="no production version"):
        reg.production_bundle()
    reg.promote(1)
    with pytest.raises(RegistryError, match="already in production"):
        reg.promote(1)
    with pytest.raises(RegistryError, match="no earlier production version"):
        reg.rollback()
    assert len(reg.list()) == 1  # the failed register left nothing behind


def test_corrupt_index_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON.*restore"):
        ModelRegistry(tmp_path).list()


def test_register_rejects_a_non_bundle(tmp_path: Path) -> None:
    from medsight.errors import BundleError

    with pytest.raises(BundleError, match="no bundle.json"):
        ModelRegistry(tmp_path / "reg").register(tmp_path)
