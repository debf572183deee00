"""The command line: fast help, one-line errors, and the documented contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MEDSIGHT = [sys.executable, "-m", "medsight.cli.main"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDSIGHT, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_does_not_import_torch() -> None:
    code = "import sys, medsight.cli.main; print('torch' in sys.modules, 'monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_help_lists_the_verbs() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for verb in ("train", "evaluate", "predict", "demo", "data", "models"):
        assert verb in result.stdout


def test_missing_data_folder_is_one_line(tmp_path: Path) -> None:
    result = run_cli("data", "inspect", str(tmp_path / "missing-folder"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing-folder" in lines[0]


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a DICOM file at all" * 10],
    ids=["zero-byte", "not-dicom"],
)
def test_bad_file_stops_training_or_is_skipped_and_counted(
    tmp_path: Path, small_phantoms: Path, content: bytes
) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_phantoms, data)
    (data / "nodule" / "broken.dcm").write_bytes(content)
    args = ["train", "--recipe", "demo", "--data", str(data), "--epochs", "1", "--no-progress"]
    stopped = run_cli(*args, "--out", str(tmp_path / "stopped"))
    assert stopped.returncode != 0
    assert "Traceback" not in stopped.stderr
    assert "broken.dcm" in stopped.stderr
    assert not (tmp_path / "stopped" / "model").exists()

    skipped = run_cli(*args, "--on-bad-file", "skip", "--out", str(tmp_path / "skipped"))
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 1 unreadable file" in skipped.stderr
    listed = json.loads((tmp_path / "skipped" / "skipped_files.json").read_text())
    assert [Path(row["path"]).name for row in listed] == ["broken.dcm"]
    assert (tmp_path / "skipped" / "model" / "weights.safetensors").is_file()
    # the original data set is untouched
    assert (data / "nodule" / "broken.dcm").read_bytes() == content


def test_unknown_recipe_names_the_choices(tmp_path: Path) -> None:
    result = run_cli("train", "--recipe", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "medmnist" in result.stderr and "nope" in result.stderr and "(or none)" in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_override_is_reported(tmp_path: Path) -> None:
    result = run_cli("train", "--recipe", "demo", "--data", str(tmp_path), "--set", "train.epochs=-3")
    assert result.returncode != 0
    assert "train.epochs" in result.stderr and "Traceback" not in result.stderr


def test_models_list_has_the_issue_models() -> None:
    result = run_cli("models", "list")
    names = set(result.stdout.split())
    assert {"classic_cnn", "compact_cnn", "resnet18", "resnet50", "densenet121"} <= names


def test_metrics_json_contract(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for key in ("accuracy", "auc", "sensitivity", "specificity", "f1", "threshold", "n"):
        assert key in metrics
