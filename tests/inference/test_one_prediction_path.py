"""One prediction path for a classification bundle: evaluate, the gate, robustness, export parity and the
Predictor give the same calibrated probabilities, bit for bit, with the temperature applied once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

TEMPERATURE = 2.5


@pytest.fixture(scope="module")
def calibrated_bundle(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained demo bundle with a stored temperature of 2.5, so that applying it (once) shows."""
    folder = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(trained_run / "model", folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps({**manifest, "temperature": TEMPERATURE}))
    return folder


@pytest.fixture(scope="module")
def test_split(calibrated_bundle: Path, small_phantoms: Path):
    """The bundle's test split as preprocessed tensors, picked as every consumer picks it."""
    from medsight.bundle import load_bundle
    from medsight.classification.prepare import load_tensors
    from medsight.classification.split import bundle_split

    bundle = load_bundle(calibrated_bundle)
    ds, _, indices = bundle_split(bundle, str(small_phantoms), "test")
    tensors, _ = load_tensors(ds, indices, bundle.preprocess, progress=False)
    return tensors


def test_the_predictor_divides_the_logits_by_the_temperature_once(calibrated_bundle: Path, test_split) -> None:
    from medsight.inference.predictor import Predictor

    predictor = Predictor(calibrated_bundle, backend="torch")
    logits = predictor.classifier.logits(test_split.images).double()
    once, plain = (torch.softmax(logits / t, dim=1).numpy() for t in (TEMPERATURE, 1.0))
    probs = predictor.predict_tensors(test_split.images)
    # the float32 division and softmax against float64 ones: a few float32 ulps (6e-8) of numbers <= 1
    np.testing.assert_allclose(probs, once, rtol=0, atol=1e-6)
    assert np.abs(probs - plain).max() > 1e-3  # and the temperature does change them


def test_evaluate_the_gate_and_the_predictor_give_identical_probabilities(
    calibrated_bundle: Path, small_phantoms: Path, test_split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medsight.classification.evaluate as evaluation
    import medsight.registry.gate as gate
    from medsight.inference.predictor import Predictor
    from medsight.workflows.evaluate import run_evaluation

    seen: dict[str, np.ndarray] = {}
    evaluate_predictions, auc_gate = evaluation.evaluate_predictions, gate.auc_gate

    def keep_evaluated(y, probs, **kwargs):
        seen["evaluate"] = probs
        return evaluate_predictions(y, probs, **kwargs)

    def keep_gated(y, candidate, production, **kwargs):
        seen["gate candidate"], seen["gate production"] = candidate, production
        return auc_gate(y, candidate, production, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_predictions", keep_evaluated)
    monkeypatch.setattr(gate, "auc_gate", keep_gated)
    run_evaluation(bundle=calibrated_bundle, data=str(small_phantoms), split="test", out=tmp_path, progress=False)
    gate.compare_bundles(calibrated_bundle, calibrated_bundle, data=small_phantoms, split="test", n_boot=50)
    predicted = Predictor(calibrated_bundle).predict_tensors(test_split.images)
    assert predicted.shape == (len(test_split.ids), 2)
    for consumer, probs in seen.items():
        np.testing.assert_array_equal(probs, predicted, err_msg=consumer)


def test_the_robustness_clean_row_is_the_evaluation(calibrated_bundle: Path, small_phantoms: Path,
                                                    tmp_path: Path) -> None:
    """Robustness scores the calibrated probabilities at the bundle's threshold, as medsight evaluate does."""
    from medsight.robustness.run import METRICS, run_robustness
    from medsight.workflows.evaluate import run_evaluation

    evaluated = run_evaluation(bundle=calibrated_bundle, data=str(small_phantoms), split="test",
                               out=tmp_path / "eval", progress=False)
    clean = run_robustness(bundle=calibrated_bundle, data=str(small_phantoms), out=tmp_path / "rob",
                           kinds=["noise"], severities=[1], progress=False)["rows"][0]
    assert clean["kind"] == "clean"
    assert {m: clean[m] for m in METRICS} == {m: evaluated[m] for m in METRICS}


def test_the_export_parity_reference_is_the_predictor(calibrated_bundle: Path) -> None:
    from medsight.bundle import load_bundle
    from medsight.export.parity import load_parity_data
    from medsight.inference.predictor import Predictor
    from medsight.transforms.intensity import normalize

    bundle = load_bundle(calibrated_bundle)
    parity = load_parity_data(bundle, calibrated_bundle, data=None, input_preprocess=bundle.preprocess)
    normalised = np.stack([normalize(x, bundle.preprocess.normalize) for x in parity.inputs]).astype(np.float32)
    np.testing.assert_array_equal(parity.reference, Predictor(bundle).predict_arrays(normalised))
