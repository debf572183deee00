"""Benchmark: the default detection command on FracAtlas (train -> valid) and BCCD (train -> val).

For each set in ``../shared/data/detection`` (their test splits are withheld and never read), runs as a subprocess

    medsight train --task detection --data DATA --out RUN [--time-budget MIN]

which plans itself (RUN/plan.json), trains on the official train split and validates on the official val split,
and writes RUN/metrics.json (the val split, bootstrap CIs over images). Printed per set: AP50 (the mean over
classes of AP at IoU 0.5, "mAP50"), mAP@[.5:.95], AP at IoU 0.1, the FROC mean, per-class AP50, the wall time of
the whole command, the plan's choices, the training throughput (images per second, the median epoch of
RUN/metrics.csv) and, in the same run, the throughput of a plain MONAI RetinaNet loop on the same images
(bench/detection_reference.py) with the ratio.

Reproduce:
    .venv/bin/python bench/detection.py [--sets fracatlas bccd] [--time-budget MIN] [--ref-seconds 90]
        [--quick] [--out bench/out/detection]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from classification import cpu_model
from detection_reference import reference_throughput

ROOT = Path(__file__).resolve().parents[1]
SETS = {"fracatlas": "detection/fracatlas", "bccd": "detection/bccd"}
KEYS = ("ap50", "map", "ap10", "froc_mean", "image_auc")


def shared_data() -> Path:
    return Path(os.environ.get("MEDSIGHT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def medsight_command() -> list[str]:
    script = Path(sys.executable).parent / "medsight"
    return [str(script)] if script.exists() else [sys.executable, "-m", "medsight.cli.main"]


def run_medsight(data: Path, run: Path, args: argparse.Namespace) -> tuple[list[str], float]:
    command = [*medsight_command(), "train", "--task", "detection", "--data", str(data), "--out", str(run),
               "--no-progress"]
    if args.time_budget is not None:
        command += ["--time-budget", str(args.time_budget)]
    if args.quick:
        command += ["--set", "train.epochs=1", "--set", "eval.bootstrap=100"]
    if run.exists():
        shutil.rmtree(run)
    print("medsight:", shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return command, time.perf_counter() - start


def read_run(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    plan = json.loads((run / "plan.json").read_text()) if (run / "plan.json").exists() else {}
    config = yaml.safe_load((run / "config.yaml").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    speeds = [float(r["images_per_s"]) for r in rows if r.get("images_per_s") not in (None, "", "nan")]
    return {
        "metrics": {k: metrics.get(k) for k in KEYS}, "ci": {k: metrics.get("ci", {}).get(k) for k in KEYS},
        "per_class_ap50": {name: c.get("ap50") for name, c in metrics.get("per_class", {}).items()},
        "n_images": metrics.get("n_images"), "n_boxes": metrics.get("n_boxes"),
        "threshold": metrics.get("operating", {}).get("threshold") if isinstance(metrics.get("operating"), dict)
        else None,
        "epochs_run": len(rows), "images_per_s": float(np.median(speeds)) if speeds else None,
        "plan": {"input size": config["preprocess"]["size"], "anchors": config["detect"].get("anchor_sizes"),
                 "batch": config["train"]["batch_size"], "epochs": config["train"]["epochs"],
                 "time limit min": config["train"].get("time_limit_min"),
                 "estimated min": plan.get("estimated_min")},
        "config": config,
    }


def reference(data: Path, config: dict, seconds: float) -> dict:
    """The plain MONAI RetinaNet's throughput on the run's training images at the run's input size and batch."""
    from medsight.config import RunConfig
    from medsight.data.det_layouts import open_detection_set
    from medsight.data.splits import resolve_splits
    from medsight.detection.batches import load_box_set

    cfg = RunConfig.model_validate(config)
    dataset = open_detection_set(str(data), class_names=cfg.data.class_names)
    train = resolve_splits(dataset, cfg.data)["train"]
    box_set, _ = load_box_set(dataset, [dataset.cases[i] for i in train], cfg.preprocess, progress=False)
    boxes = [torch.from_numpy(b.corners) for b in box_set.boxes]
    labels = [torch.from_numpy(b.labels) for b in box_set.boxes]
    return reference_throughput(box_set.images, boxes, labels, num_classes=len(dataset.class_names),
                                batch_size=cfg.train.batch_size, seconds=seconds)


def _fmt(value, ci=None) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else "")


def run_set(name: str, args: argparse.Namespace) -> dict:
    data = shared_data() / SETS[name]
    print(f"== {name}: {data} (official train -> val; the test split is withheld)", flush=True)
    command, wall = run_medsight(data, Path(args.out) / name / "run", args)
    row = read_run(Path(args.out) / name / "run")
    ref = reference(data, row.pop("config"), args.ref_seconds)
    row.update(name=name, command=shlex.join(command), wall_s=round(wall, 1), reference=ref,
               throughput_ratio=(row["images_per_s"] / ref["images_per_s"]) if row["images_per_s"] else None)
    m, ci = row["metrics"], row["ci"]
    print(f"  val: n={row['n_images']} images, {row['n_boxes']} boxes; AP50 {_fmt(m['ap50'], ci['ap50'])}, "
          f"mAP {_fmt(m['map'], ci['map'])}, AP10 {_fmt(m['ap10'], ci['ap10'])}, "
          f"FROC mean {_fmt(m['froc_mean'], ci['froc_mean'])}, image AUC {_fmt(m['image_auc'])}")
    print(f"  per-class AP50: {', '.join(f'{k} {_fmt(v)}' for k, v in row['per_class_ap50'].items())}")
    print(f"  wall {row['wall_s']} s; plan: {row['plan']}; epochs run {row['epochs_run']}")
    print(f"  training {_fmt(row['images_per_s'])} images/s; plain MONAI RetinaNet {ref['images_per_s']:.3f} "
          f"images/s ({ref['steps']} steps, {ref['seconds']} s); ratio {_fmt(row['throughput_ratio'])}", flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| data | val images / boxes | AP50 [95% CI] | mAP [95% CI] | AP10 | FROC mean | wall s | epochs | "
             "medsight img/s | plain RetinaNet img/s | ratio |", "|" + "---|" * 11]
    for r in rows:
        m, ci = r["metrics"], r["ci"]
        lines.append(f"| {r['name']} | {r['n_images']} / {r['n_boxes']} | {_fmt(m['ap50'], ci['ap50'])} | "
                     f"{_fmt(m['map'], ci['map'])} | {_fmt(m['ap10'])} | {_fmt(m['froc_mean'])} | {r['wall_s']} | "
                     f"{r['epochs_run']} | {_fmt(r['images_per_s'])} | {r['reference']['images_per_s']:.3f} | "
                     f"{_fmt(r['throughput_ratio'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--time-budget", type=float, default=None, help="minutes (default: the plan's 60)")
    parser.add_argument("--ref-seconds", type=float, default=90.0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 100 bootstrap resamples")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "detection"))
    args = parser.parse_args()
    print("benchmark: medsight train --task detection with no recipe (planned), official train -> val")
    print(f"machine: {cpu_model()}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    rows = [run_set(name, args) for name in args.sets]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detection.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    (out / "detection.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
