"""Benchmark: segmentation inference in float32 against ``--mixed-precision`` (bfloat16 autocast).

Scores one segmentation bundle on the same images twice in one run, in float32 (the plain
reference) and with ``Segmenter(mixed_precision=True)``, and prints the seconds per image,
their ratio, the pooled pixel AUC and F1 inside the region of interest at the bundle's own
threshold, the largest probability change and the share of pixels whose label flips. On a CPU
without native bfloat16 (AVX512-BF16/AMX) the mixed run is float32 too (the script says so).

Reproduce (a DRIVE fold bundle, e.g. ``medsight train --task segmentation --recipe drive
--data ../shared/data/drive/training --out RUN --set data.fold=0``, scored on its 5 validation
images):
    .venv/bin/python bench/seg_precision.py RUN/model --data ../shared/data/drive/training \\
        --cases 23,25,27,34,40
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medsight.data.seg_layouts import open_seg_dataset
from medsight.inference.segmenter import Segmenter
from medsight.runtime.device import cpu_has_native_bf16


def score(segmenter: Segmenter, cases: list) -> tuple[float, np.ndarray, np.ndarray]:
    """Seconds per image and the pooled foreground probabilities and truth inside each ROI."""
    seconds, probs, truth = 0.0, [], []
    for sample, labels, roi in cases:
        start = time.perf_counter()
        p = segmenter.probabilities(sample)[1]
        seconds += time.perf_counter() - start
        inside = roi if roi is not None else np.ones(labels.shape, bool)
        probs.append(p[inside])
        truth.append(labels[inside] > 0)
    return seconds / len(cases), np.concatenate(probs), np.concatenate(truth)


def f1(probs: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    predicted = probs >= threshold
    tp = (predicted & truth).sum()
    return float(2 * tp / (2 * tp + (predicted & ~truth).sum() + (~predicted & truth).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="a segmentation data set with masks")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: every case)")
    args = parser.parse_args()

    dataset = open_seg_dataset(args.data)
    wanted = set(args.cases.split(",")) if args.cases else None
    cases = [dataset.read(item) for item in dataset.items if wanted is None or item.case_id in wanted]
    plain = Segmenter(args.bundle)
    mixed = Segmenter(args.bundle, mixed_precision=True)
    threshold = plain.thresholds.get(1, 0.5)
    score(plain, cases[:1])  # warm-up: the first pass pays for allocation
    t32, p32, truth = score(plain, cases)
    t16, p16, _ = score(mixed, cases)

    print(f"bundle {args.bundle}, {len(cases)} images of {args.data}, threshold {threshold:.4f}")
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, native bf16: {cpu_has_native_bf16()}")
    print("| inference | s/image | pixel AUC | F1 |")
    print("|---|---|---|---|")
    print(f"| float32 (reference) | {t32:.2f} | {roc_auc_score(truth, p32):.5f} | {f1(p32, truth, threshold):.5f} |")
    print(f"| --mixed-precision | {t16:.2f} | {roc_auc_score(truth, p16):.5f} | {f1(p16, truth, threshold):.5f} |")
    flips = ((p32 >= threshold) != (p16 >= threshold)).mean()
    print(f"speed-up {t32 / t16:.2f}x; largest probability change {np.abs(p32 - p16).max():.4f}; "
          f"labels flipped {100 * flips:.3f}% of the pixels")


if __name__ == "__main__":
    main()
