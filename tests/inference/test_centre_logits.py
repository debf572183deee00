"""Per-image centring of a binary segmenter's foreground logits (``segment.centre_logits``)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medsight.errors import ConfigError
from medsight.inference.postprocess import centre_foreground, centre_logits, median_logit


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _vessel_image(rng: np.random.Generator, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 binary truth (about 12% foreground) and probabilities whose logits separate it imperfectly,
    all shifted by ``offset`` (an image whose probabilities run high or low as a whole)."""
    truth = rng.random((64, 64)) < 0.12
    logits = np.where(truth, 1.0, -5.0) + rng.normal(0.0, 1.5, truth.shape) + offset
    return _sigmoid(logits).astype(np.float32), truth


def test_centring_sets_the_median_logit_and_keeps_the_order_within_the_image() -> None:
    probs, _ = _vessel_image(np.random.default_rng(0), offset=0.0)
    centred = centre_logits(np.stack([1 - probs, probs]), -3.0)
    assert centred.shape == (2, 64, 64) and centred.dtype == np.float32
    assert median_logit(centred[1]) == pytest.approx(-3.0, abs=1e-4)
    assert median_logit(probs) == pytest.approx(float(np.median(_logit(probs.astype(np.float64)))), abs=1e-4)
    np.testing.assert_allclose(centred.sum(axis=0), 1.0, atol=1e-6)
    order = np.argsort(probs.ravel(), kind="stable")
    assert (np.diff(centred[1].ravel()[order]) >= 0).all()  # a monotone shift: the ranking is kept
    assert median_logit(probs) == pytest.approx(-4.71, abs=0.01)  # so every voxel moves up by 1.71 logits
    np.testing.assert_allclose(_logit(centred[1].astype(np.float64)), _logit(probs.astype(np.float64)) + 1.7056,
                               atol=2e-3)


def test_images_that_differ_by_an_overall_offset_come_into_line_and_pool_better() -> None:
    rng = np.random.default_rng(1)
    dim, truth_dim = _vessel_image(rng, offset=-2.5)
    bright, truth_bright = _vessel_image(rng, offset=+2.5)
    truth = np.concatenate([truth_dim.ravel(), truth_bright.ravel()])
    raw_auc = roc_auc_score(truth, np.concatenate([dim.ravel(), bright.ravel()]))
    level = np.mean([median_logit(dim), median_logit(bright)])
    centred = [centre_foreground(p, level) for p in (dim, bright)]
    pooled = roc_auc_score(truth, np.concatenate([c.ravel() for c in centred]))
    assert pooled > raw_auc + 0.05  # 0.998 against 0.916: the dim image's vessels ranked below the bright background
    for c, p, t in zip(centred, (dim, bright), (truth_dim, truth_bright), strict=True):
        assert roc_auc_score(t.ravel(), c.ravel()) == pytest.approx(roc_auc_score(t.ravel(), p.ravel()), abs=1e-6)
        assert median_logit(c) == pytest.approx(level, abs=1e-4)
    # the same image shifted by 2 logits is the same image once centred
    same = _sigmoid(_logit(dim.astype(np.float64)) + 2.0).astype(np.float32)
    np.testing.assert_allclose(centre_foreground(same, level), centred[0], atol=1e-5)


def test_saturated_probabilities_stay_finite() -> None:
    probs = np.zeros((2, 8, 8), np.float32)
    probs[0] = 1.0
    probs[0, :2], probs[1, :2] = 0.0, 1.0  # two rows certain foreground, the rest certain background
    centred = centre_logits(probs, -4.0)
    assert np.isfinite(centred).all() and centred.min() >= 0.0 and centred.max() <= 1.0
    assert median_logit(centred[1]) == pytest.approx(-4.0, abs=1e-3)
    assert (centred[1, :2] > 0.99).all() and (centred[1, 2:] < 0.02).all()


def test_centring_a_three_class_output_is_a_config_error_naming_the_setting() -> None:
    probs = np.full((3, 4, 4), 1 / 3, np.float32)
    with pytest.raises(ConfigError, match=r"segment.centre_logits: centres a binary task's foreground logits, but "
                                          r"the output has 3 classes \(background included\).*"
                                          r"set segment.centre_logits=false"):
        centre_logits(probs, 0.0)
    assert (probs == np.float32(1 / 3)).all()  # the input is left as it was
