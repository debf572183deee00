"""The files an evaluation, a plan, a run's config and the kept segmentation probabilities write are whole
or not at all: on a full disk the write says so in one line naming the file, leaves no ``*.tmp``, and the
previous version stays byte for byte.

The disk fills as in :mod:`test_disk_full`: the flush of the named temporary file fails with ``ENOSPC``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_disk_full import DISK_FULL, fill_disk_on

from medsight.classification.evaluate import aggregate_folds, evaluate_predictions
from medsight.config import EvalConfig, load_config, save_config
from medsight.errors import OutputWriteError
from medsight.segmentation.evaluate import keep_probabilities
from medsight.segmentation.plan import make_plan, write_plan


def evaluation(version: int, out: Path) -> None:
    """Scores of 40 cases; each version has its own probabilities, so every file differs between them."""
    rng = np.random.default_rng(version)
    y = np.arange(40) % 2
    pos = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 40), 0.01, 0.99)
    evaluate_predictions(y, np.stack([1 - pos, pos], axis=1), label_names=["normal", "nodule"],
                         case_ids=[f"case{i:02d}" for i in range(40)], threshold=0.5, threshold_note="fixed",
                         cfg=EvalConfig(bootstrap=0), out=out, title=f"version {version}", split="test")


def cross_validation(version: int, out: Path) -> None:
    folds = [{"n": 20, "accuracy": 0.5 + 0.1 * version, "auc": 0.6 + 0.1 * version}, {"n": 20, "accuracy": 0.7}]
    aggregate_folds(folds, out, title=f"version {version}")


def plan(version: int, out: Path) -> None:
    fp = {"median_spacing": [1.0, 1.0], "spacings": [[1.0, 1.0]], "shapes": [[64, 64]], "modality": "MR",
          "foreground_intensity": [], "labels": [0, 1]}
    write_plan(make_plan(fp, overrides={"batch_size": version}), out / "plan.json")


def probabilities(version: int, out: Path) -> None:
    keep_probabilities(out / "case.npy", np.full((2, 4, 4), version / 4))


def config(version: int, out: Path) -> None:
    save_config(load_config(recipe="demo", overrides={"train.epochs": version}), out / "config.yaml")


@pytest.mark.parametrize(("name", "write"), [
    ("metrics.json", evaluation), ("per_case.csv", evaluation), ("report.html", evaluation),
    ("roc.png", evaluation), ("cv_metrics.json", cross_validation), ("cv_report.html", cross_validation),
    ("plan.json", plan), ("config.yaml", config), ("case.npy", probabilities),
])
def test_a_full_disk_keeps_the_previous_file(
    name: str, write: Callable[[int, Path], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(1, tmp_path)
    before = (tmp_path / name).read_bytes()
    fill_disk_on(monkeypatch, name + ".tmp", nth=1)
    with pytest.raises(OutputWriteError) as info:
        write(2, tmp_path)
    monkeypatch.undo()

    assert str(info.value) == f"{tmp_path / name}: {DISK_FULL} or write the run to another folder (--out)"
    assert (tmp_path / name).read_bytes() == before
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []
    write(2, tmp_path)  # with room again, the new version replaces the old one
    assert (tmp_path / name).read_bytes() != before


def test_kept_probabilities_read_back_under_their_own_name(tmp_path: Path) -> None:
    probabilities(3, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.npy"]
    kept = np.load(tmp_path / "case.npy")
    assert kept.dtype == np.float16 and kept.shape == (2, 4, 4) and np.all(kept == 0.75)
