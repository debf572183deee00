"""The bundle's typed settings: read from the provenance keys every manifest so far keeps them under,
written back to the same keys, and refused with the file and field named when a value has the wrong type."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medsight.bundle import Bundle, build_bundle, load_bundle, provenance
from medsight.bundle_fields import DataSettings, SegmentationSettings, SplitRecord, ThresholdChoice
from medsight.config import DataConfig, EvalConfig, ModelConfig, PreprocessConfig
from medsight.errors import BundleError

#: bundles as medsight wrote them before the settings were typed (see tests/test_bundle_fixtures.py)
OLD = Path(__file__).parent / "fixtures" / "bundles"


def test_an_old_classifier_manifest_fills_the_typed_fields_from_its_provenance() -> None:
    bundle = load_bundle(OLD / "classifier", weights=False)
    assert bundle.data.path == "/tmp/medsight-fixtures-68ag01uf/phantoms" and bundle.data.hash == "5a966fda586a0849"
    assert bundle.data.config == DataConfig(val_fraction=0.15, test_fraction=0.15, folds=1)
    choice = bundle.threshold_choice
    assert choice.note == ("maximises Youden's J (sensitivity + specificity - 1), chosen on the validation split "
                           "(n=4)")
    assert choice.evaluation == EvalConfig(threshold="youden", bootstrap=0, uncertainty_passes=4)
    assert choice.calibration["status"] == "not_fitted" and choice.calibration["n"] == 4
    assert bundle.split == SplitRecord()  # a classifier rebuilds its split from data.config


@pytest.mark.parametrize(("name", "val", "note"), [
    ("segmenter", ["case02", "case03"], None),
    ("fold_ensemble", [], "a fold ensemble: each case trained all but one of its members; the out-of-fold "
                         "scores are in the run folder's metrics.json"),
])
def test_an_old_segmenter_manifest_fills_its_split_and_settings(name: str, val: list[str], note: str | None) -> None:
    bundle = load_bundle(OLD / name, weights=False)
    assert bundle.split.of("val") == val and bundle.split.note == note
    assert len(bundle.split.of("train")) == 6 - len(val) and bundle.split.of("test") == []
    settings = bundle.segmentation
    assert settings.normalization == {"scheme": "zscore"} and settings.overlap == 0.5
    assert settings.target_spacing == [1.0, 1.0] and settings.logit_median is None
    assert settings.class_thresholds() == {1: settings.thresholds["1"]}
    assert bundle.threshold_choice.note.startswith("foreground probability >= ")


#: settings added since the fixtures were written, which a saved-again manifest spells out at their defaults
NEW_DEFAULTS = {
    "preprocess": {"intensity_clip": None, "intensity_mean": 0.0, "intensity_std": 1.0, "keep_aspect": False},
    "data_config": {"modality": None},
    "eval_config": {"tta": "none"},
    "segmentation": {"profiles": {}, "default_profile": None, "profile_note": ""},
}


@pytest.mark.parametrize("name", ["classifier", "segmenter", "fold_ensemble"])
def test_an_old_bundle_saved_again_writes_the_same_manifest(name: str, tmp_path: Path) -> None:
    """Nothing is lost or changed; only settings added since are written, at the defaults that reproduce the
    old behaviour."""
    load_bundle(OLD / name).save(tmp_path / name)
    expected = json.loads((OLD / name / "bundle.json").read_text())
    expected["preprocess"].update(NEW_DEFAULTS["preprocess"])
    for key in ("data_config", "eval_config"):
        if key in expected["provenance"]:
            expected["provenance"][key].update(NEW_DEFAULTS[key])
    if "segmentation" in expected:
        expected["segmentation"].update(NEW_DEFAULTS["segmentation"])
    assert json.loads((tmp_path / name / "bundle.json").read_text()) == expected


def test_the_typed_fields_are_saved_under_todays_keys_and_win_over_the_record(tmp_path: Path) -> None:
    import torch

    data = DataConfig(path="/data/chest", class_names=["normal", "nodule"], folds=2, fold=1)
    bundle = build_bundle(
        task="classification", model=ModelConfig(name="compact_cnn"), preprocess=PreprocessConfig(),
        label_names=["normal", "nodule"], threshold=0.3, state_dict={"w": torch.zeros(1)},
        provenance=provenance(run="demo", data_config={"folds": 5}),  # a stale record the typed field overrides
        data=DataSettings.of(data, hash="ab12"),
        threshold_choice=ThresholdChoice(note="fixed in the config", evaluation=EvalConfig(threshold="fixed")),
    )
    written = json.loads((bundle.save(tmp_path / "model") / "bundle.json").read_text())["provenance"]
    assert written["data"] == "/data/chest" and written["data_hash"] == "ab12"
    assert written["data_config"] == data.model_dump(mode="json", exclude={"path", "class_names"})
    assert written["threshold_note"] == "fixed in the config" and written["eval_config"]["threshold"] == "fixed"
    assert "split" not in written and "calibration" not in written  # a field left unset writes no key
    loaded = load_bundle(tmp_path / "model")
    assert loaded.data.config.fold == 1 and loaded.data.config.folds == 2
    assert loaded.data.split_config("/elsewhere") == data.model_copy(update={"path": "/elsewhere", "class_names": None})


def test_segmentation_settings_take_the_manifests_dict_and_class_indices() -> None:
    bundle = Bundle(task="segmentation", model=ModelConfig(name="unet"), preprocess=PreprocessConfig(),
                    label_names=["background", "disc"], segmentation={"normalization": {"scheme": "zscore"}})
    assert bundle.segmentation == SegmentationSettings(normalization={"scheme": "zscore"})
    chosen = bundle.segmentation.with_thresholds({1: 0.25}, -3.5)
    assert chosen.thresholds == {"1": 0.25} and chosen.logit_median == -3.5 and chosen["overlap"] == 0.5
    assert bundle.segmentation.thresholds == {}  # the original is unchanged


@pytest.mark.parametrize(("name", "edit", "field"), [
    ("classifier", lambda m: m["provenance"]["data_config"].update(val_fraction="most"),
     "provenance.data_config.val_fraction"),
    ("classifier", lambda m: m["provenance"].update(threshold_note=["youden"]), "provenance.threshold_note"),
    ("classifier", lambda m: m.update(threshold="high"), "field threshold:"),
    ("segmenter", lambda m: m["provenance"]["split"].update(val="case02"), "provenance.split.val"),
    ("segmenter", lambda m: m["segmentation"].update(overlap="lots"), "segmentation.overlap"),
    ("segmenter", lambda m: m["segmentation"]["thresholds"].update({"1": "high"}), "segmentation.thresholds.1"),
    ("segmenter", lambda m: m["segmentation"].pop("normalization"), "segmentation.normalization: Field required"),
])
def test_a_wrong_typed_field_names_the_file_and_the_field(tmp_path: Path, name: str, edit, field: str) -> None:
    folder = tmp_path / name
    shutil.copytree(OLD / name, folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    edit(manifest)
    (folder / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"^{folder / 'bundle.json'}: field ") as info:
        load_bundle(folder)
    assert field in str(info.value) and "retrain" in info.value.fix
