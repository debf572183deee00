"""The demo runs end to end and says where everything is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from medsight.workflows.demo import run_demo


def test_demo_writes_and_reports_every_output(tmp_path: Path) -> None:
    text = run_demo(out=tmp_path, n_per_class=30, epochs=1, progress=False)
    for line in ("report:", "bundle:", "predictions:", "data:"):
        assert line in text
    assert (tmp_path / "run" / "report.html").is_file()
    assert (tmp_path / "run" / "model" / "weights.safetensors").is_file()
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 6
    assert all(row.split(",")[1] in {"nodule", "normal"} for row in rows[1:])
    assert "segmentation:" in text and "masks:" in text
    assert json.loads((tmp_path / "seg_run" / "metrics.json").read_text())["n"] == 8
    masks = sorted((tmp_path / "masks").glob("*_mask.png"))
    assert len(masks) == 3
    for mask in masks:  # lung fields: a sizeable share of a 64x64 phantom, not all of it
        share = (np.asarray(Image.open(mask)) > 0).mean()
        assert 0.05 < share < 0.6, (mask, share)
