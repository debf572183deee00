"""``retrain`` with a fold ensemble in production: every member is fine-tuned on its own fold plus the
feedback, and the candidate is the same ensemble (members, flipped views, temperature, threshold)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from class_ensemble import TEMPERATURE, THRESHOLD, class_ensemble, with_flips

from medsight.bundle import load_bundle
from medsight.classification.split import bundle_split
from medsight.feedback import FeedbackStore
from medsight.registry import ModelRegistry


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return class_ensemble(tmp_path_factory)


def _feedback(built, root: Path, version_hash: str) -> Path:
    """Three corrected labels per class, from the training pictures."""
    store = FeedbackStore(root)
    for label in ("normal", "nodule"):
        for path in sorted((built.data / label).iterdir())[:3]:
            data = path.read_bytes()
            store.add(sha256=hashlib.sha256(data).hexdigest(), input_data=data, input_kind="png", user_id="key-1",
                      model_name="fold_ensemble", model_version=version_hash, kind="label", label=label,
                      prediction={"label": "normal"})
    return root


def test_every_member_is_fine_tuned_on_its_own_fold_and_the_ensemble_kept(built, tmp_path: Path,
                                                                          monkeypatch) -> None:
    import medsight.classification.trainer as trainer
    from medsight.workflows.retrain import retrain

    seen, real_fit = [], trainer.fit

    def spy(model, train, val, **kwargs):
        seen.append((sorted(train.ids), sorted(val.ids)))
        return real_fit(model, train, val, **kwargs)

    monkeypatch.setattr(trainer, "fit", spy)

    reg = ModelRegistry(tmp_path / "registry")
    production = with_flips(built.bundle, tmp_path / "tta" / "model", [[-1]])
    reg.promote(reg.register(production))
    feedback = _feedback(built, tmp_path / "feedback", reg.get(1)["hash"])
    result = retrain(registry=reg.root, feedback=feedback, data=built.data, out=tmp_path / "rt", epochs=1, lr=1e-3,
                     batch_size=8, n_boot=200, progress=False)
    before, after = load_bundle(production), load_bundle(result["bundle"])
    assert after.model == before.model and after.model.kwargs["flips"] == [[-1]]
    assert (after.temperature, after.threshold) == (TEMPERATURE, THRESHOLD)
    assert set(after.state_dict) == set(before.state_dict)
    assert len(seen) == 2
    for k, member in enumerate(built.members):
        weights = [key for key in after.state_dict if key.startswith(f"members.{k}.") and "weight" in key]
        assert any(not torch.equal(after.state_dict[key], before.state_dict[key]) for key in weights)  # tuned
        ds, _, train = bundle_split(load_bundle(member), built.data, "train")
        _, _, val = bundle_split(load_bundle(member), built.data, "val")
        train_ids, val_ids = seen[k]
        assert val_ids == sorted(ds.items[i].source for i in val)  # its own fold's validation split
        assert [i for i in train_ids if not i.startswith("feedback:")] == sorted(ds.items[i].source for i in train)
        assert sum(i.startswith("feedback:") for i in train_ids) == 6 == len(train_ids) - len(train)
        assert after.provenance["n_train"][k] == len(train) + 6
    assert seen[0][1] != seen[1][1]  # the two folds validate on different pictures
    record = reg.get(result["version"])
    assert record["parent"] == 1 and record["model"] == "fold_ensemble" and record["notes"]["retrain"]["members"] == 2
    gate = record["notes"]["gate"]
    assert gate["n_cases"] == 10 and gate["ci_low"] <= gate["difference"] <= gate["ci_high"]
    assert reg.production()["version"] == (2 if gate["passed"] else 1) and result["promoted"] is gate["passed"]
