"""``export_dataset``: feedback becomes class folders (or images/ + masks/) that the trainers' readers open."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from feedback_data import png_bytes
from PIL import Image

from medsight.feedback import FeedbackError, FeedbackStore, export_dataset


def _add(store: FeedbackStore, data: bytes, kind: str, *, predicted: str = "normal", label: str | None = None,
         mask: bytes | None = None) -> str:
    sha = hashlib.sha256(data).hexdigest()
    store.add(sha256=sha, user_id="key-1", model_name="m", model_version="sha256:1", kind=kind,
              prediction={"label": predicted}, label=label, input_data=data, input_kind="png",
              mask_data=mask, mask_kind="png")
    return sha


def test_classification_export_reads_as_class_folders(tmp_path: Path) -> None:
    from medsight.data.layouts import open_dataset

    store = FeedbackStore(tmp_path / "fb")
    agreed = _add(store, png_bytes(1), "agree", predicted="nodule")
    corrected = _add(store, png_bytes(2), "label", predicted="nodule", label="normal")
    changed = _add(store, png_bytes(3), "agree", predicted="normal")
    _add(store, png_bytes(3), "label", predicted="normal", label="nodule")  # the newer verdict wins
    manifest = export_dataset(tmp_path / "fb", tmp_path / "out")
    assert manifest["task"] == "classification" and manifest["n_cases"] == 3
    ds = open_dataset(tmp_path / "out")
    assert ds.class_names == ["nodule", "normal"]
    found = {Path(item.source).stem: ds.class_names[item.label] for item in ds.items}
    assert found == {agreed: "nodule", corrected: "normal", changed: "nodule"}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["n_cases"] == 3
    assert ds.read(ds.items[0]).array.shape == (1, 40, 36)


def test_mask_export_reads_as_image_mask_pairs(tmp_path: Path) -> None:
    from medsight.data.seg_layouts import open_seg_dataset

    store = FeedbackStore(tmp_path / "fb")
    mask = np.zeros((40, 36), np.uint8)
    mask[8:18, 10:20] = 1
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    sha = _add(store, png_bytes(1), "mask", mask=buffer.getvalue())
    export_dataset(tmp_path / "fb", tmp_path / "out")
    ds = open_seg_dataset(tmp_path / "out")
    assert [item.case_id for item in ds.items] == [sha]
    _, labels, _ = ds.read(ds.items[0])
    assert int((np.asarray(labels) > 0).sum()) == 100


def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(FeedbackError, match="holds no feedback.*POST /v1/feedback"):
        export_dataset(tmp_path / "empty", tmp_path / "out")
    store = FeedbackStore(tmp_path / "fb")
    _add(store, png_bytes(1), "agree")
    _add(store, png_bytes(2), "mask", mask=png_bytes(2))
    with pytest.raises(FeedbackError, match="mixes mask feedback"):
        export_dataset(tmp_path / "fb", tmp_path / "out")
    with pytest.raises(FeedbackError, match="needs the correct label"):
        store.add(sha256="a" * 64, user_id="u", model_name="m", model_version="v", kind="label", prediction={})
