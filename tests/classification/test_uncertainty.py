"""Predictive entropy (TTA, MC dropout) and the selective-prediction curve."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medsight.classification.evaluate import evaluate_predictions
from medsight.classification.metrics import classification_metrics
from medsight.classification.uncertainty import (
    case_entropy,
    dropout_active,
    flip_combinations,
    predictive_entropy,
    selective_curve,
)
from medsight.config import EvalConfig
from medsight.errors import ConfigError, DatasetError
from medsight.inference.classifier import CalibratedClassifier


class Constant(nn.Module):
    """Ignores the image: the same logits for every case."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


class LeftBright(nn.Module):
    """Confident 'class 1' when the left half is brighter: mirroring left-right flips its answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        score = 50 * (x[..., :w].mean(dim=(1, 2, 3)) - x[..., w:].mean(dim=(1, 2, 3)))
        return torch.stack([-score, score], dim=1)


def images(n: int = 6) -> torch.Tensor:
    x = torch.zeros(n, 1, 8, 8)
    x[..., :4] = 1.0
    return x


@pytest.mark.parametrize("method", ["none", "tta", "mc_dropout"])
def test_entropy_is_zero_for_a_confident_constant_model(method: str) -> None:
    model = nn.Sequential(nn.Dropout(0.5), Constant([30.0, -30.0]))
    entropy, info = case_entropy(CalibratedClassifier(model, head="softmax"), images(), method=method, passes=4)
    np.testing.assert_allclose(entropy, 0.0, atol=1e-9)
    assert info["method"] == method


@pytest.mark.parametrize("k", [2, 5])
def test_entropy_is_maximal_for_a_uniform_model(k: int) -> None:
    uniform = CalibratedClassifier(Constant([0.0] * k), head="softmax")
    entropy, _ = case_entropy(uniform, images(), method="tta", passes=4)
    np.testing.assert_allclose(entropy, math.log(k), rtol=1e-6)


def test_a_sigmoid_head_at_zero_has_entropy_log_two() -> None:
    entropy, _ = case_entropy(CalibratedClassifier(Constant([0.0]), head="sigmoid"), images(3), method="none", passes=1)
    np.testing.assert_allclose(entropy, math.log(2), rtol=1e-6)


def test_tta_sees_a_model_that_a_flip_fools() -> None:
    x = images(4)
    plain, _ = case_entropy(CalibratedClassifier(LeftBright(), head="softmax"), x, method="none", passes=1)
    tta, info = case_entropy(CalibratedClassifier(LeftBright(), head="softmax"), x, method="tta", passes=2)
    np.testing.assert_allclose(plain, 0.0, atol=1e-9)
    np.testing.assert_allclose(tta, math.log(2), rtol=1e-6)  # one pass says 1, the mirrored one says 0
    assert info == {"method": "tta", "passes": 2}


def test_tta_uses_at_most_the_distinct_flips() -> None:
    assert flip_combinations(2) == [(), (-1,), (-2,), (-2, -1)]
    assert len(flip_combinations(3)) == 8
    _, info = case_entropy(CalibratedClassifier(Constant([1.0, 0.0]), head="softmax"), images(), method="tta", passes=9)
    assert info["passes"] == 4


def test_mc_dropout_is_reproducible_and_restores_the_modes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 3))
    model.train()
    x = torch.randn(5, 1, 8, 8)
    first, info = case_entropy(CalibratedClassifier(model, head="softmax"), x, method="mc_dropout", passes=8)
    second, _ = case_entropy(CalibratedClassifier(model, head="softmax"), x, method="mc_dropout", passes=8)
    np.testing.assert_array_equal(first, second)
    assert np.all(first > 0) and np.all(first <= math.log(3) + 1e-9)
    assert info == {"method": "mc_dropout", "passes": 8}
    assert all(m.training for m in model.modules())  # put back as it was
    with dropout_active(model):
        assert [m.training for m in model] == [False, False, False, True, False]


def test_mc_dropout_without_dropout_says_what_to_use() -> None:
    with pytest.raises(ConfigError, match="no dropout layer") as info:
        case_entropy(CalibratedClassifier(Constant([1.0, 0.0]), head="softmax"), images(), method="mc_dropout",
                     passes=2)
    assert "tta" in info.value.fix


@pytest.mark.parametrize(("method", "passes", "words"), [("ensemble", 4, "unknown method"), ("tta", 0, "one pass")])
def test_bad_uncertainty_settings(method: str, passes: int, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        case_entropy(CalibratedClassifier(Constant([1.0, 0.0]), head="softmax"), images(), method=method, passes=passes)


def test_config_rejects_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="uncertainty"):
        EvalConfig(uncertainty="ensemble")
    assert EvalConfig().uncertainty == "tta" and EvalConfig().uncertainty_passes == 4


def test_predictive_entropy_values() -> None:
    np.testing.assert_allclose(predictive_entropy(np.array([[1.0, 0.0], [0.5, 0.5]])),
                               [0.0, math.log(2)])
    with pytest.raises(DatasetError, match="expected"):
        predictive_entropy(np.ones(3))


def test_selective_curve_keeps_the_most_certain_first() -> None:
    correct = np.array([1, 1, 0, 1, 0])
    entropy = np.array([0.1, 0.2, 0.9, 0.3, 0.8])  # the two wrong cases are the least certain
    curve = selective_curve(correct, entropy)
    assert curve["coverage"] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert curve["accuracy"] == pytest.approx([1.0, 1.0, 1.0, 0.75, 0.6])
    assert curve["accuracy_at_full"] == pytest.approx(0.6)
    assert curve["area"] == pytest.approx(np.mean([1, 1, 1, 0.75, 0.6]))
    assert curve["at_coverage"] == pytest.approx({"1": 0.6, "0.9": 0.6, "0.8": 0.75, "0.5": 1.0})
    with pytest.raises(DatasetError, match="one entropy per case"):
        selective_curve(correct, entropy[:3])


def test_long_curves_are_thinned_but_end_at_full_coverage() -> None:
    rng = np.random.default_rng(0)
    curve = selective_curve(rng.integers(0, 2, 1000), rng.random(1000))
    assert len(curve["coverage"]) == 101 and curve["coverage"][-1] == 1.0 and curve["coverage"][0] == 0.001


def test_evaluation_writes_the_selective_curve(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3))
    logits[np.arange(90), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    entropy = predictive_entropy(probs)
    metrics = evaluate_predictions(
        y, probs, label_names=["a", "b", "c"], case_ids=[f"c{i}" for i in range(90)], threshold=None,
        threshold_note="argmax", cfg=EvalConfig(bootstrap=0), out=tmp_path, title="t", split="test",
        entropy=entropy, uncertainty={"method": "tta", "passes": 4},
    )
    written = json.loads((tmp_path / "metrics.json").read_text())
    selective = written["selective"]
    assert selective["accuracy"][-1] == pytest.approx(classification_metrics(y, probs)["accuracy"])
    assert selective["accuracy_at_full"] == pytest.approx(metrics["accuracy"])
    assert selective["method"] == "tta" and selective["passes"] == 4
    assert selective["at_coverage"]["0.5"] >= selective["accuracy_at_full"]  # certain cases are right more often
    assert (tmp_path / "selective.png").stat().st_size > 0
    report = (tmp_path / "report.html").read_text()
    assert "Uncertainty: selective prediction" in report and report.count("data:image/png;base64,") == 5
    with open(tmp_path / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["entropy"]) == pytest.approx(entropy[0], abs=1e-6)


def test_evaluation_refuses_entropy_of_the_wrong_length(tmp_path: Path) -> None:
    probs = np.tile([[0.3, 0.7]], (4, 1))
    with pytest.raises(DatasetError, match="needs 4 finite values"):
        evaluate_predictions(
            np.array([0, 1, 1, 0]), probs, label_names=["a", "b"], case_ids=list("wxyz"), threshold=None,
            threshold_note="", cfg=EvalConfig(bootstrap=0), out=tmp_path, title="t", split="test",
            entropy=np.zeros(3),
        )


def test_a_training_run_reports_the_selective_curve(trained_run: Path) -> None:
    written = json.loads((trained_run / "metrics.json").read_text())
    selective = written["selective"]
    assert selective["method"] == "tta" and selective["passes"] == 4
    assert selective["accuracy_at_full"] == pytest.approx(written["accuracy"])
    assert 0 <= selective["area"] <= 1
