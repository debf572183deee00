"""``medsight robustness``: the table, CSV, plot and report, and clear errors for bad requests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from medsight.cli.robustness_cmd import robustness
from medsight.errors import ConfigError, DatasetError


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("robustness")(robustness)
    app.command("noop")(lambda: None)  # two commands, so "robustness" stays a sub-command
    return app


def test_cli_writes_table_csv_png_and_report(trained_run: Path, small_phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "rob"
    args = ["robustness", str(trained_run / "model"), "--data", str(small_phantoms), "--out", str(out),
            "--kind", "noise", "--kind", "contrast", "--kind", "fgsm", "--eps", "0.02", "--eps", "0.1",
            "--no-progress"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "clean accuracy=" in result.output and "robustness.csv" in result.output
    table = json.loads((out / "robustness.json").read_text())
    rows = table["rows"]
    assert [(r["kind"], r["severity"]) for r in rows] == (
        [("clean", 0)] + [("noise", s) for s in range(1, 6)] + [("contrast", s) for s in range(1, 6)]
        + [("fgsm", 0.02), ("fgsm", 0.1)]
    )
    assert table["split"] == "test" and table["n"] > 0
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert rows[0]["auc"] == pytest.approx(metrics["auc"], abs=1e-9), "clean row = the run's own test metrics"
    assert rows[-1]["auc"] < rows[0]["auc"], "fgsm at eps 0.1 should lower the AUC"
    with (out / "robustness.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(csv_rows) == len(rows) and csv_rows[3]["kind"] == "noise" and csv_rows[3]["severity"] == "3"
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert "Metric against severity" in html and "data:image/png;base64," in html and "contrast" in html


def test_same_seed_same_table(trained_run: Path, small_phantoms: Path, tmp_path: Path) -> None:
    from medsight.robustness.run import run_robustness

    runs = [run_robustness(bundle=trained_run / "model", data=str(small_phantoms), out=tmp_path / str(i),
                           kinds=["rotation"], severities=[5], max_cases=6, progress=False, seed=4)
            for i in range(2)]
    assert runs[0]["n"] == 6
    tables = [json.loads((tmp_path / str(i) / "robustness.json").read_text())["rows"] for i in range(2)]
    assert tables[0] == tables[1] and len(tables[0]) == 2


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--kind", "fog"], "unknown corruption or attack"),
        (["--kind", "ghosting"], "simulate MRI artefacts but these images are not MR"),
        (["--eps", "-0.1"], "eps must be a finite number >= 0"),
        (["--split", "nope"], "has no 'nope' split"),
    ],
)
def test_cli_bad_requests(trained_run: Path, small_phantoms: Path, tmp_path: Path, args: list[str], text: str) -> None:
    base = ["robustness", str(trained_run / "model"), "--data", str(small_phantoms), "--out", str(tmp_path),
            "--no-progress"]
    result = CliRunner().invoke(_app(), base + args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and text in result.output
    assert "Traceback" not in result.output


def test_bad_severity_and_task(trained_run: Path, small_phantoms: Path, tmp_path: Path) -> None:
    from medsight.robustness.run import run_robustness

    for severity in (0, 6):
        with pytest.raises(ConfigError, match="severity"):
            run_robustness(bundle=trained_run / "model", data=str(small_phantoms), out=tmp_path,
                           kinds=["noise"], severities=[severity], progress=False)
    with pytest.raises(DatasetError, match="not MR"):
        run_robustness(bundle=trained_run / "model", data=str(small_phantoms), out=tmp_path,
                       kinds=["bias_field"], progress=False)


def test_segmentation_bundle_is_scored_by_dice_under_corruption(tmp_path):
    from PIL import Image

    from medsight.config import load_config
    from medsight.robustness.run import run_robustness
    from medsight.segmentation.train import train_segmenter

    rng = np.random.default_rng(0)
    data = tmp_path / "discs"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    yy, xx = np.mgrid[:40, :40]
    for k in range(6):
        cy, cx = rng.integers(12, 28, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 49).astype(np.uint8)
        Image.fromarray(np.clip(60 + rng.normal(0, 10, (40, 40)) + 120 * mask, 0, 255).astype(np.uint8)).save(
            data / "images" / f"c{k}.png")
        Image.fromarray(mask * 255).save(data / "masks" / f"c{k}.png")
    cfg = load_config(overrides={"task": "segmentation", "data.path": str(data), "model.name": "unet",
                                 "model.kwargs": {"base_features": 8}, "segment.patch_size": [32, 32],
                                 "segment.batch_size": 4, "segment.steps_per_epoch": 10, "train.epochs": 3,
                                 "train.lr": 0.005})
    bundle = train_segmenter(cfg, out=tmp_path / "run", progress=False)["bundle"]
    result = run_robustness(bundle=bundle, data=str(data), out=tmp_path / "rob", kinds=["noise"],
                            severities=[1, 5], progress=False)
    rows = {(r["kind"], r["severity"]): r for r in result["rows"]}
    assert set(rows) == {("clean", 0), ("noise", 1), ("noise", 5)} and result["n"] == 6
    assert rows[("clean", 0)]["dice"] > 0.6
    assert rows[("noise", 5)]["dice"] < rows[("clean", 0)]["dice"]
    header = (tmp_path / "rob" / "robustness.csv").read_text().splitlines()[0]
    assert header == "kind,severity,dice,auc,accuracy"
    assert "no attacks are run on them" in (tmp_path / "rob" / "report.html").read_text()
    with pytest.raises(ConfigError, match="attacks are run on classifiers only"):
        run_robustness(bundle=bundle, data=str(data), out=tmp_path / "rob2", kinds=["fgsm"], progress=False)
    with pytest.raises(ConfigError, match="rotation moves the anatomy"):
        run_robustness(bundle=bundle, data=str(data), out=tmp_path / "rob3", kinds=["rotation"], progress=False)
    assert not (tmp_path / "rob2").exists() and not (tmp_path / "rob3").exists()
