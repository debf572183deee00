"""The run's two result formats (medsight/result_files.py): CSV tables and strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np

from medsight.result_files import write_csv_table, write_strict_json


def test_strict_json_writes_undefined_values_as_null_and_numpy_scalars_as_numbers(tmp_path) -> None:
    path = tmp_path / "metrics.json"
    write_strict_json(path, {"auc": float("nan"), "hd95": math.inf, "n": np.int64(3), "dice": np.float32(0.5),
                             "bins": (1, -math.inf), 7: "seven", "where": tmp_path})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auc": None, "hd95": None, "n": 3, "dice": 0.5, "bins": [1, None], "7": "seven",
                                "where": str(tmp_path)}
    assert text.startswith('{\n  "auc": null,')  # indented by 2
    assert not list(tmp_path.glob("*.tmp"))


def test_csv_table_has_the_header_then_one_line_per_row_with_missing_fields_empty(tmp_path) -> None:
    path = tmp_path / "per_case.csv"
    write_csv_table(path, [{"case_id": "a/é.png", "dice": 0.25}, {"case_id": "b", "note": "x,y"}],
                    ["case_id", "dice", "note"])
    assert path.read_bytes() == "case_id,dice,note\r\na/é.png,0.25,\r\nb,,\"x,y\"\r\n".encode()
