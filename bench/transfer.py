"""Benchmark: does pretraining help BreastMNIST? Three starts, same fine-tuning budget, 5 seeds.

1. **scratch**: the `medmnist` recipe (compact_cnn, width 32) on BreastMNIST, random init.
2. **supervised**: the same, starting from a compact_cnn trained (supervised, `medsight pretrain
   --mode supervised`) on the PneumoniaMNIST train split. Its head has the same shape (2 classes),
   so every tensor loads.
3. **simclr**: the same, starting from a compact_cnn encoder pretrained with SimCLR (`medsight
   pretrain --mode simclr`) on all shared 2D images, unlabelled: the PneumoniaMNIST and BreastMNIST
   **train** arrays, brain_mri_tumor, the 20 DRIVE training images, the pydicom DICOM files
   (volumes give slices), all resized to 28 px grey. The head is re-initialised.

BreastMNIST is trained on its train split and reported on its val split (the test split is
withheld; the threshold is chosen by Youden's J on that val split, so ACC is optimistic; AUC is
threshold-free). Each condition runs the seeds 0..4 with the same epochs, optimizer and
augmentation; the two pretrained weight files are made once (seed 0). Mean ± sample sd.

Reproduce:
    .venv/bin/python bench/transfer.py [--quick] [--seeds 5] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from medsight.config import load_config
from medsight.workflows.pretrain import run_pretrain
from medsight.workflows.train import run_training

ROOT = Path(__file__).resolve().parents[1]


def train_arrays_only(npz: Path, out: Path) -> Path:
    """A copy of ``npz`` holding its train images only (the unlabelled SimCLR input)."""
    with np.load(npz, allow_pickle=False) as archive:
        images = archive["train_images"]
    np.savez(out, train_images=images)
    return out


def finetune(breast: Path, out: Path, *, seed: int, epochs: int, pretrained: Path | None) -> dict:
    overrides = {"data.path": str(breast), "name": out.name, "train.seed": seed, "train.epochs": epochs,
                 "eval.bootstrap": 0, "model.pretrained": str(pretrained) if pretrained else None}
    cfg = load_config(recipe="medmnist", overrides=overrides)
    start = time.perf_counter()
    run_training(cfg, out=out, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seed": seed, "split": metrics["split"], "n": metrics["n"], "auc": metrics["auc"],
            "accuracy": metrics["accuracy"], "seconds": round(time.perf_counter() - start, 1)}


def summarise(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("MEDSIGHT_SHARED_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "transfer")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs on BreastMNIST (all conditions)")
    parser.add_argument("--supervised-epochs", type=int, default=10, help="PneumoniaMNIST pretraining epochs")
    parser.add_argument("--simclr-epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 3 epochs, 1-2 pretraining epochs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.supervised_epochs, args.simclr_epochs = 2, 3, 2, 1
    torch.set_num_threads(os.cpu_count() or 1)
    medmnist = args.data / "medmnist"
    breast = medmnist / "breastmnist.npz"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    t0 = time.perf_counter()
    sup = run_pretrain(data=[medmnist / "pneumoniamnist.npz"], out=out / "pre_supervised", mode="supervised",
                       recipe="medmnist", model="compact_cnn", model_kwargs={"width": 32, "dropout": 0.2},
                       size=28, epochs=args.supervised_epochs, batch_size=128, lr=0.003, progress=False)
    sup_seconds = time.perf_counter() - t0
    unlabelled = [
        train_arrays_only(medmnist / "pneumoniamnist.npz", out / "pneumonia_train.npz"),
        train_arrays_only(breast, out / "breast_train.npz"),
        args.data / "brain_mri_tumor",
        args.data / "drive" / "training" / "images",
        args.data / "dicom" / "pydicom",
    ]
    t0 = time.perf_counter()
    ssl = run_pretrain(data=unlabelled, out=out / "pre_simclr", mode="simclr", model="compact_cnn",
                       model_kwargs={"width": 32, "dropout": 0.2}, size=28, epochs=args.simclr_epochs,
                       batch_size=256, lr=0.002, temperature=0.5, progress=False)
    ssl_seconds = time.perf_counter() - t0

    conditions = {
        "scratch": None,
        "supervised (PneumoniaMNIST)": out / "pre_supervised" / "weights.safetensors",
        "simclr (all shared 2D)": out / "pre_simclr" / "weights.safetensors",
    }
    results = {}
    for label, weights in conditions.items():
        tag = label.split()[0]
        results[label] = [finetune(breast, out / f"{tag}_seed{seed}", seed=seed, epochs=args.epochs,
                                   pretrained=weights) for seed in range(args.seeds)]
    report = {
        "benchmark": "BreastMNIST: scratch vs fine-tuned from supervised PneumoniaMNIST vs fine-tuned from SimCLR",
        "data": f"{breast} (train -> fit, val -> reported; test withheld)",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": "python bench/transfer.py" + (" --quick" if args.quick else
                                                 f" --seeds {args.seeds} --epochs {args.epochs}"),
        "fine_tuning": f"medmnist recipe (compact_cnn w32, AdamW lr 0.003 cosine, augment), {args.epochs} epochs, "
                       f"seeds 0..{args.seeds - 1}, all layers trained",
        "supervised_pretraining": {"epochs": args.supervised_epochs, "seconds": round(sup_seconds, 1),
                                   "pneumonia_val": sup["source_metrics"]},
        "simclr_pretraining": {"epochs": args.simclr_epochs, "seconds": round(ssl_seconds, 1),
                               "n_images": ssl["n_images"], "images_per_source": ssl["images_per_source"],
                               "skipped_files": len(ssl["skipped_files"]),
                               "loss_first_last": [ssl["history"][0]["loss"], ssl["history"][-1]["loss"]]},
        "results": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2, default=str))
    lines = ["| start | seeds | epochs | val AUC (mean ± sd) | val ACC (mean ± sd) | s per run |",
             "|---|---|---|---|---|---|"]
    for label, runs in results.items():
        lines.append(f"| {label} | {len(runs)} | {args.epochs} | {summarise(runs, 'auc')} | "
                     f"{summarise(runs, 'accuracy')} | {statistics.mean(r['seconds'] for r in runs):.1f} |")
    table = "\n".join(lines)
    (out / "transfer.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "transfer.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
