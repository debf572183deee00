"""Temperature scaling: the fit, the bundle field, the Predictor and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medsight.bundle import load_bundle
from medsight.classification.calibration import (
    MIN_CALIBRATION_CASES,
    T_MAX,
    calibrated_probs,
    choose_temperature,
    fit_temperature,
)
from medsight.classification.evaluate import evaluate_predictions
from medsight.classification.metrics import expected_calibration_error
from medsight.config import EvalConfig
from medsight.errors import BundleError, ConfigError, DatasetError


def calibrated_logits(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is calibrated by construction: labels are drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, k))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = (rng.random((n, 1)) > probs.cumsum(axis=1)).sum(axis=1)
    return logits, labels


@pytest.mark.parametrize("true_t", [3.0, 0.5])
def test_fit_recovers_a_known_temperature(true_t: float) -> None:
    logits, y = calibrated_logits(20000, 3)
    assert fit_temperature(logits * true_t, y, head="softmax") == pytest.approx(true_t, rel=0.05)


def test_fit_recovers_the_temperature_of_a_sigmoid_head() -> None:
    logits, y = calibrated_logits(20000, 2, seed=1)
    one_logit = (logits[:, 1] - logits[:, 0])[:, None] * 3.0  # softmax over 2 == sigmoid of the difference
    assert fit_temperature(one_logit, y, head="sigmoid") == pytest.approx(3.0, rel=0.05)


def test_scaling_lowers_the_ece_of_an_overconfident_model_and_keeps_the_argmax() -> None:
    logits, y = calibrated_logits(3000, 2, seed=2)
    overconfident = logits * 4.0
    temperature = fit_temperature(overconfident, y, head="softmax")
    before = calibrated_probs(overconfident, None, head="softmax")
    after = calibrated_probs(overconfident, temperature, head="softmax")
    assert temperature > 3.0
    assert expected_calibration_error(y, after) < 0.5 * expected_calibration_error(y, before)
    assert expected_calibration_error(y, after) < 0.03
    np.testing.assert_array_equal(before.argmax(axis=1), after.argmax(axis=1))


def test_all_zero_logits_give_temperature_one_and_a_hopeless_fit_stops_at_the_bound() -> None:
    assert fit_temperature(np.zeros((10, 2)), np.array([0, 1] * 5), head="softmax") == 1.0
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(500, 2)) * 50  # confident and unrelated to the labels
    assert fit_temperature(noise, rng.integers(0, 2, 500), head="softmax") == pytest.approx(T_MAX, rel=1e-3)


@pytest.mark.parametrize(
    ("logits", "labels", "head", "error", "words"),
    [
        (np.zeros((4, 2)), np.array([0, 1, 2, 0]), "softmax", DatasetError, "outside 0..1"),
        (np.zeros((4, 2)), np.array([0, 1]), "softmax", DatasetError, "for 2 labels"),
        (np.full((2, 2), np.nan), np.array([0, 1]), "softmax", DatasetError, "NaN"),
        (np.zeros((2, 2)), np.array([0, 1]), "sigmoid", DatasetError, "one logit per case"),
        (np.zeros((2, 2)), np.array([0, 1]), "tanh", ConfigError, "unknown head"),
    ],
)
def test_bad_inputs_to_the_fit(logits, labels, head, error, words) -> None:
    with pytest.raises(error, match=words) as info:
        fit_temperature(logits, labels, head=head)
    assert info.value.fix


def test_training_on_a_small_validation_split_fits_no_temperature_and_says_why(trained_run: Path) -> None:
    """The phantom run validates on 12 images: too few to fit a temperature (it used to fit one anyway)."""
    bundle = load_bundle(trained_run / "model")
    n_val = int(bundle.metrics["val_n"])
    assert n_val < MIN_CALIBRATION_CASES
    reason = f"not fitted: {n_val} validation cases, fewer than the {MIN_CALIBRATION_CASES} needed"
    assert bundle.temperature is None
    manifest = json.loads((trained_run / "model" / "bundle.json").read_text())
    assert "temperature" in manifest and manifest["temperature"] is None  # the key stays, so old readers work
    assert bundle.provenance["calibration"]["status"] == "not_fitted"
    assert bundle.provenance["calibration"]["reason"] == reason
    assert "temperature scaling" not in bundle.provenance["threshold_note"]
    written = json.loads((trained_run / "metrics.json").read_text())
    assert written["temperature"] is None and written["ece_uncalibrated"] is None
    assert written["calibration"]["temperature_choice"]["reason"] == reason
    report = (trained_run / "report.html").read_text()
    assert f"Temperature scaling on the validation split (n = {n_val}): {reason}." in report
    assert "before and after temperature scaling" not in report  # no before/after plot of identical numbers


def test_too_few_validation_cases_or_errors_fit_no_temperature() -> None:
    logits, y = calibrated_logits(38, 2)
    few = choose_temperature(logits * 3, y, head="softmax")
    assert (few.status, few.temperature, few.fitted) == ("not_fitted", None, None)
    assert few.reason == "not fitted: 38 validation cases, fewer than the 100 needed"
    separable = np.where(np.arange(200)[:, None] % 2 == 0, [[4.0, -4.0]], [[-4.0, 4.0]])  # every case right
    right = choose_temperature(separable, np.arange(200) % 2, head="softmax")
    assert right.status == "not_fitted" and right.temperature is None and right.errors == 0
    assert right.reason == ("not fitted: 0 of the 200 validation cases are misclassified, "
                            "fewer than the 10 errors needed")


def test_a_temperature_that_lowers_the_held_out_nll_is_kept() -> None:
    logits, y = calibrated_logits(400, 2, seed=0)
    choice = choose_temperature(logits * 3.0, y, head="softmax")  # over-confident by a factor 3
    assert choice.status == "applied" and choice.temperature == choice.fitted
    assert 2.0 < choice.temperature < 4.5
    assert choice.nll_after < choice.nll_before and choice.ece_after < choice.ece_before
    assert choice.reason.startswith(f"fitted T = {choice.temperature:.3f} lowered the validation NLL ")
    assert json.loads(json.dumps(choice.as_dict()))["temperature"] == choice.temperature  # stored as JSON


def test_a_temperature_that_does_not_lower_the_held_out_nll_is_not_kept() -> None:
    logits, y = calibrated_logits(400, 2, seed=0)  # calibrated already: a fitted T only follows the noise
    choice = choose_temperature(logits, y, head="softmax")
    assert choice.status == "not_kept" and choice.temperature is None and choice.fitted is not None
    assert choice.nll_after > choice.nll_before
    assert "but not kept: it did not lower the NLL of validation cases it was not fitted on" in choice.reason
    tie = choose_temperature(np.zeros((120, 2)), np.arange(120) % 2, head="softmax")  # T changes nothing
    assert tie.nll_after == tie.nll_before and (tie.status, tie.temperature) == ("not_kept", None)


def test_the_report_says_when_scaling_made_the_figures_worse(tmp_path: Path) -> None:
    logits, y = calibrated_logits(400, 2, seed=4)
    raw = calibrated_probs(logits, None, head="softmax")  # calibrated already
    softened = calibrated_probs(logits, 3.0, head="softmax")  # so T = 3 makes the ECE worse
    choice = {"status": "applied", "reason": "fitted T = 3.000 lowered the validation NLL 0.5200 -> 0.4100",
              "temperature": 3.0, "fitted": 3.0, "n": 150, "errors": 30, "nll_before": 0.52, "nll_after": 0.41,
              "ece_before": 0.05, "ece_after": 0.09}
    metrics = evaluate_predictions(
        y, softened, label_names=["normal", "nodule"], case_ids=[f"c{i}" for i in range(400)], threshold=0.5,
        threshold_note="fixed", cfg=EvalConfig(bootstrap=0), out=tmp_path, title="t", split="test",
        uncalibrated=raw, temperature=3.0, temperature_choice=choice,
    )
    assert metrics["ece"] > metrics["ece_uncalibrated"]
    report = (tmp_path / "report.html").read_text()
    assert (f"On these 400 cases temperature scaling made the calibration error worse "
            f"({metrics['ece_uncalibrated']:.3f} before, {metrics['ece']:.3f} after).") in report
    assert ("Temperature scaling on the validation split (n = 150): fitted T = 3.000 lowered the validation NLL "
            "0.5200 -&gt; 0.4100. With T = 3.000 the validation ECE went from 0.050 to 0.090: it made the "
            "validation ECE worse.") in report
    assert json.loads((tmp_path / "metrics.json").read_text())["calibration"]["temperature_choice"] == choice


def test_predictor_applies_the_temperature(trained_run: Path, small_phantoms: Path, tmp_path: Path) -> None:
    from medsight.inference.predictor import Predictor

    folder = tmp_path / "model"
    shutil.copytree(trained_run / "model", folder)
    files = [next((small_phantoms / c).glob("*.png")) for c in ("normal", "nodule")]
    manifest = json.loads((folder / "bundle.json").read_text())
    probs = {}
    for t in (1.0, 4.0):
        (folder / "bundle.json").write_text(json.dumps({**manifest, "temperature": t}))
        predictor = Predictor(folder, backend="torch")
        probs[t] = np.array([list(predictor.predict_file(f)["probabilities"].values()) for f in files])
    np.testing.assert_array_equal(probs[1.0].argmax(axis=1), probs[4.0].argmax(axis=1))
    assert np.all(np.abs(probs[4.0] - 0.5) < np.abs(probs[1.0] - 0.5))  # softer, same side of 0.5
    expected = 1 / (1 + np.exp(-np.log(probs[1.0][:, 1] / probs[1.0][:, 0]) / 4.0))  # sigmoid(logit / T)
    np.testing.assert_allclose(probs[4.0][:, 1], expected, atol=1e-5)


def test_an_old_bundle_without_temperature_loads_as_uncalibrated(trained_run: Path, tmp_path: Path) -> None:
    from medsight.inference.predictor import Predictor

    folder = tmp_path / "old"
    shutil.copytree(trained_run / "model", folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    del manifest["temperature"]
    (folder / "bundle.json").write_text(json.dumps(manifest))
    assert load_bundle(folder).temperature is None
    assert Predictor(folder, backend="torch").classifier.temperature is None  # logits / 1: uncalibrated


@pytest.mark.parametrize("bad", [0, -1.5, "hot", True])
def test_a_bad_stored_temperature_is_refused(trained_run: Path, tmp_path: Path, bad) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(trained_run / "model", folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps({**manifest, "temperature": bad}))
    with pytest.raises(BundleError, match="not a positive number") as info:
        load_bundle(folder)
    assert "retrain" in info.value.fix


def test_evaluation_writes_ece_before_and_after(tmp_path: Path) -> None:
    logits, y = calibrated_logits(400, 2, seed=4)
    raw = calibrated_probs(logits * 3, None, head="softmax")
    scaled = calibrated_probs(logits * 3, 3.0, head="softmax")
    metrics = evaluate_predictions(
        y, scaled, label_names=["normal", "nodule"], case_ids=[f"c{i}" for i in range(400)], threshold=0.5,
        threshold_note="fixed", cfg=EvalConfig(bootstrap=0), out=tmp_path, title="t", split="test",
        uncalibrated=raw, temperature=3.0,
    )
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["ece_uncalibrated"] == pytest.approx(expected_calibration_error(y, raw))
    assert written["ece"] == pytest.approx(expected_calibration_error(y, scaled))
    assert written["ece"] < written["ece_uncalibrated"]
    assert written["temperature"] == 3.0 and metrics["selective"] is None
    assert "T = 3.000" in (tmp_path / "report.html").read_text()


def test_uncalibrated_probabilities_of_other_cases_are_refused(tmp_path: Path) -> None:
    logits, y = calibrated_logits(10, 2)
    probs = calibrated_probs(logits, None, head="softmax")
    with pytest.raises(DatasetError, match="labels for 5 rows"):
        evaluate_predictions(
            y, probs, label_names=["a", "b"], case_ids=[str(i) for i in range(10)], threshold=None,
            threshold_note="", cfg=EvalConfig(bootstrap=0), out=tmp_path, title="t", split="test",
            uncalibrated=probs[:5],
        )


def test_onnx_backend_applies_the_temperature_too(trained_run: Path, small_phantoms: Path, tmp_path: Path) -> None:
    from medsight.export import export_bundle
    from medsight.inference.predictor import Predictor

    folder = tmp_path / "model"
    shutil.copytree(trained_run / "model", folder)
    export_bundle(bundle=folder, fmt="onnx", progress=False)
    manifest = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps({**manifest, "temperature": 4.0}))
    files = [next((small_phantoms / c).glob("*.png")) for c in ("normal", "nodule")]
    onnx, torch_ = Predictor(folder, backend="onnx"), Predictor(folder, backend="torch")
    for path in files:
        got, want = onnx.predict_file(path)["probabilities"], torch_.predict_file(path)["probabilities"]
        assert got == pytest.approx(want, abs=1e-4)
    (folder / "bundle.json").write_text(json.dumps({**manifest, "temperature": 1.0}))
    plain = Predictor(folder, backend="onnx").predict_file(files[1])["probabilities"]["nodule"]
    calibrated = onnx.predict_file(files[1])["probabilities"]["nodule"]
    assert abs(calibrated - 0.5) < abs(plain - 0.5)


def test_training_prints_the_threshold_to_4_digits_and_the_calibration_decision(
    small_phantoms: Path, tmp_path: Path
) -> None:
    from medsight.config import load_config
    from medsight.workflows.train import run_training

    cfg = load_config(recipe="demo", overrides={"data.path": str(small_phantoms), "preprocess.size": [32, 32],
                                                "train.epochs": 1, "eval.bootstrap": 0, "eval.calibration": "none"})
    text = run_training(cfg, out=tmp_path, progress=False)
    threshold = load_bundle(tmp_path / "model").threshold
    assert f" threshold={threshold:.4f}\ntemperature scaling: switched off (eval.calibration: none)\n" in text
    assert load_bundle(tmp_path / "model").provenance["calibration"]["status"] == "off"
