"""The triage state: the model's outputs per case and their discretisation."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.models.heads import entropy
from medsight.triage.features import CaseOutputs, StateConfig, StateEncoder, case_outputs


@pytest.fixture(scope="module")
def predictor():
    import torch

    from medsight.bundle import Bundle
    from medsight.config import ModelConfig, PreprocessConfig
    from medsight.inference.predictor import Predictor
    from medsight.models import create_model

    torch.manual_seed(0)
    net = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2, width=4)
    bundle = Bundle(task="classification", model=ModelConfig(name="compact_cnn", kwargs={"width": 4}),
                    preprocess=PreprocessConfig(size=[16, 16], channels=1), label_names=["normal", "nodule"],
                    state_dict=net.state_dict())
    return Predictor(bundle)


def test_case_outputs_are_the_predictor_probabilities_entropy_and_penultimate_features(predictor) -> None:
    images = np.random.default_rng(0).random((5, 1, 16, 16)).astype(np.float32)
    outputs = case_outputs(predictor, images, tta_passes=1, batch_size=2)
    assert outputs.probs == pytest.approx(predictor.predict_arrays(images), abs=1e-6)
    assert outputs.uncertainty == pytest.approx(entropy(outputs.probs, axis=1))
    assert outputs.embedding.shape == (5, 16)  # compact_cnn width 4: 16 channels before the head
    assert outputs.p_finding == pytest.approx(outputs.probs[:, 1])
    assert not predictor.model.head._forward_pre_hooks  # the hook is gone
    mirrored = case_outputs(predictor, images, tta_passes=2)
    mean = (predictor.predict_arrays(images) + predictor.predict_arrays(images[..., ::-1].copy())) / 2
    assert mirrored.uncertainty == pytest.approx(entropy(mean, axis=1), abs=1e-6)


def test_state_encoder_bins_and_round_trip() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(300)
    outputs = CaseOutputs(np.stack([1 - p, p], 1), rng.random(300), rng.normal(size=(300, 6)))
    encoder = StateEncoder.fit(outputs, StateConfig(prob_bins=5, uncertainty_bins=3, embedding_components=2))
    bins = encoder.bins(outputs)
    assert encoder.sizes == (5, 3, 2, 2, 2)
    assert encoder.feature_names == ["p_finding", "uncertainty", "embedding_norm", "embedding_pc1", "embedding_pc2"]
    assert np.array_equal(bins[:, 0], np.minimum((p * 5).astype(int), 4))
    assert np.bincount(bins[:, 1]).tolist() == [100, 100, 100]  # quantile bins on the training episodes
    again = StateEncoder.from_tensors(encoder.to_tensors(), encoder.config)
    assert np.array_equal(again.bins(outputs), bins)
