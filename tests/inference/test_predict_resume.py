"""`medsight predict --resume`: a stopped batch continues where it stopped, in order, losing nothing."""

import csv
import shutil

import pytest
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.errors import ConfigError
from medsight.inference.predictor import predict_to_file
from medsight.inference.results_csv import ResultsCsv


@pytest.fixture
def inputs(small_phantoms, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted((small_phantoms / "nodule").glob("*.png"))[:3] + sorted(
        (small_phantoms / "normal").glob("*.png")
    )[:3]:
        shutil.copy(path, folder / path.name)
    (folder / "zz_broken.png").write_bytes(b"not a png")
    return folder


def test_resume_after_a_crash_keeps_done_rows_and_drops_a_half_written_one(trained_run, inputs, tmp_path):
    out = tmp_path / "preds.csv"
    first = predict_to_file(bundle=trained_run / "model", inputs=[inputs], out=out, progress=False)
    assert first == {"ok": 6, "errors": 1, "skipped": 0}
    complete = out.read_text().splitlines()
    # a crash after 3 rows, in the middle of writing the 4th
    out.write_text("\n".join(complete[:4]) + "\n" + complete[4][:12])
    result = CliRunner().invoke(app, ["predict", str(trained_run / "model"), str(inputs), "--out", str(out),
                                      "--resume", "--no-progress"])
    assert result.exit_code == 3, result.output  # zz_broken.png failed again: exit 3, every row still written
    assert "4 predicted" not in result.output and "3 already done" in result.output
    assert result.output.splitlines()[-1] == "1 of 7 files failed (see the error column)"
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [line.split(",")[0] for line in complete[1:]]  # same files, same order
    assert out.read_text().splitlines() == complete  # identical to the uninterrupted run
    assert rows[-1]["error"] and not rows[-1]["label"]


def test_resume_into_json_or_another_models_csv_is_refused(trained_run, inputs, tmp_path):
    with pytest.raises(ConfigError, match="resume"):
        predict_to_file(bundle=trained_run / "model", inputs=[inputs], out=tmp_path / "p.json", resume=True,
                        progress=False)
    other = tmp_path / "other.csv"
    other.write_text("path,mask,voxels_background,error\na.png,a_mask.png,10,\n")
    before = other.read_text()
    with pytest.raises(ConfigError, match=r"another model or other options wrote it.*choose a new --out"):
        predict_to_file(bundle=trained_run / "model", inputs=[inputs], out=other, resume=True, progress=False)
    assert other.read_text() == before


def test_results_csv_without_resume_starts_over(tmp_path):
    path = tmp_path / "r.csv"
    with ResultsCsv(path, ["path", "error"]) as results:
        results.write({"path": "a", "error": ""})
    with ResultsCsv(path, ["path", "error"]) as results:
        assert results.done == set()
        results.write({"path": "b", "error": ""})
    assert path.read_text().splitlines() == ["path,error", "b,"]
