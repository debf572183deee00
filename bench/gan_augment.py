"""GAN augmentation on BreastMNIST: does mixing DCGAN samples into training help a small classifier?

What: a compact CNN (the medmnist recipe) trained on 25% and 100% of BreastMNIST's train split,
without and with class-conditional DCGAN samples (train.synthetic_ratio, default 1.0), 5 seeds
each, scored on BreastMNIST's own val split (78 images; test_* is never read). One DCGAN per
fraction is trained on that fraction's real images only (a fixed stratified subset, seed 0), so
the synthetic arm sees no real image the plain arm does not. The GAN quality figures (classifier
Fréchet distance, not Inception FID; TSTR) use a classifier trained on the same real subset.

Run: ``.venv/bin/python bench/gan_augment.py [--quick] [--out runs/bench_gan]``; prints JSON and
writes ``OUT/gan_augment.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmnist" / "breastmnist.npz"


def subset_npz(src: Path, fraction: float, out: Path) -> Path:
    """``fraction`` of the train split (stratified, seed 0) with the full val split; test is not copied."""
    raw = np.load(src)
    labels = raw["train_labels"].ravel()
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(labels == k), max(1, round(fraction * (labels == k).sum())), replace=False)
        for k in np.unique(labels)]))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, train_images=raw["train_images"][keep], train_labels=raw["train_labels"][keep],
             val_images=raw["val_images"], val_labels=raw["val_labels"])
    return out


def train_classifier(data: Path, out: Path, *, seed: int, epochs: int, synthetic: Path | None, ratio: float) -> dict:
    from medsight.bundle import load_bundle
    from medsight.config import load_config
    from medsight.workflows.train import run_training

    overrides = {"data.path": str(data), "train.seed": seed, "train.epochs": epochs, "eval.bootstrap": 100,
                 "train.num_threads": 2}
    if synthetic is not None:
        overrides.update({"train.synthetic": str(synthetic), "train.synthetic_ratio": ratio})
    run_training(load_config(recipe="medmnist", overrides=overrides), out=out, progress=False)
    metrics = load_bundle(out / "model", weights=False).metrics
    return {"auc": metrics["val_auc"], "accuracy": metrics["val_accuracy"]}


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, few epochs: a smoke run of the script")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_gan"))
    parser.add_argument("--ratio", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5; --quick 2)")
    parser.add_argument("--epochs", type=int, default=None, help="classifier epochs (default 20; --quick 3)")
    parser.add_argument("--gan-steps", type=int, default=None, help="DCGAN updates per fraction (default 600)")
    args = parser.parse_args()
    import torch

    from medsight.gan.dcgan import train_dcgan
    from medsight.gan.quality import FD_NAME, gan_report

    torch.set_num_threads(2)
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    clf_epochs = args.epochs or (3 if args.quick else 20)
    gan_steps = args.gan_steps or (40 if args.quick else 600)  # generator updates, the same for both fractions
    started = time.perf_counter()
    print(f"data: {DATA} (train for training, val for scoring; test never read)\n"
          f"command: {' '.join(sys.argv)}", file=sys.stderr)
    results: dict = {"what": "BreastMNIST val AUC/accuracy, compact_cnn (medmnist recipe), mean ± sd over seeds",
                     "data": str(DATA), "split": "val", "seeds": seeds, "classifier_epochs": clf_epochs,
                     "synthetic_ratio": args.ratio, "rows": [], "gan_quality": {}}
    for fraction in (0.25, 1.0):
        tag = f"{int(fraction * 100)}pct"
        data = subset_npz(DATA, fraction, args.out / tag / "breastmnist.npz")
        n_train = len(np.load(data)["train_labels"])
        epochs = max(1, round(gan_steps / math.ceil(n_train / 64)))
        gen = train_dcgan(data, out=args.out / tag / "gan", size=(28, 28), epochs=epochs, test_fraction=0.0,
                          val_fraction=0.1, progress=False)
        runs = {"real": [], "real+synthetic": []}
        for seed in seeds:
            runs["real"].append(train_classifier(data, args.out / tag / f"real_s{seed}", seed=seed,
                                                 epochs=clf_epochs, synthetic=None, ratio=0))
            runs["real+synthetic"].append(train_classifier(data, args.out / tag / f"synth_s{seed}", seed=seed,
                                                           epochs=clf_epochs, synthetic=gen, ratio=args.ratio))
        quality = gan_report(generator=gen, data=str(data), classifier=args.out / tag / "real_s0" / "model",
                             out=args.out / tag / "quality", progress=False, tstr_epochs=3 if args.quick else 15)
        results["gan_quality"][tag] = {"gan_epochs": epochs, FD_NAME: quality["classifier_frechet_distance"],
                                       "tstr": {k: quality["tstr"][k] for k in ("accuracy", "auc")}}
        for arm, scores in runs.items():
            print(f"{tag} {arm}: val auc {mean_sd([s['auc'] for s in scores])}, accuracy "
                  f"{mean_sd([s['accuracy'] for s in scores])}", file=sys.stderr, flush=True)
            results["rows"].append({"train_fraction": fraction, "n_real_train": n_train, "arm": arm,
                                    "auc": [s["auc"] for s in scores], "accuracy": [s["accuracy"] for s in scores]})
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, indent=1))
    lines = ["| train fraction | n real | arm | val AUC | val accuracy |", "|---|---|---|---|---|"]
    lines += [f"| {r['train_fraction']:.0%} | {r['n_real_train']} | {r['arm']} | {mean_sd(r['auc'])} | "
              f"{mean_sd(r['accuracy'])} |" for r in results["rows"]]
    (args.out / "gan_augment.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
