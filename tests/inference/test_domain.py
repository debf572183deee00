"""The bundle knows its domain: each rule's reason, the feature distance, the record in the bundle, and what
predict does with an input outside the domain under flag, refuse and off."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from domain_bundles import blob_pixels, make_domain_bundle, write_png
from typer.testing import CliRunner

from medsight.bundle import DOMAIN_FEATURES, MANIFEST, WEIGHTS, bundle_hash, load_bundle
from medsight.bundle_fields import DomainRecord, IntensityRange
from medsight.errors import BundleError, ConfigError
from medsight.hashing import files_sha256
from medsight.inference.domain import NO_RECORD, DomainCheck, OutOfDomainError, domain_record
from medsight.inference.domain_features import calibrate, features_of, penultimate
from medsight.inference.predictor import Predictor, predict_to_file
from medsight.models import create_model
from medsight.sample import Sample

MR_HEAD = DomainRecord(modalities=["MR"], body_parts=["HEAD"], channels=[1], size_min=[100, 100],
                       size_max=[300, 300], intensity=IntensityRange(unit="stored value", low=0.0, high=1000.0))


def _sample(array: np.ndarray, **meta) -> Sample:
    return Sample(np.asarray(array, np.float32), spacing=(1.0,) * (np.ndim(array) - 1), meta=meta)


def _in_range(shape=(1, 200, 200)) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1000, shape)


def test_an_input_like_the_training_data_has_no_reason() -> None:
    assert DomainCheck(MR_HEAD).input_reasons(_sample(_in_range(), modality="MR", BodyPartExamined="head")) == []


@pytest.mark.parametrize(("array", "meta", "expected"), [
    (_in_range(), {"modality": "CT"}, "DICOM Modality CT was not seen in training (seen: MR)"),
    (_in_range(), {"modality": "MR", "BodyPartExamined": "PROSTATE"},
     "DICOM BodyPartExamined PROSTATE was not seen in training (seen: HEAD)"),
    (_in_range((3, 200, 200)), {}, "3 channel(s); the training images had 1"),
    (_in_range((1, 20, 200)), {}, "size 20x200 is more than 4x smaller than the training sizes (100x100 to 300x300)"),
    (_in_range((1, 200, 1201)), {}, "size 200x1201 is more than 4x larger than the training sizes"),
    (np.full((1, 200, 200), -1000.0), {}, "the image is blank: every pixel is -1000"),
    (_in_range() - 2000, {}, "100% of the values lie outside the training intensities [-250, 1250] stored value"),
], ids=["modality", "body-part", "channels", "too-small", "too-large", "blank", "intensity"])
def test_each_rule_gives_its_own_reason(array, meta, expected) -> None:
    (reason,) = DomainCheck(MR_HEAD).input_reasons(_sample(array, **meta))
    assert reason.startswith(expected)


@pytest.mark.parametrize(("outside", "flagged"), [(5, False), (6, True)])
def test_intensity_rule_flags_more_than_5_percent_outside_the_widened_range(outside: int, flagged: bool) -> None:
    # the range [0, 1000] widened by 25% of its span on each side: [-250, 1250]; 100 pixels in all
    values = np.full((1, 10, 10), 500.0)
    values.flat[:outside] = 1251.0
    values.flat[-1] = 1250.0  # on the border: inside
    reasons = DomainCheck(MR_HEAD.model_copy(update={"size_min": None})).input_reasons(_sample(values))
    assert bool(reasons) is flagged
    if flagged:
        assert reasons[0].startswith("6% of the values lie outside")


def test_radiograph_codes_count_as_xr_and_a_guessed_modality_is_not_used() -> None:
    config_xr = domain_record(torch.nn.Identity(), None, None, {"modality": {"value": "XR", "source": "config"}})
    assert config_xr.modalities == ["XR"]
    assert DomainCheck(config_xr).input_reasons(_sample(_in_range(), modality="DX")) == []
    assert DomainCheck(config_xr).input_reasons(_sample(_in_range(), modality="MR"))[0].startswith(
        "DICOM Modality MR was not seen in training (seen: XR)")
    guessed = domain_record(torch.nn.Identity(), None, None, {"modality": {"value": "photo", "source": "guess"}})
    assert guessed.modalities == []
    assert "'photo' was a guess" in " ".join(guessed.notes)
    assert DomainCheck(guessed).input_reasons(_sample(_in_range(), modality="CT")) == []


def test_a_record_without_fingerprint_or_calibration_says_what_it_does_not_check() -> None:
    record = domain_record(create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2),
                           torch.zeros(4, 1, 32, 32), None, None)
    assert record.features is None and record.reference is None
    assert record.notes == ["no fingerprint: modality, body part, channels, size and intensity are not checked",
                            "no calibration cases (out-of-fold or validation): the feature distance is not checked"]


def test_calibration_halves_the_cases_and_measures_false_alarms_on_the_other_half() -> None:
    distances = np.arange(10, dtype=float)
    threshold, rate, n_setting, n_holdout = calibrate(distances, quantile=0.99, seed=0)
    order = np.random.default_rng(0).permutation(10)
    setting, holdout = distances[order[:5]], distances[order[5:]]
    assert (n_setting, n_holdout) == (5, 5)
    assert threshold == setting.max()  # the 0.99 quantile of 5 values, an actual distance
    assert rate == np.mean(holdout > setting.max())
    assert calibrate(np.array([0.2, 0.4, 0.3]), quantile=0.99, seed=0) == (0.4, None, 3, 0)


def test_penultimate_features_of_a_fold_ensemble_concatenate_its_members_and_the_hooks_go() -> None:
    torch.manual_seed(0)
    single = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2)
    ensemble = create_model("fold_ensemble", in_channels=1, num_outputs=2, spatial_dims=2, member="compact_cnn",
                            members=2, flips=[[-1]])
    images = torch.randn(3, 1, 32, 32)
    one, two = features_of(single, images), features_of(ensemble, images)
    assert one.shape == (3, 128) and two.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(two[:, :128], axis=1), np.sqrt(0.5), atol=1e-6)
    with penultimate(ensemble) as grab:
        ensemble(images)  # each member runs twice (the image and its flip); the image as it is counts
    np.testing.assert_allclose(grab(), two, atol=1e-6)
    assert not any(m._forward_pre_hooks for m in ensemble.modules())


def test_feature_distance_flags_far_inputs_and_not_calibration_like_ones(tmp_path: Path) -> None:
    predictor = Predictor(make_domain_bundle(tmp_path))
    reference = predictor.bundle.domain.features
    assert (reference.n_reference, reference.n_threshold_cases, reference.n_holdout_cases) == (40, 10, 10)
    like = [write_png(tmp_path / f"new{k}.png", blob_pixels(100 + k)) for k in range(20)]
    flagged = [predictor.predict_file(f)["out_of_domain"] for f in like]
    # the threshold is the highest of 10 calibration distances: a new case exceeds it with probability 1/11
    assert sum(flagged) <= 4, flagged
    rng = np.random.default_rng(1)
    far = {"noise": rng.integers(0, 256, (40, 40)), "stripes": (np.indices((40, 40))[1] % 4 < 2) * 255,
           "inverted": 255 - blob_pixels(7)}
    for name, pixels in far.items():
        result = predictor.predict_file(write_png(tmp_path / f"{name}.png", pixels.astype(np.uint8)))
        assert result["out_of_domain"] is True, name
        assert result["domain_reasons"][-1].startswith("feature distance "), name


def test_the_bundle_keeps_the_record_and_its_features_apart(tmp_path: Path) -> None:
    folder = make_domain_bundle(tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["domain"]["channels"] == [1] and "reference" not in manifest["domain"]
    assert manifest["domain"]["intensity"] == {"unit": "stored value", "low": 0.0, "high": 255.0, "min": 0.0,
                                               "max": 255.0}
    loaded = load_bundle(folder)
    assert loaded.domain.reference.shape == (40, 128) and loaded.domain.reference.dtype == np.float32
    assert load_bundle(folder, weights=False).domain.reference is None
    every_file = files_sha256(folder / MANIFEST, folder / WEIGHTS, folder / DOMAIN_FEATURES)
    assert bundle_hash(folder) == f"sha256:{every_file[:16]}"
    (folder / DOMAIN_FEATURES).unlink()
    with pytest.raises(BundleError, match="domain.safetensors is missing"):
        load_bundle(folder)


def test_flag_refuse_and_off_in_rows_and_csv(tmp_path: Path) -> None:
    folder = make_domain_bundle(tmp_path)
    blank = write_png(tmp_path / "blank.png", np.zeros((200, 200), np.uint8))
    inside = tmp_path / "train" / "t00.png"
    flagged = Predictor(folder).predict_file(blank)
    assert flagged["label"] in ("normal", "nodule") and flagged["out_of_domain"] is True
    assert flagged["domain_reasons"][0] == "the image is blank: every pixel is 0"
    assert Predictor(folder).predict_file(inside)["out_of_domain"] is False
    with pytest.raises(OutOfDomainError, match="outside the model's training domain: the image is blank"):
        Predictor(folder, out_of_domain="refuse").predict_file(blank)
    off = Predictor(folder, out_of_domain="off")
    assert (off.predict_file(blank)["out_of_domain"], off.domain_note) == (None, "the out-of-domain check is off")
    out = tmp_path / "refused.csv"
    counts = predict_to_file(bundle=folder, inputs=[inside, blank], out=out, progress=False, out_of_domain="refuse")
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert counts == {"ok": 1, "errors": 1, "skipped": 0}
    assert list(rows["blank.png"]) == ["path", "label", "prob_normal", "prob_nodule", "threshold", "out_of_domain",
                                       "domain_reasons", "error"]
    assert (rows["blank.png"]["label"], rows["blank.png"]["prob_nodule"], rows["blank.png"]["out_of_domain"]) == \
        ("", "", "True")
    assert rows["blank.png"]["domain_reasons"].startswith("the image is blank: every pixel is 0; feature distance")
    assert "outside the model's training domain" in rows["blank.png"]["error"]
    assert (rows["t00.png"]["out_of_domain"], rows["t00.png"]["domain_reasons"], rows["t00.png"]["error"]) == \
        ("False", "", "")


def test_cli_refuse_exits_3_with_the_reason_and_an_unknown_action_is_a_clear_error(tmp_path: Path) -> None:
    from medsight.cli.main import app

    folder = make_domain_bundle(tmp_path)
    blank = write_png(tmp_path / "blank.png", np.zeros((200, 200), np.uint8))
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(app, ["predict", str(folder), str(blank), "--out", str(out), "--out-of-domain",
                                      "refuse", "--no-progress"])
    assert result.exit_code == 3, result.output
    (row,) = csv.DictReader(out.open())
    assert row["out_of_domain"] == "True" and "the image is blank" in row["error"]
    wrong = CliRunner().invoke(app, ["predict", str(folder), str(blank), "--out", str(out), "--out-of-domain", "warn"])
    assert wrong.exit_code == 2 and "out_of_domain=warn" in wrong.output
    with pytest.raises(ConfigError, match="is not an action"):
        Predictor(folder, out_of_domain="warn")


def test_an_old_bundle_without_a_record_predicts_as_before(tmp_path: Path) -> None:
    from medsight.cli.main import app

    folder = make_domain_bundle(tmp_path, record=False)
    assert "domain" not in json.loads((folder / MANIFEST).read_text()) and not (folder / DOMAIN_FEATURES).exists()
    predictor = Predictor(folder)
    blank = write_png(tmp_path / "blank.png", np.zeros((200, 200), np.uint8))
    result = predictor.predict_file(blank)
    assert (result["out_of_domain"], result["domain_reasons"], predictor.domain_note) == (None, [], NO_RECORD)
    out = tmp_path / "old.csv"
    cli = CliRunner().invoke(app, ["predict", str(folder), str(blank), "--out", str(out), "--no-progress"])
    assert cli.exit_code == 0, cli.output
    assert f"note: {NO_RECORD}" in cli.output
    (row,) = csv.DictReader(out.open())
    assert list(row) == ["path", "label", "prob_normal", "prob_nodule", "threshold", "error"]
