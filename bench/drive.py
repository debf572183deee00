"""Benchmark: the default segmentation recipe (`--recipe drive`) on DRIVE retinal vessels.

Trains on the 20 shared DRIVE training images split 15 train / 5 validation (seeded; the
DRIVE test images are withheld) and reports, on the 5 validation images and inside the
field of view: pixel ROC-AUC, F1 (= pooled Dice at the threshold chosen on those same
validation images, so it is optimistic) and accuracy, with the wall time. In the same run
it times a plain MONAI UNet + PyTorch loop (the same network, patch and batch, random crops,
Adam, no augmentation) and prints our training patches/s as a ratio of it.

Reproduce:
    .venv/bin/python bench/drive.py [--data ../shared/data/drive/training] [--minutes 25]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from medsight.config import load_config
from medsight.engine.pipeline import run_training

ROOT = Path(__file__).resolve().parents[1]


def reference_crops(dataset, patch: list[int], batch: int):
    """The plain reference loop's sampler: ``crops() -> (x, y)``, uniform random patches of the
    first 15 z-scored training images (no foreground oversampling, no augmentation)."""
    images, labels = [], []
    for item in dataset.items[:15]:
        sample, label, _ = dataset.read(item)
        images.append(torch.from_numpy((sample.array - sample.array.mean()) / sample.array.std()).float())
        labels.append(torch.from_numpy(label))

    def crops():
        xs, ys = [], []
        for _ in range(batch):
            k = int(torch.randint(len(images), ()))
            h, w = labels[k].shape
            y0, x0 = int(torch.randint(h - patch[0], ())), int(torch.randint(w - patch[1], ()))
            xs.append(images[k][:, y0 : y0 + patch[0], x0 : x0 + patch[1]])
            ys.append(labels[k][None, y0 : y0 + patch[0], x0 : x0 + patch[1]])
        return torch.stack(xs), torch.stack(ys)

    return crops


def reference_patches_per_s(cfg, data: Path, *, seconds: float = 30.0) -> float:
    """Patches/s of a plain MONAI UNet loop on random crops of the training images."""
    from monai.losses import DiceCELoss

    from medsight.data.seg_layouts import open_seg_dataset
    from medsight.models import create_model

    patch, batch = cfg.segment.patch_size, cfg.segment.batch_size
    crops = reference_crops(open_seg_dataset(data), patch, batch)
    torch.manual_seed(0)
    net = create_model("unet", in_channels=3, num_outputs=2, spatial_dims=2, **cfg.model.kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    net.train()
    seen, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, y = crops()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
        seen += batch
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "drive" / "training")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medsight-bench-drive"))
    parser.add_argument("--minutes", type=float, default=None, help="training time limit (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--ref-seconds", type=float, default=30.0)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe override KEY=VALUE")
    args = parser.parse_args()
    from medsight.cli.errors import parse_overrides

    overrides = {"data.path": str(args.data), "train.time_limit_min": args.minutes, "train.epochs": args.epochs,
                 **parse_overrides(args.sets)}
    cfg = load_config(recipe="drive", overrides=overrides)
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    run_training(cfg, out=args.out, progress=True)
    wall = time.perf_counter() - start
    metrics = json.loads((args.out / "metrics.json").read_text())
    history = list(csv.DictReader((args.out / "metrics.csv").open()))
    ours = float(np.median([float(row["patches_per_s"]) for row in history]))
    reference = reference_patches_per_s(cfg, args.data, seconds=args.ref_seconds)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {gpu}")
    print(f"data: {args.data} -> {metrics['cases_per_split']} (seeded split; DRIVE test withheld), "
          "metrics inside the field of view")
    flags = (f" --minutes {args.minutes}" if args.minutes else "") + (f" --epochs {args.epochs}" if args.epochs else "")
    flags += "".join(f" --set '{item}'" for item in args.sets)
    print(f"command: .venv/bin/python bench/drive.py --data {args.data}{flags}")
    print(f"threshold: {metrics['threshold_note']}\n")
    print("| split | n | AUC | F1 | accuracy | Dice (mean/case) | HD95 mm | epochs (best) | train s | wall s "
          "| patches/s | MONAI UNet patches/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| val | {metrics['n']} | {metrics['auc']:.4f} | {metrics['f1']:.4f} | {metrics['accuracy']:.4f} | "
          f"{metrics['dice']:.4f} | {metrics['hd95']:.2f} | {metrics['epochs_run']} ({metrics['best_epoch']}) | "
          f"{metrics['training_seconds']:.0f} | {wall:.0f} | {ours:.1f} | {reference:.1f} | {ours / reference:.2f} |")


if __name__ == "__main__":
    main()
