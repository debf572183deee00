"""Benchmark: per-image latency of segmentation inference, torch and ONNX Runtime, fast and accurate profiles,
a single model and the fold ensemble, with what each gives on held-out DRIVE images.

Input: a DRIVE run trained with held-out images, as ``bench/drive.py --holdout 23,25,27,34,40 --out DIR`` writes
it (``DIR/run``: the ``drive`` recipe's 4-fold ensemble on the other 15 images, its profiles measured out of fold;
``DIR/data/holdout``: the 5 held-out images). The bundle is exported to ONNX here (``medsight export``: one file
per member). For each model (the ensemble ``run/model``; the single model ``run/fold0/model`` given the ensemble's
profile options) x backend (torch, onnx) x profile (fast, accurate), it times what ``medsight predict`` does per
image (read, predict, write the mask; the model loaded once) on the 5 held-out images (median seconds per image),
and scores the masks on them (pooled AUC and F1 inside the field of view, at the bundle's threshold).

The reference is the path before this benchmark's issue (35): PyTorch, every test-time view as a sliding pass of
its own over the whole image, each fold model in turn (the same networks, windows, centring and thresholds).
Every time is printed as a same-run ratio to it. ONNX against torch: the largest probability difference and the
share of pixels whose label differs, on the held-out images.

The 3D CT of ``../shared/data/nifti`` (122 x 101 x 30) is timed with a random-weight 3D UNet bundle (patch
64 x 64 x 32, mirror TTA: 8 views): latency only, its masks mean nothing.

Reproduce:
    .venv/bin/python bench/drive.py --holdout 23,25,27,34,40 --out /tmp/bench_drive
    .venv/bin/python bench/inference.py --drive /tmp/bench_drive
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def reference_probabilities(segmenter, sample) -> np.ndarray:
    """The pre-issue-35 path: each view a sliding pass of its own over the flipped/transposed image, member by
    member, then resized back and centred per member (what ``Segmenter.probabilities`` did before)."""
    from medsight.inference.segment import sliding_window_probs, tta_views
    from medsight.transforms.preprocess import resize, spacing_shape

    settings = segmenter.settings
    working = resize(segmenter.prepare(sample), spacing_shape(sample.spatial_shape, sample.spacing,
                                                              settings.target_spacing))
    views = tta_views(segmenter.bundle.spatial_dims, mirror_tta=settings.mirror_tta,
                      transpose_tta=settings.transpose_tta)
    patch = [int(n) for n in segmenter.bundle.preprocess.size]
    maps = []
    for net in segmenter.networks:
        total = 0.0
        for swapped, dims in views:
            image = np.swapaxes(working, -1, -2) if swapped else working
            image = np.ascontiguousarray(np.flip(image, [d - 1 for d in dims]) if dims else image)
            window = [*patch[:-2], patch[-1], patch[-2]] if swapped else patch
            probs = sliding_window_probs(net, image, patch_size=window, overlap=settings.overlap,
                                         views=[(False, ())])
            probs = np.flip(probs, [d - 1 for d in dims]) if dims else probs
            total = total + (np.swapaxes(probs, -1, -2) if swapped else probs)
        maps.append(segmenter.centred(resize(np.ascontiguousarray(total / len(views)), sample.spatial_shape)))
    return np.mean(maps, axis=0)


def time_images(predict, files: list[Path], out: Path) -> tuple[float, list[np.ndarray]]:
    """Median seconds per image of read + ``predict(sample) -> probs`` + threshold + write; and the maps."""
    from medsight.inference.postprocess import write_mask
    from medsight.inference.segmenter import mask_path
    from medsight.io import read_image

    seconds, maps = [], []
    for path in files:
        start = time.perf_counter()
        sample = read_image(path)
        probs, labels = predict(sample)
        write_mask(labels, sample, mask_path(path, out, sample))
        seconds.append(time.perf_counter() - start)
        maps.append(probs)
    return statistics.median(seconds), maps


def pooled_scores(maps: list[np.ndarray], labels: list[np.ndarray], cases) -> tuple[float, float]:
    """Pooled AUC of the foreground probability and F1 of the labels, inside each case's field of view."""
    from medsight.segmentation.pixel_scores import PixelScores

    pixels, tp, fp, fn = PixelScores(), 0, 0, 0
    for probs, pred, (_, _, truth, roi) in zip(maps, labels, cases, strict=True):
        inside = np.ones(truth.shape, bool) if roi is None else np.asarray(roi, bool)
        pixels.add(probs[1], truth, roi=inside)
        p, t = (pred == 1) & inside, (truth != 0) & inside
        tp, fp, fn = tp + int((p & t).sum()), fp + int((p & ~t).sum()), fn + int((~p & t).sum())
    return pixels.roc_auc(), 2 * tp / max(2 * tp + fp + fn, 1)


def single_model(run: Path, work: Path) -> Path:
    """``run/fold0/model`` with the ensemble's profile options (its own threshold and centring)."""
    from medsight.bundle import load_bundle

    ensemble, fold = load_bundle(run / "model", weights=False), load_bundle(run / "fold0" / "model")
    fold.segmentation = fold.segmentation.model_copy(update={
        "profiles": ensemble.segmentation.profiles, "default_profile": ensemble.segmentation.default_profile,
        "profile_note": "the ensemble's options (bench/inference.py)"})
    return fold.save(work / "single")


