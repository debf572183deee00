"""The promotion gate: a deliberately worse candidate is rejected with the numbers; an equal one passes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medsight.registry.gate import auc_gate, compare_bundles, dice_gate


def _probs(score: np.ndarray) -> np.ndarray:
    return np.stack([1 - score, score], axis=1)


def test_auc_gate_on_known_rankings() -> None:
    y = np.array([0, 1] * 30)
    perfect = _probs(y * 0.8 + 0.1)
    reversed_ = _probs(1 - (y * 0.8 + 0.1))
    worse = auc_gate(y, reversed_, perfect, n_boot=200)
    assert worse.production == pytest.approx(1.0) and worse.candidate == pytest.approx(0.0)
    assert worse.difference == pytest.approx(-1.0) and worse.ci_high < 0
    assert not worse.passed
    assert "REJECTED" in worse.table() and "-1.0000" in worse.table()
    same = auc_gate(y, perfect, perfect, n_boot=200)
    assert same.passed and same.difference == 0 and (same.ci_low, same.ci_high) == (0, 0)


def test_margin_rejects_a_small_drop() -> None:
    gate = dice_gate(np.full(20, 0.80), np.full(20, 0.85), n_boot=100, margin=0.01)
    assert gate.difference == pytest.approx(-0.05) and not gate.passed
    assert dice_gate(np.full(20, 0.845), np.full(20, 0.85), n_boot=100, margin=0.01).passed is False  # CI < 0
    assert dice_gate(np.full(20, 0.86), np.full(20, 0.85), n_boot=100).passed


def test_bundles_on_the_frozen_val_split(trained_run: Path, small_phantoms: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    production = trained_run / "model"
    equal = tmp_path / "equal"
    shutil.copytree(production, equal)
    worse = tmp_path / "worse"
    shutil.copytree(production, worse)
    state = load_file(str(worse / "weights.safetensors"))
    # the opposite model: the last layer's outputs swapped, so its ranking is reversed
    last_w, last_b = [k for k in state if k.endswith(".weight")][-1], [k for k in state if k.endswith(".bias")][-1]
    state[last_w], state[last_b] = state[last_w].flip(0).contiguous(), state[last_b].flip(0).contiguous()
    save_file(state, str(worse / "weights.safetensors"))

    rejected = compare_bundles(worse, production, data=small_phantoms, split="val", n_boot=200)
    assert rejected.production > 0.7 and rejected.candidate < 0.3  # reversed ranking: AUC = 1 - AUC
    assert rejected.candidate == pytest.approx(1 - rejected.production, abs=1e-6)
    assert rejected.difference < 0 and rejected.ci_low < rejected.difference < rejected.ci_high
    assert not rejected.passed and "REJECTED" in rejected.table()
    passed = compare_bundles(equal, production, data=small_phantoms, split="val", n_boot=200)
    assert passed.passed and passed.difference == 0
