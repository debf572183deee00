"""The one predictive entropy (models/heads.py) and the logits-to-probabilities mapping beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsight.models.heads import entropy, logits_to_probs


def test_entropy_of_known_distributions_in_nats() -> None:
    rows = np.array([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75], [1 / 3, 2 / 3]])
    expected = [0.0, np.log(2), -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)),
                -(np.log(1 / 3) / 3 + 2 * np.log(2 / 3) / 3)]
    assert entropy(rows, axis=1) == pytest.approx(expected, abs=1e-15)
    assert entropy(np.full(4, 0.25), axis=0) == pytest.approx(np.log(4))


def test_entropy_counts_zero_probabilities_as_zero_and_clips_round_off_above_one() -> None:
    # 0 log 0 = 0 (no NaN); 1 + 1e-7 (float32 round-off of a softmax) counts as 1, never a negative term
    assert entropy(np.array([[0.0, 1.0 + 1e-7]]), axis=1) == pytest.approx([0.0])


def test_entropy_along_the_class_axis_of_a_map_keeps_the_maps_precision() -> None:
    maps = np.stack([np.full((3, 4), 0.5), np.full((3, 4), 0.5)]).astype(np.float32)  # (K, H, W)
    result = entropy(maps, axis=0, dtype=maps.dtype)
    assert result.shape == (3, 4) and result.dtype == np.float32
    assert result == pytest.approx(np.full((3, 4), np.log(2)), rel=1e-6)  # float32: 6 significant digits


def test_a_sigmoid_logit_becomes_two_probabilities() -> None:
    probs = logits_to_probs(torch.tensor([[0.0], [np.log(3)]]), "sigmoid")
    assert probs.numpy() == pytest.approx(np.array([[0.5, 0.5], [0.25, 0.75]]), abs=1e-6)