def drive_rows(drive: Path, work: Path) -> None:
    from medsight.data.seg_layouts import open_seg_dataset
    from medsight.export import export_bundle
    from medsight.inference.segmenter import Segmenter
    from medsight.segmentation.evaluate import DatasetCases

    run, holdout = drive / "run", drive / "data" / "holdout"
    dataset = open_seg_dataset(holdout)
    cases = list(DatasetCases(dataset, dataset.items))
    files = [Path(item.image) for item in dataset.items]
    models = {"ensemble": Path(shutil.copytree(run / "model", work / "ensemble")), "single": single_model(run, work)}
    for folder in models.values():
        start = time.perf_counter()
        export_bundle(bundle=folder, fmt="onnx", progress=False)
        print(f"exported {folder.name} to ONNX in {time.perf_counter() - start:.0f} s")
    reference = Segmenter(models["ensemble"], backend="torch", profile="accurate")
    ref_s, ref_maps = time_images(lambda s: _labelled(reference, reference_probabilities(reference, s)), files,
                                  work / "ref")
    ref_auc, ref_f1 = pooled_scores(ref_maps, [reference.labels_from(p) for p in ref_maps], cases)
    print(f"\nheld-out DRIVE images: {', '.join(item.case_id for item in dataset.items)} (565 x 584, field of view)")
    print("| model | backend | profile | views x overlap | s / image | ratio to reference | AUC | F1 |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| ensemble (4) | torch, a pass per view | accurate | 8 x {reference.settings.overlap:g} | {ref_s:.2f} | "
          f"1.00 | {ref_auc:.4f} | {ref_f1:.4f} |")
    accurate_maps = {}
    for name, folder in models.items():
        for backend in ("torch", "onnx"):
            for profile in ("accurate", "fast"):
                segmenter = Segmenter(folder, backend=backend, profile=profile)
                seconds, maps = time_images(lambda s, seg=segmenter: _labelled(seg, seg.probabilities(s)), files,
                                            work / f"{name}-{backend}-{profile}")
                auc, f1 = pooled_scores(maps, [segmenter.labels_from(p) for p in maps], cases)
                options = segmenter.profile or segmenter.settings
                views = options.views if segmenter.profile else 8
                print(f"| {name} | {backend} | {profile} | {views} x {options.overlap:g} | {seconds:.2f} | "
                      f"{seconds / ref_s:.3f} | {auc:.4f} | {f1:.4f} |")
                if profile == "accurate":
                    accurate_maps[(name, backend)] = (maps, segmenter)
    for name in models:
        (torch_maps, seg), (onnx_maps, _) = accurate_maps[(name, "torch")], accurate_maps[(name, "onnx")]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(torch_maps, onnx_maps, strict=True))
        flips = np.mean([float((seg.labels_from(a) != seg.labels_from(b)).mean())
                         for a, b in zip(torch_maps, onnx_maps, strict=True)])
        print(f"{name}, accurate: ONNX vs torch largest probability difference {diff:.2e}, "
              f"pixels whose label differs {100 * flips:.4f}%")


def _labelled(segmenter, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return probs, segmenter.labels_from(probs)


def ct_rows(work: Path) -> None:
    """Latency on the shared 3D CT with a random-weight 3D UNet bundle (mirror TTA, 8 views)."""
    from medsight.bundle import Bundle
    from medsight.config import ModelConfig, PreprocessConfig
    from medsight.export import export_bundle
    from medsight.inference.segmenter import Segmenter
    from medsight.models import create_model

    ct = ROOT.parent / "shared" / "data" / "nifti" / "example_ct_sm.nii.gz"
    data = work / "ct"
    for sub, source in (("images", ct), ("masks", ct.with_name("example_ct_sm_T300_output.nii.gz"))):
        (data / sub).mkdir(parents=True)
        (data / sub / "ct.nii.gz").symlink_to(source)
    torch.manual_seed(0)
    kwargs = {"base_features": 16, "depth": 4}
    net = create_model("unet", in_channels=1, num_outputs=2, spatial_dims=3, **kwargs)
    folder = Bundle(task="segmentation", model=ModelConfig(name="unet", kwargs=kwargs),
                    preprocess=PreprocessConfig(size=[32, 64, 64], normalize="none"),
                    label_names=["background", "body"], provenance={"data": str(data)}, state_dict=net.state_dict(),
                    segmentation={"normalization": {"scheme": "zscore"}, "overlap": 0.5, "mirror_tta": True}
                    ).save(work / "ct_model")
    export_bundle(bundle=folder, fmt="onnx", data=str(data), progress=False)
    print(f"\n3D CT {ct.name} (random-weight UNet 16-128, patch 32 x 64 x 64, mirror TTA): s / volume")
    print("| backend | views | s / volume | ratio to torch, a pass per view |")
    print("|---|---|---|---|")
    base = Segmenter(folder, backend="torch")
    reference, _ = time_images(lambda s: _labelled(base, reference_probabilities(base, s)), [ct], work / "ct_ref")
    print(f"| torch, a pass per view | 8 | {reference:.2f} | 1.00 |")
    for backend in ("torch", "onnx"):
        for views in (8, 1):
            segmenter = Segmenter(folder, backend=backend)
            if views == 1:
                segmenter.settings = segmenter.settings.model_copy(update={"mirror_tta": False})
            seconds, _ = time_images(lambda s, seg=segmenter: _labelled(seg, seg.probabilities(s)), [ct],
                                     work / f"ct-{backend}-{views}")
            print(f"| {backend} | {views} | {seconds:.2f} | {seconds / reference:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", type=Path, required=True, help="bench/drive.py --holdout's --out folder")
    parser.add_argument("--skip-ct", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"command: .venv/bin/python bench/inference.py --drive {args.drive}")
    with tempfile.TemporaryDirectory(prefix="medsight-bench-inference-") as tmp:
        drive_rows(args.drive, Path(tmp))
        if not args.skip_ct:
            ct_rows(Path(tmp))


if __name__ == "__main__":
    main()
