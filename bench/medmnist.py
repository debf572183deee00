"""Benchmark: the default MedMNIST recipe on PneumoniaMNIST and BreastMNIST.

Trains `--recipe medmnist` on the train split of each shared `.npz` and reports on the
val split (the test split is withheld): ACC, AUC with 95% CIs, wall time, and training
throughput (images/s). In the same run it times a plain MONAI ResNet-18 + PyTorch loop on
the same training images and prints our throughput as a ratio of it.

Reproduce:
    .venv/bin/python bench/medmnist.py [--data ../shared/data/medmnist] [--sets pneumoniamnist breastmnist]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from medsight.config import load_config
from medsight.io.npz import read_medmnist
from medsight.workflows.train import run_training

ROOT = Path(__file__).resolve().parents[1]


def reference_throughput(images: np.ndarray, labels: np.ndarray, *, seconds: float = 30.0) -> float:
    """Images/s of a plain MONAI ResNet-18 training loop (Adam, batch 128, no augmentation)."""
    from monai.networks.nets import resnet18

    torch.manual_seed(0)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    y = torch.from_numpy(labels.astype(np.int64))
    net = resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    seen, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
            seen += len(idx)
            if time.perf_counter() - start >= seconds:
                break
    return seen / (time.perf_counter() - start)


def run(name: str, data_dir: Path, out_dir: Path, ref_seconds: float) -> dict:
    path = data_dir / f"{name}.npz"
    cfg = load_config(recipe="medmnist", overrides={"data.path": str(path), "name": name})
    start = time.perf_counter()
    run_training(cfg, out=out_dir / name, progress=False)
    wall = time.perf_counter() - start
    metrics = json.loads((out_dir / name / "metrics.json").read_text())
    bundle = json.loads((out_dir / name / "model" / "bundle.json").read_text())["provenance"]
    ours = bundle["n_train"] * bundle["epochs_run"] / bundle["train_seconds"]
    images, labels = read_medmnist(path)["train"]
    ref = reference_throughput(images, labels, seconds=ref_seconds)
    ci = metrics["metrics"]
    return {
        "dataset": name,
        "split": metrics["split"],
        "n": metrics["n"],
        "acc": round(metrics["accuracy"], 4),
        "acc_ci": [round(ci["accuracy"]["ci_low"], 4), round(ci["accuracy"]["ci_high"], 4)],
        "auc": round(metrics["auc"], 4),
        "auc_ci": [round(ci["auc"]["ci_low"], 4), round(ci["auc"]["ci_high"], 4)],
        "threshold": metrics["threshold"],
        "epochs_run": bundle["epochs_run"],
        "best_epoch": bundle["best_epoch"],
        "train_seconds": bundle["train_seconds"],
        "wall_seconds": round(wall, 1),
        "train_images_per_s": round(ours, 1),
        "reference_resnet18_images_per_s": round(ref, 1),
        "ratio_vs_reference": round(ours / ref, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = Path(os.environ.get("MEDSIGHT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "medmnist"
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--sets", nargs="+", default=["pneumoniamnist", "breastmnist"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "medmnist")
    parser.add_argument("--reference-seconds", type=float, default=30.0)
    args = parser.parse_args()
    rows = [run(name, args.data, args.out, args.reference_seconds) for name in args.sets]
    header = {
        "benchmark": "medmnist recipe, trained on train, reported on val",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": "python bench/medmnist.py " + " ".join(f"--sets {s}" for s in args.sets),
    }
    print(json.dumps({**header, "results": rows}, indent=2))
    lines = [
        "| data (split) | n | ACC [95% CI] | AUC [95% CI] | epochs | train s | img/s | MONAI R18 img/s | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} ({r['split']}) | {r['n']} | {r['acc']} [{r['acc_ci'][0]}, {r['acc_ci'][1]}] | "
            f"{r['auc']} [{r['auc_ci'][0]}, {r['auc_ci'][1]}] | {r['epochs_run']} | {r['train_seconds']} | "
            f"{r['train_images_per_s']} | {r['reference_resnet18_images_per_s']} | {r['ratio_vs_reference']} |"
        )
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "medmnist.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
