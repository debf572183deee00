"""Benchmark: the default segmentation recipe (`--recipe drive`) on DRIVE retinal vessels.

The recipe is a 4-fold cross-validation of the 20 shared DRIVE training images (the DRIVE test
images are withheld) whose four fold models make one ensemble (``RUN/model``). Reported inside
the field of view: each fold's scores on its own 5 validation images, and the **out-of-fold**
pooled pixel ROC-AUC, F1 and accuracy over all 20 images (every image scored by the fold model
that did not train on it, at the threshold chosen on those same pooled predictions, so F1 is
slightly optimistic), with the wall time.

``--holdout 23,25,27,34,40`` keeps those images out of training altogether: the recipe runs on
the other 15, and its ensemble is scored on the held-out images at the threshold it chose
itself. That is the like-for-like estimate of what the recipe does on unseen images (the
withheld test set), and it scores the same 5 images as the single-model rows of bench/README.

In the same run it times a plain MONAI UNet + PyTorch loop (the same network, patch and batch,
random crops, Adam, no augmentation) and prints our training patches/s as a ratio of it.

Reproduce:
    .venv/bin/python bench/drive.py [--data ../shared/data/drive/training] [--holdout 23,25,27,34,40]
        [--out DIR] [--minutes M] [--epochs N] [--set KEY=VALUE ...]
The single model the recipe trained before 2026-12-04 (a seeded 15/5 split):
    .venv/bin/python bench/drive.py --set data.folds=1 --epochs 120 --minutes 25 --set segment.val_every=1
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
from medsight.workflows.train import run_training

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


def split_folder(data: Path, held_out: list[str], out: Path) -> tuple[Path, Path]:
    """Two data folders of links to ``data``'s files: the cases not in ``held_out`` and the held-out ones."""
    from medsight.data.seg_layouts import open_seg_dataset

    dataset = open_seg_dataset(data)
    missing = set(held_out) - {item.case_id for item in dataset.items}
    if missing:
        raise SystemExit(f"--holdout: {sorted(missing)} are not cases of {data}")
    folders = out / "train", out / "holdout"
    for item in dataset.items:
        folder = folders[item.case_id in held_out]
        for path in (item.image, item.mask, item.roi):
            if path is not None:
                link = folder / Path(path).relative_to(data)
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(Path(path).resolve())
    return folders


def row(name: str, m: dict, epochs: str = "", seconds: str = "") -> str:
    return (f"| {name} | {m['n']} | {m['auc']:.4f} | {m['f1']:.4f} | {m['accuracy']:.4f} | {m['dice_mean_case']:.4f} | "
            f"{m['hd95']:.2f} | {epochs} | {seconds} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "drive" / "training")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medsight-bench-drive"))
    parser.add_argument("--holdout", default="", help="comma-separated case ids kept out of training, e.g. "
                        "23,25,27,34,40 (the validation images of the single-model runs)")
    parser.add_argument("--minutes", type=float, default=None, help="time limit of each fold (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--ref-seconds", type=float, default=30.0)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe override KEY=VALUE")
    args = parser.parse_args()
    from medsight.cli.errors import parse_overrides
    from medsight.workflows.evaluate import run_evaluation

    held_out = [case.strip() for case in args.holdout.split(",") if case.strip()]
    train_data, holdout_data = split_folder(args.data, held_out, args.out / "data") if held_out else (args.data, None)
    overrides = {"data.path": str(train_data), **parse_overrides(args.sets)}
    overrides.update({key: value for key, value in (("train.time_limit_min", args.minutes),
                                                     ("train.epochs", args.epochs)) if value is not None})
    cfg = load_config(recipe="drive", overrides=overrides)
    torch.set_num_threads(os.cpu_count() or 1)
    run = args.out / "run"
    start = time.perf_counter()
    run_training(cfg, out=run, progress=True)
    wall = time.perf_counter() - start
    folds = sorted(run.glob("fold*/metrics.json")) or [run / "metrics.json"]
    history = [r for fold in folds for r in csv.DictReader((fold.parent / "metrics.csv").open())]
    ours = float(np.median([float(r["patches_per_s"]) for r in history if int(r["epoch"]) > 1]))
    reference = reference_patches_per_s(cfg, train_data, seconds=args.ref_seconds)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {gpu}")
    print(f"data: {train_data} (DRIVE test withheld){f'; held out: {held_out}' if held_out else ''}; "
          "metrics inside the field of view")
    flags = (f" --holdout {args.holdout}" if held_out else "") + "".join(f" --set '{item}'" for item in args.sets)
    flags += f" --minutes {args.minutes}" if args.minutes else ""
    flags += f" --epochs {args.epochs}" if args.epochs else ""
    print(f"command: .venv/bin/python bench/drive.py --data {args.data}{flags}\n")
    print("| scored on | n | AUC | F1 | accuracy | Dice (mean/case) | HD95 px | epochs (best) | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in folds:
        m = json.loads(path.read_text())
        name = f"{path.parent.name} val" if path.parent != run else "val"
        print(row(name, m, f"{m['epochs_run']} ({m['best_epoch']})", f"{m['training_seconds']:.0f}"))
    if len(folds) > 1 and (run / "metrics.json").is_file():
        m = json.loads((run / "metrics.json").read_text())
        print(row("all folds, out of fold (pooled)", m, seconds=f"{m['training_seconds']:.0f}"))
    if holdout_data is not None:
        m = run_evaluation(bundle=run / "model", data=str(holdout_data), out=args.out / "holdout_eval",
                           progress=False)
        print(row(f"held out ({'ensemble' if len(folds) > 1 else 'model'}, its own threshold)", m))
    print(f"\nthreshold: {json.loads((run / 'metrics.json').read_text())['threshold_note']}")
    print(f"wall s {wall:.0f} (training, thresholds and scoring); training patches/s {ours:.1f} (median epoch), "
          f"plain MONAI UNet loop {reference:.1f}, ratio {ours / reference:.2f}")


if __name__ == "__main__":
    main()
