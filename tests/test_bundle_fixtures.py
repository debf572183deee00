"""Bundles written by an earlier medsight still load and predict what they predicted then.

``tests/fixtures/bundles/`` holds a classifier, a segmenter and a 2-fold segmentation ensemble as
``tests/fixtures/make_bundles.py`` wrote them (at the commit that added them, before the restructuring of
issue 32), with what each predicted for one fixed picture. A change to the bundle format or to the
prediction path that breaks old bundles fails here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.bundle import load_bundle
from medsight.io import read_image

FIXTURES = Path(__file__).parent / "fixtures"
BUNDLES = FIXTURES / "bundles"
#: float32 networks of a few thousand weights: a CPU that sums in another order (AVX2 or AVX-512) moves a
#: probability by a few float32 steps per layer (~1e-6 each); 1e-4 leaves two orders of magnitude.
ATOL = 1e-4


@pytest.fixture(scope="module")
def fixed_sample(tmp_path_factory: pytest.TempPathFactory):
    sys.path.insert(0, str(FIXTURES))
    from make_bundles import fixed_image

    picture = tmp_path_factory.mktemp("fixed") / "fixed.png"
    Image.fromarray(fixed_image(32)).save(picture)
    return read_image(picture)


@pytest.mark.parametrize(("name", "task", "labels"), [
    ("classifier", "classification", ["normal", "nodule"]),
    ("segmenter", "segmentation", ["background", "foreground"]),
    ("fold_ensemble", "segmentation", ["background", "foreground"]),
])
def test_an_old_bundle_loads_with_its_settings(name: str, task: str, labels: list[str]) -> None:
    written = json.loads((BUNDLES / name / "bundle.json").read_text())
    bundle = load_bundle(BUNDLES / name)
    assert bundle.task == task and bundle.label_names == labels
    if task == "classification":
        assert bundle.threshold == written["threshold"] and 0 < bundle.threshold < 1
    else:
        assert bundle.segmentation["thresholds"] == written["segmentation"]["thresholds"]
        assert 0 < bundle.segmentation["thresholds"]["1"] < 1
    if name == "fold_ensemble":
        assert bundle.model.kwargs["members"] == 2


def test_an_old_classifier_predicts_what_it_did(fixed_sample) -> None:
    from medsight.inference.predictor import Predictor

    expected = np.load(BUNDLES / "expected.npz")["classifier"]
    probabilities = Predictor(BUNDLES / "classifier").predict_sample(fixed_sample)["probabilities"]
    np.testing.assert_allclose(list(probabilities.values()), expected, atol=ATOL)


@pytest.mark.parametrize("name", ["segmenter", "fold_ensemble"])
def test_an_old_segmenter_predicts_what_it_did(fixed_sample, name: str) -> None:
    from medsight.inference.segmenter import Segmenter

    expected = np.load(BUNDLES / "expected.npz")[name]
    probabilities = Segmenter(BUNDLES / name).probabilities(fixed_sample)
    assert probabilities.shape == expected.shape == (2, 32, 32)
    np.testing.assert_allclose(probabilities, expected, atol=ATOL)
