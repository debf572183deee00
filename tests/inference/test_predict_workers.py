"""`medsight predict --workers N`: the same rows in the same order as one worker, and resumable."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from medsight.errors import ConfigError
from medsight.inference.parallel import predict_parallel, segment_parallel, worker_threads
from medsight.inference.predictor import predict_to_file


@pytest.fixture(scope="module")
def inputs(small_phantoms, tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    for path in sorted((small_phantoms / "nodule").glob("*.png"))[:5] + sorted(
        (small_phantoms / "normal").glob("*.png")
    )[:5]:
        shutil.copy(path, folder / path.name)
    (folder / "m_broken.png").write_bytes(b"not a png")  # sorts in the middle
    return folder


@pytest.fixture(scope="module")
def one_worker_csv(trained_run, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "preds.csv"
    assert predict_to_file(bundle=trained_run / "model", inputs=[inputs], out=out, progress=False) == {
        "ok": 10, "errors": 1, "skipped": 0}
    return out.read_text()


def test_two_workers_write_the_one_worker_csv(trained_run, inputs, one_worker_csv, tmp_path):
    out = tmp_path / "preds.csv"
    counts = predict_parallel(bundle=trained_run / "model", inputs=[inputs], out=out, workers=2, progress=False)
    assert counts == {"ok": 10, "errors": 1, "skipped": 0}
    assert out.read_text() == one_worker_csv  # same rows, same order, same numbers
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    broken = next(r for r in rows if r["path"].endswith("m_broken.png"))
    assert broken["error"] and not broken["label"]


def test_resume_with_workers_after_an_interrupted_run(trained_run, inputs, one_worker_csv, tmp_path):
    out = tmp_path / "preds.csv"
    lines = one_worker_csv.splitlines()
    broken = next(line for line in lines if line.startswith(str(inputs / "m_broken.png")))
    assert lines.index(broken) == 1  # m_ sorts before nodule_ and normal_: the first row
    out.write_text("\n".join(lines[:5]) + "\n" + lines[5][:9])  # stopped while writing the 5th row
    counts = predict_parallel(bundle=trained_run / "model", inputs=[inputs], out=out, workers=2, resume=True,
                              progress=False)
    assert counts == {"ok": 7, "errors": 1, "skipped": 3}  # the failed file is tried again, and fails again
    # the 3 complete rows of files that succeeded stay; the rest follow in input order, the retried file first
    assert out.read_text().splitlines() == [lines[0], *lines[2:5], broken, *lines[5:]]
    retried_last = [line for line in lines if line != broken] + [broken]
    again = predict_parallel(bundle=trained_run / "model", inputs=[inputs], out=out, workers=2, resume=True,
                             progress=False)
    assert again == {"ok": 0, "errors": 1, "skipped": 10} and out.read_text().splitlines() == retried_last


def test_cli_workers_option(trained_run, inputs, one_worker_csv, tmp_path):
    from medsight.cli.predict_cmd import predict

    app = typer.Typer()
    app.command()(predict)
    out = tmp_path / "cli.csv"
    result = CliRunner().invoke(app, [str(trained_run / "model"), str(inputs), "--out", str(out), "--workers", "2",
                                      "--no-progress"])
    assert result.exit_code == 3, result.output  # a file failed: every row is written, and the exit code says so
    assert "10 predicted, 1 failed, 0 already done" in result.output
    assert result.output.splitlines()[-1] == "1 of 11 files failed (see the error column)"
    assert out.read_text() == one_worker_csv
    bad = CliRunner().invoke(app, [str(trained_run / "model"), str(inputs), "--workers", "0"])
    assert bad.exit_code != 0 and "--workers" in bad.output


def test_bad_worker_requests_say_what_to_do(trained_run, inputs, tmp_path):
    with pytest.raises(ConfigError, match="at least one worker"):
        predict_parallel(bundle=trained_run / "model", inputs=[inputs], out=tmp_path / "p.csv", workers=0)
    with pytest.raises(ConfigError, match="use a .csv output"):
        predict_parallel(bundle=trained_run / "model", inputs=[inputs], out=tmp_path / "p.json", workers=2)
    assert worker_threads(1) >= worker_threads(2) >= 1


def test_two_workers_write_the_same_masks_as_one(tmp_path):
    from medsight.config import load_config
    from medsight.inference.segmenter import segment_to_folder
    from medsight.segmentation.train import train_segmenter

    rng = np.random.default_rng(3)
    root = tmp_path / "discs"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:32, :32]
    for k in range(6):
        mask = ((yy - 10 - 2 * k) ** 2 + (xx - 16) ** 2 <= 36).astype(np.uint8)
        image = np.clip(60 + rng.normal(0, 15, (32, 32)) + 120 * mask, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"case{k}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"case{k}.png")
    cfg = load_config(overrides={
        "task": "segmentation", "data.path": str(root), "model.name": "unet", "model.kwargs": {"base_features": 4},
        "segment.patch_size": [32, 32], "segment.batch_size": 2, "segment.steps_per_epoch": 2, "train.epochs": 1,
    })
    bundle = train_segmenter(cfg, out=tmp_path / "run", progress=False)["bundle"]
    serial = segment_to_folder(bundle=bundle, inputs=[root / "images"], out=tmp_path / "m1", progress=False,
                               probabilities=True)
    parallel = segment_parallel(bundle=bundle, inputs=[root / "images"], out=tmp_path / "m2", workers=2,
                                progress=False, probabilities=True)
    assert serial == parallel == {"ok": 6, "errors": 0, "skipped": 0}
    one = (tmp_path / "m1" / "predictions.csv").read_text()
    two = (tmp_path / "m2" / "predictions.csv").read_text()
    assert two == one.replace(str(tmp_path / "m1"), str(tmp_path / "m2"))
    written = sorted((tmp_path / "m1").glob("*.png"))
    assert len(written) == 18  # mask, uncertainty and foreground probability map of each case
    for mask in written:
        assert mask.read_bytes() == (tmp_path / "m2" / mask.name).read_bytes()
