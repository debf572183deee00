"""Each plot writes a PNG, including for degenerate data (one class only)."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.classification.metrics import reliability_bins
from medsight.report.plots import (
    confusion_figure,
    pr_figure,
    reliability_figure,
    roc_figure,
    training_curves_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def data(k: int, one_class: bool = False):
    rng = np.random.default_rng(k)
    y = np.zeros(40, dtype=int) if one_class else rng.integers(0, k, 40)
    probs = rng.dirichlet(np.ones(k), 40)
    return y, probs, [f"c{i}" for i in range(k)]


@pytest.mark.parametrize(("k", "one_class"), [(2, False), (3, False), (2, True)])
def test_curves_write_png(tmp_path, k, one_class):
    y, probs, names = data(k, one_class)
    point = (0.2, 0.8) if k == 2 else None
    for plot, name in ((roc_figure, "roc.png"), (pr_figure, "pr.png")):
        path = plot(y, probs, names, tmp_path / name, operating_point=point)
        assert path.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("k", [2, 4])
def test_confusion_and_reliability_write_png(tmp_path, k):
    y, probs, names = data(k)
    matrix = np.bincount(y * k + probs.argmax(1), minlength=k * k).reshape(k, k)
    assert confusion_figure(matrix, names, tmp_path / "cm.png").read_bytes().startswith(PNG_MAGIC)
    bins = reliability_bins(y, probs)
    assert reliability_figure(bins, 0.1, tmp_path / "cal.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("epoch,train_loss,val_loss,val_auc\n1,0.7,0.6,0.7\n2,0.5,0.5,\n", True),  # blank cell is a gap
        ("epoch,train_loss\n", False),  # header only
        ("step,loss\n1,0.5\n", False),  # no epoch column
    ],
)
def test_training_curves(tmp_path, text, written):
    history = tmp_path / "metrics.csv"
    history.write_text(text)
    result = training_curves_figure(history, tmp_path / "curves.png")
    assert (result is not None) == written
    if written:
        assert result.read_bytes().startswith(PNG_MAGIC)
