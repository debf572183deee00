"""One bad file never stops a batch, at the command line (issue 31).

Corrupted DICOM and NIfTI files (tests/corrupt_files.py) and a decompression-bomb PNG go
through ``medsight predict``, ``explain``, ``data inspect`` and ``train --on-bad-file skip``:
each bad file gets a clear one-line error and the others go on; ``predict`` and ``explain``
exit 3 and say how many files failed.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from corrupt_files import corrupt_dicom_corpus, corrupt_nifti_corpus
from PIL import Image

MEDSIGHT = [sys.executable, "-m", "medsight.cli.main"]
#: 33000 x 33000 = 1,089,000,000 pixels: over Pillow's bomb limit (2 x 89,478,485) and the CLI's voxel limit (2^30).
BOMB_SIDE = 33000


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDSIGHT, *args], capture_output=True, text=True, timeout=600)


def bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid 1-bit PNG of zeros, ``side`` x ``side`` pixels, in about 130 KB.

    Written row by row through zlib, so making it takes a few MB of memory where Pillow would
    hold the whole image (one byte a pixel).
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the row's bits
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def says_the_bomb_is_too_large(reason: str, path: Path) -> bool:
    """One line naming the file and its 1,089,000,000 pixels (Pillow's words or medsight's limit)."""
    return "\n" not in reason and str(path) in reason and re.search(r"1,?089,?000,?000", reason) is not None


def assert_clear_rows(rows: list[dict[str, str]], files: list[Path]) -> int:
    """Exactly one row per file, each a prediction or a one-line error naming the file and a reason; the failures."""
    assert sorted(r["path"] for r in rows) == sorted(str(f) for f in files)
    failed = 0
    for row in rows:
        if row["error"]:
            failed += 1
            where, _, reason = row["error"].partition(": ")
            assert "\n" not in row["error"] and Path(row["path"]).name in where and len(reason) > 10, row
            assert row["label"] == "" and row["prob_nodule"] == "", row
        else:
            assert row["label"] in {"normal", "nodule"}, row
            assert float(row["prob_normal"]) + float(row["prob_nodule"]) == pytest.approx(1, abs=1e-5)
    return failed


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about every element the corruption broke
@pytest.mark.parametrize(("kind", "n"), [("dicom", 100), ("nifti", 10)])
def test_a_corrupted_corpus_gets_one_clear_row_per_file_and_resumes(trained_run, tmp_path, kind, n):
    make = corrupt_dicom_corpus if kind == "dicom" else corrupt_nifti_corpus
    files = make(tmp_path / kind, n=n, seed=0)
    out = tmp_path / "preds.csv"
    result = run_cli("predict", str(trained_run / "model"), str(tmp_path / kind), "--out", str(out), "--no-progress")
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    failed = assert_clear_rows(rows, files)
    assert failed > 0 and result.returncode == 3, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == f"{failed} of {n} files failed (see the error column)"

    again = run_cli("predict", str(trained_run / "model"), str(tmp_path / kind), "--out", str(out), "--resume",
                    "--no-progress")
    assert "Traceback" not in again.stdout + again.stderr and again.returncode == 3, again.stderr[-3000:]
    assert f"0 predicted, {failed} failed, {n - failed} already done" in again.stdout
    resumed = list(csv.DictReader(out.open()))
    assert assert_clear_rows(resumed, files) == failed  # the failed files were tried again, and fail again
    assert [r for r in resumed if not r["error"]] == [r for r in rows if not r["error"]]  # kept as they were


@pytest.fixture
def inbox(small_phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three phantom PNGs and a decompression bomb (sorted first)."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    for path in sorted((small_phantoms / "nodule").glob("*.png"))[:3]:
        shutil.copy(path, folder / path.name)
    bomb_png(folder / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # here, read the header without Pillow's bomb check
    with Image.open(folder / "bomb.png") as opened:
        assert opened.size == (BOMB_SIDE, BOMB_SIDE) and opened.mode == "1"
    return folder


def test_a_bomb_png_is_one_clear_row_in_predict_and_explain(trained_run, inbox, tmp_path):
    bomb = inbox / "bomb.png"
    predicted = run_cli("predict", str(trained_run / "model"), str(inbox), "--out", str(tmp_path / "p.csv"),
                        "--no-progress")
    assert predicted.returncode == 3 and "Traceback" not in predicted.stderr, predicted.stderr[-3000:]
    assert "3 predicted, 1 failed, 0 already done" in predicted.stdout
    assert predicted.stderr.strip().splitlines()[-1] == "1 of 4 files failed (see the error column)"
    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "p.csv").open())}
    assert says_the_bomb_is_too_large(rows["bomb.png"]["error"], bomb) and rows["bomb.png"]["label"] == ""
    assert all(rows[name]["label"] and not rows[name]["error"] for name in rows if name != "bomb.png")

    explained = run_cli("explain", str(trained_run / "model"), str(inbox), "--out", str(tmp_path / "cams"),
                        "--no-progress")
    assert explained.returncode == 3 and "Traceback" not in explained.stderr, explained.stderr[-3000:]
    assert explained.stderr.strip().splitlines()[-1] == "1 of 4 files failed (see the error column)"
    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "cams" / "explanations.csv").open())}
    assert says_the_bomb_is_too_large(rows["bomb.png"]["error"], bomb) and rows["bomb.png"]["overlay"] == ""
    for name in set(rows) - {"bomb.png"}:
        assert Path(rows[name]["overlay"]).is_file() and not rows[name]["error"]


def test_a_bomb_png_is_listed_by_data_inspect(inbox, tmp_path):
    result = run_cli("data", "inspect", str(inbox), "--out", str(tmp_path / "report.json"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n_items"] == 4 and report["n_readable"] == 3
    (unreadable,) = report["unreadable"]
    assert unreadable["path"] == str(inbox / "bomb.png")
    assert says_the_bomb_is_too_large(unreadable["reason"], inbox / "bomb.png")
    assert "unreadable files" in result.stdout and "bomb.png" in result.stdout


def test_a_bomb_png_is_skipped_by_training_and_stops_it_in_one_line_without_skip(small_phantoms, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_phantoms, data)
    bomb = bomb_png(data / "nodule" / "bomb.png")
    args = _train_args(data)
    listed = _the_one_skipped_file(args, tmp_path / "skipped")
    assert listed["path"] == str(bomb) and says_the_bomb_is_too_large(listed["reason"], bomb)

    stopped = run_cli(*args, "--out", str(tmp_path / "stopped"))
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    (line,) = [line for line in stopped.stderr.splitlines() if line.strip()]
    assert line.startswith("error: ") and says_the_bomb_is_too_large(line, bomb)
    assert not (tmp_path / "stopped" / "model").exists()


def test_predict_exits_0_when_every_file_succeeds(trained_run, small_phantoms, tmp_path):
    images = sorted((small_phantoms / "normal").glob("*.png"))[:2]
    result = run_cli("predict", str(trained_run / "model"), *map(str, images), "--out", str(tmp_path / "p.csv"),
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "2 predicted, 0 failed, 0 already done" in result.stdout and "failed (see" not in result.stderr
    assert len(list(csv.DictReader((tmp_path / "p.csv").open()))) == 2


def test_a_manifest_row_whose_file_is_missing_is_skipped_by_training_with_skip(small_phantoms, tmp_path):
    rows = [f"{path},{label}" for label in ("normal", "nodule")
            for path in sorted((small_phantoms / label).glob("*.png"))]
    rows.insert(3, f"{small_phantoms / 'nodule' / 'gone.png'},nodule")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    args = _train_args(manifest)
    listed = _the_one_skipped_file(args, tmp_path / "skipped")
    assert listed["path"] == f"{manifest}:5" and "gone.png" in listed["reason"]

    stopped = run_cli(*args, "--out", str(tmp_path / "stopped"))
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert "gone.png" in stopped.stderr and not (tmp_path / "stopped" / "model").exists()


def _train_args(data) -> list[str]:
    """A one-epoch demo-recipe training of ``data`` on 32 px images, without bootstrap CIs."""
    return ["train", "--recipe", "demo", "--data", str(data), "--epochs", "1", "--set", "preprocess.size=[32,32]",
            "--set", "eval.bootstrap=0", "--no-progress"]


def _the_one_skipped_file(args: list[str], out) -> dict:
    """Train with ``--on-bad-file skip`` into ``out``: it succeeds, says it skipped one file, ships a model, and
    lists that one file (returned) in skipped_files.json."""
    skipped = run_cli(*args, "--on-bad-file", "skip", "--out", str(out))
    assert skipped.returncode == 0 and "Traceback" not in skipped.stderr, skipped.stderr[-3000:]
    assert "skipped 1 unreadable file" in skipped.stderr
    assert (out / "model" / "weights.safetensors").is_file()
    (listed,) = json.loads((out / "skipped_files.json").read_text())
    return listed
