"""`medsight predict`: CSV and JSON output, an error row per unreadable file."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from medsight.inference.predictor import Predictor, predict_to_file


def test_predict_folder_with_a_broken_file(trained_run: Path, small_phantoms: Path, tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    shutil.copytree(small_phantoms / "nodule", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "preds.csv"
    counts = predict_to_file(bundle=trained_run / "model", inputs=[folder], out=out, progress=False)
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert counts == {"ok": 40, "errors": 1, "skipped": 0}
    assert len(rows) == 41
    broken = next(r for r in rows if r["path"].endswith("broken.png"))
    assert "broken.png" in broken["error"] and broken["label"] == ""
    good = [r for r in rows if not r["error"]]
    assert all(abs(float(r["prob_normal"]) + float(r["prob_nodule"]) - 1) < 1e-5 for r in good)
    predictor = Predictor(trained_run / "model")
    first = good[0]
    assert float(first["prob_nodule"]) == predictor.predict_file(first["path"])["probabilities"]["nodule"]


def test_predict_json(trained_run: Path, small_phantoms: Path, tmp_path: Path) -> None:
    files = sorted((small_phantoms / "normal").glob("*.png"))[:3]
    out = tmp_path / "preds.json"
    predict_to_file(bundle=trained_run / "model", inputs=files, out=out, progress=False)
    rows = json.loads(out.read_text())
    assert [Path(r["path"]).name for r in rows] == [f.name for f in files]
    assert all(set(r["probabilities"]) == {"normal", "nodule"} and r["error"] == "" for r in rows)
