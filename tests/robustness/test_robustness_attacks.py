"""FGSM / PGD on the trained demo classifier: eps 0 is the clean answer, larger eps hurts, weights stay put."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsight.errors import ConfigError


@pytest.fixture(scope="module")
def clean_set(trained_run: Path, small_phantoms: Path):
    from medsight.bundle import load_bundle
    from medsight.classification.prepare import load_tensors
    from medsight.data.layouts import open_dataset

    bundle = load_bundle(trained_run / "model")
    ds = open_dataset(str(small_phantoms), class_names=bundle.label_names)
    tensors, _ = load_tensors(ds, np.arange(len(ds.items)), bundle.preprocess, progress=False)
    return bundle, tensors


def _scores(predict, images, labels, threshold) -> tuple[float, float]:
    """Accuracy and AUC at ``threshold`` of the probabilities ``predict(images)``."""
    from medsight.classification.metrics import classification_metrics

    metrics = classification_metrics(labels.numpy(), predict(images), threshold)
    return metrics["accuracy"], metrics["auc"]


def test_eps_zero_is_clean_and_larger_eps_lowers_auc(clean_set) -> None:
    from medsight.inference.predictor import Predictor
    from medsight.robustness.attacks import attack

    bundle, data = clean_set
    predictor = Predictor(bundle)  # as medsight robustness scores: the bundle's calibrated probabilities
    model, head, predict = predictor.model, bundle.model.head, predictor.predict_tensors
    before = {k: v.clone() for k, v in model.state_dict().items()}
    same = attack(model, data.images, data.labels, head=head, method="fgsm", eps=0.0)
    np.testing.assert_array_equal(predict(same), predict(data.images))
    clean_acc, clean_auc = _scores(predict, data.images, data.labels, bundle.threshold)
    assert clean_auc > 0.65, "the 3-epoch demo model should rank the phantoms better than chance"
    for method in ("fgsm", "pgd"):
        small = attack(model, data.images, data.labels, head=head, method=method, eps=0.01)
        large = attack(model, data.images, data.labels, head=head, method=method, eps=0.1)
        assert float((large - data.images).abs().max()) <= 0.1 + 1e-5
        (acc_small, auc_small), (acc_large, auc_large) = (
            _scores(predict, x, data.labels, bundle.threshold) for x in (small, large)
        )
        assert auc_large < 0.1 < auc_small < clean_auc, f"{method}: {clean_auc} -> {auc_small} -> {auc_large}"
        assert acc_large <= acc_small <= clean_acc
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_attacks_lower_accuracy_of_a_confident_model(clean_set) -> None:
    """A logistic regression fitted to the phantoms here is accurate when clean and fooled at eps 0.1."""
    from medsight.inference.classifier import CalibratedClassifier
    from medsight.robustness.attacks import attack

    _, data = clean_set
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(data.images[0].numel(), 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(data.images), data.labels).backward()
        optimizer.step()
    model.eval()
    predict = CalibratedClassifier(model, head="softmax").predict
    accuracy = [
        _scores(predict, attack(model, data.images, data.labels, head="softmax", method="pgd", eps=eps),
                data.labels, None)[0]
        for eps in (0.0, 0.01, 0.1)
    ]
    assert accuracy[0] > 0.9 and accuracy[2] < 0.5 and accuracy[0] >= accuracy[1] >= accuracy[2], accuracy


@pytest.mark.parametrize(("method", "eps", "text"), [("cw", 0.1, "unknown attack"), ("pgd", -0.1, ">= 0")])
def test_bad_attack(clean_set, method: str, eps: float, text: str) -> None:
    from medsight.robustness.attacks import attack

    bundle, data = clean_set
    with pytest.raises(ConfigError, match=text):
        attack(bundle.build_model(), data.images[:2], data.labels[:2], head="softmax", method=method, eps=eps)
