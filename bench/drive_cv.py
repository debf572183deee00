"""Benchmark: out-of-fold DRIVE scores of a k-fold cross-validation of the `drive` recipe.

Each fold's bundle scores its own validation images (the ones it did not train on), at its own
threshold, with its own inference settings; the pixels inside the field of view of every image
are then pooled: pixel ROC-AUC (exact, scikit-learn), F1 and accuracy. ``--transpose`` turns
transpose TTA on for every bundle (to compare bundles trained before the recipe had it).

Reproduce (about 90 min of training, then 5 min of scoring):
    .venv/bin/medsight train --task segmentation --recipe drive --data ../shared/data/drive/training \\
        --out /tmp/drive_cv --folds 4
    .venv/bin/python bench/drive_cv.py /tmp/drive_cv/fold0 /tmp/drive_cv/fold1 /tmp/drive_cv/fold2 /tmp/drive_cv/fold3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from medsight.engine.seg_evaluate import open_split
from medsight.inference.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]


def fold_pixels(run: Path, data: Path, transpose: bool):
    """``[(case_id, probabilities, truth, prediction)]`` inside the FOV of the run's validation images."""
    segmenter = Segmenter(run / "model")
    if transpose:
        segmenter.settings = {**segmenter.settings, "transpose_tta": True}
    dataset, items = open_split(segmenter.bundle, str(data), "val")
    cases = []
    for item in items:
        sample, truth, roi = dataset.read(item)
        probs = segmenter.probabilities(sample)
        inside = np.ones(truth.shape, bool) if roi is None else roi.astype(bool)
        labels = segmenter.labels_from(probs)
        cases.append((item.case_id, probs[1][inside], truth[inside] > 0, labels[inside] > 0))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="the folds' run folders (each with model/)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "drive" / "training")
    parser.add_argument("--transpose", action="store_true", help="add transpose TTA to every bundle")
    args = parser.parse_args()
    print("| fold run | image | AUC | F1 |\n|---|---|---|---|")
    pooled = []
    for run in args.runs:
        for case_id, prob, truth, pred in fold_pixels(run, args.data, args.transpose):
            f1 = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
            print(f"| {run.name} | {case_id} | {roc_auc_score(truth, prob):.4f} | {f1:.4f} |")
            pooled.append((prob, truth, pred))
    prob, truth, pred = (np.concatenate(parts) for parts in zip(*pooled, strict=True))
    f1 = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    print(f"\npooled out of fold, {len(pooled)} images, {truth.size} pixels inside the FOV"
          f"{', transpose TTA added' if args.transpose else ''}: AUC {roc_auc_score(truth, prob):.4f}  "
          f"F1 {f1:.4f}  accuracy {(pred == truth).mean():.4f}")


if __name__ == "__main__":
    main()
