"""Benchmark: training throughput against plain loops, achieved GFLOP/s, inference latency, the sample cache.

In one run, on one machine:

1. **Peak**: this machine's fp32 matmul rate (a timed large ``torch.matmul``).
2. **Classification** (the ``medmnist`` recipe on the PneumoniaMNIST train split, validated on
   val): our pipeline (``run_training``: in-memory tensors, channels-last, flip/rotate/scale/
   shift augmentation, a validation pass and a checkpoint every epoch) against a plain PyTorch
   loop on the same network and the same preprocessed tensors (Adam, batch 128, shuffled, no
   augmentation, no validation, default memory format), for the same number of epochs.
3. **Segmentation** (the ``drive`` recipe on the DRIVE training images): our patch training
   (``train_segmenter``: foreground-oversampled 96 px patches, flips and intensity
   augmentation; the recipe compiles the step and trains in bfloat16 autocast on CPUs with
   native bf16) against a plain MONAI UNet loop (the same network, patch and batch; uniform
   random crops of z-scored images, Adam, Dice + CE, no augmentation, eager float32), for the
   same number of steps. Our patches/s is the training steps only (from ``metrics.csv``), not
   the validation: epoch 2 (steady state), with epoch 1 (which pays the compilation) beside it,
   and the same recipe with ``train.compile`` and ``train.cpu_amp`` off.
4. **GFLOP/s**: the FLOPs of one training step (forward + backward, ``FlopCounterMode``)
   times our steps/s, as a fraction of the fp32 matmul peak (and of the bf16 one).
5. **Latency** (batch 1, p50 of repeated calls): the trained networks in torch eager mode,
   under ``torch.compile`` (its compile time is reported), and in ONNX Runtime (the graph
   ``medsight export`` writes, which also holds the input normalisation and the softmax).
6. **Cache**: the time to read and preprocess the PneumoniaMNIST train split and the DRIVE
   cases with ``data.cache`` none / memory / disk (cold = first read, warm = a later run),
   beside the time of one training epoch, so the first-epoch time with and without the cache
   is prep + epoch.
7. **Batch inference**: ``medsight predict`` files/s at 1 and 2 worker processes (worker
   start-up included), for the classifier (PneumoniaMNIST val images written as PNGs, ONNX
   Runtime once exported) and the segmenter (DRIVE training TIFFs), and whether the two CSVs match.

Reproduce:
    .venv/bin/python bench/throughput.py [--epochs 5] [--seg-steps 100] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from drive import reference_crops  # bench/ is on sys.path when run as a script

from medsight.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSIGHT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def matmul_peak_gflops(n: int, reps: int, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of an ``n x n`` matmul in ``dtype``, best of ``reps`` timed calls after a warm-up."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def step_flops(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> int:
    """FLOPs of one forward + backward pass of ``net`` on the batch ``x``."""
    from torch.utils.flop_counter import FlopCounterMode

    net.train()
    with FlopCounterMode(display=False) as counter:
        loss_fn(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def latency_ms(fn, x: torch.Tensor, reps: int) -> float:
    """p50 milliseconds of ``fn(x)`` after 3 warm-up calls."""
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def latencies(bundle_dir: Path, x: torch.Tensor, reps: int) -> dict:
    """Eager, ``torch.compile`` and ONNX Runtime batch-1 latency of a bundle's network."""
    from medsight.bundle import load_bundle
    from medsight.export.exporter import export_bundle
    from medsight.inference.onnx_backend import onnx_session

    net = load_bundle(bundle_dir).build_model().eval()
    result: dict = {}
    with torch.inference_mode():
        result["eager_ms"] = latency_ms(net, x, reps)
    try:
        compiled = torch.compile(net)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
            result["compile_s"] = round(time.perf_counter() - start, 1)
            result["compiled_ms"] = latency_ms(compiled, x, reps)
    except Exception as exc:  # inductor needs a C++ compiler and can fail in many ways; report, go on
        result["compiled_ms"], result["compile_error"] = None, f"{type(exc).__name__}: {str(exc)[:200]}"
    start = time.perf_counter()
    record = export_bundle(bundle=bundle_dir, fmt="onnx", progress=False)
    result["onnx_export_s"] = round(time.perf_counter() - start, 1)
    session = onnx_session(bundle_dir / record["file"], threads=torch.get_num_threads())
    array = x.numpy()
    result["onnx_ms"] = latency_ms(lambda a: session.run(None, {"image": a}), array, reps)
    return result


def batch_inference(args, cls_bundle: Path, seg_bundle: Path, out: Path) -> dict:
    """Files/s of ``medsight predict`` at 1 and 2 workers (start-up included), classifier and segmenter."""
    from PIL import Image

    from medsight.inference.parallel import predict_parallel, segment_parallel
    from medsight.inference.predictor import predict_to_file
    from medsight.inference.segmenter import segment_to_folder
    from medsight.io.npz import read_medmnist

    n_cls, n_seg = (64, 2) if args.quick else (524, 8)
    pictures = out / "predict_inputs"
    pictures.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(read_medmnist(DATA / "medmnist" / "pneumoniamnist.npz")["val"][0][:n_cls]):
        Image.fromarray(image).save(pictures / f"val_{k:04d}.png")
    drive = sorted((DATA / "drive" / "training" / "images").glob("*.tif"))[:n_seg]
    result = {"classifier_files": n_cls, "segmenter_files": n_seg}
    runs = [
        ("classifier_1_worker", lambda: predict_to_file(bundle=cls_bundle, inputs=[pictures], out=out / "p1.csv",
                                                        progress=False)),
        ("classifier_2_workers", lambda: predict_parallel(bundle=cls_bundle, inputs=[pictures], out=out / "p2.csv",
                                                          workers=2, progress=False)),
        ("segmenter_1_worker", lambda: segment_to_folder(bundle=seg_bundle, inputs=drive, out=out / "m1",
                                                         progress=False)),
        ("segmenter_2_workers", lambda: segment_parallel(bundle=seg_bundle, inputs=drive, out=out / "m2", workers=2,
                                                         progress=False)),
    ]
    for name, run in runs:
        start = time.perf_counter()
        counts = run()
        files = n_cls if name.startswith("classifier") else n_seg
        result[f"{name}_files_per_s"] = round(files / (time.perf_counter() - start), 2)
        result[f"{name}_errors"] = counts["errors"]
    result["same_csv"] = (out / "p1.csv").read_text() == (out / "p2.csv").read_text()
    return result


def classification(args, out: Path) -> dict:
    """Our medmnist-recipe training vs a plain loop on PneumoniaMNIST; the cache on its train split."""
    from medsight.classification.prepare import load_tensors
    from medsight.data.cache import SampleCache, clear_memory_cache
    from medsight.data.layouts import open_dataset
    from medsight.models import create_model
    from medsight.workflows.train import run_training

    path = DATA / "medmnist" / "pneumoniamnist.npz"
    cfg = load_config(recipe="medmnist", overrides={
        "data.path": str(path), "name": "throughput", "train.epochs": args.epochs, "train.time_limit_min": None,
        "eval.bootstrap": 0,
    })
    train_idx = [i for i, item in enumerate(open_dataset(path).items) if item.split == "train"]

    def timed_load(cache):
        """What a new run pays: open the .npz, then read and preprocess the train split."""
        start = time.perf_counter()
        tensors, _ = load_tensors(open_dataset(path), train_idx, cfg.preprocess, progress=False, cache=cache)
        return tensors, round(time.perf_counter() - start, 3)

    cache_s = {}
    tensors, cache_s["none"] = timed_load(None)
    clear_memory_cache()
    _, cache_s["memory_cold"] = timed_load(SampleCache("memory"))
    _, cache_s["memory_warm"] = timed_load(SampleCache("memory"))
    clear_memory_cache()
    with tempfile.TemporaryDirectory() as folder:
        _, cache_s["disk_cold"] = timed_load(SampleCache("disk", folder))
        _, cache_s["disk_warm"] = timed_load(SampleCache("disk", folder))

    run_training(cfg, out=out / "classification", progress=False)
    prov = json.loads((out / "classification" / "model" / "bundle.json").read_text())["provenance"]
    ours = prov["n_train"] * prov["epochs_run"] / prov["train_seconds"]
    epoch_s = prov["train_seconds"] / prov["epochs_run"]

    def network():
        return create_model(cfg.model.name, in_channels=1, num_outputs=2, spatial_dims=2, **cfg.model.kwargs)

    torch.manual_seed(0)
    net = network()
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = tensors.images, tensors.labels
    batch = cfg.train.batch_size
    net.train()
    start, seen = time.perf_counter(), 0
    for _ in range(args.epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            optimizer.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            optimizer.step()
            seen += len(idx)
    reference = seen / (time.perf_counter() - start)
    flops = step_flops(network(), x[:batch], y[:batch], loss_fn) / batch
    return {
        "data": "PneumoniaMNIST train (4708) / val (524)", "recipe": "medmnist", "epochs": prov["epochs_run"],
        "ours_images_per_s": round(ours, 1), "reference_images_per_s": round(reference, 1),
        "ratio": round(ours / reference, 2), "gflop_per_image_step": round(flops / 1e9, 4),
        "achieved_gflops": round(flops * ours / 1e9, 2), "epoch_s": round(epoch_s, 2),
        "prep_s": cache_s, "bundle": str(out / "classification" / "model"),
    }


def segmentation(args, out: Path) -> dict:
    """Our drive-recipe patch training vs a plain MONAI UNet loop on DRIVE; the cache on its cases."""
    from monai.losses import DiceCELoss

    from medsight.data.cache import clear_memory_cache
    from medsight.data.seg_layouts import open_seg_dataset
    from medsight.models import create_model
    from medsight.segmentation.cases import read_cases
    from medsight.segmentation.train import train_segmenter

    data = DATA / "drive" / "training"
    overrides = {"data.path": str(data), "name": "throughput-drive", "train.epochs": 2, "data.folds": 1,
                 "segment.steps_per_epoch": args.seg_steps, "train.time_limit_min": None}
    if args.quick:
        overrides.update({"data.val_fraction": 0.05, "segment.mirror_tta": False})
    cfg = load_config(recipe="drive", overrides=overrides)
    dataset = open_seg_dataset(data)
    cache_s = {}
    with tempfile.TemporaryDirectory() as folder:
        # the first "none" read warms up imports and caches of the OS; the second is the one reported
        for mode, label in [("none", "none"), ("none", "none"), ("memory", "memory_cold"),
                            ("memory", "memory_warm"), ("disk", "disk_cold"), ("disk", "disk_warm")]:
            run_cfg = cfg.model_copy(deep=True)
            run_cfg.data.cache, run_cfg.data.cache_dir = mode, folder
            start = time.perf_counter()
            read_cases(dataset, run_cfg, False)
            cache_s[label] = round(time.perf_counter() - start, 3)
    clear_memory_cache()

    def patches_per_s(run_cfg, folder: str) -> tuple[float, float]:
        """(epoch 1, epoch 2) training patches/s of ``run_cfg``."""
        train_segmenter(run_cfg, out=out / folder, progress=False)
        with (out / folder / "metrics.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        return float(rows[0]["patches_per_s"]), float(rows[-1]["patches_per_s"])

    first, ours = patches_per_s(cfg, "segmentation")
    plain_cfg = cfg.model_copy(deep=True)
    plain_cfg.train.compile, plain_cfg.train.cpu_amp = False, False
    _, ours_fp32 = patches_per_s(plain_cfg, "segmentation_fp32_eager")
    epoch_s = args.seg_steps * cfg.segment.batch_size / ours

    patch, batch = cfg.segment.patch_size, cfg.segment.batch_size
    crops = reference_crops(dataset, patch, batch)
    torch.manual_seed(0)

    def network():
        return create_model("unet", in_channels=3, num_outputs=2, spatial_dims=2, **cfg.model.kwargs)

    net = network()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    net.train()
    start = time.perf_counter()
    for _ in range(args.seg_steps):
        x, y = crops()
        optimizer.zero_grad()
        loss_fn(net(x), y).backward()
        optimizer.step()
    reference = args.seg_steps * batch / (time.perf_counter() - start)
    x, y = crops()
    flops = step_flops(network(), x, y, loss_fn) / batch
    return {
        "data": "DRIVE training images (15 train cases at the recipe's split)", "recipe": "drive",
        "steps": args.seg_steps, "batch": batch, "patch": patch,
        "compile": cfg.train.compile, "cpu_amp": cfg.train.cpu_amp,
        "ours_patches_per_s": round(ours, 1), "ours_first_epoch_patches_per_s": round(first, 1),
        "ours_fp32_eager_patches_per_s": round(ours_fp32, 1), "reference_patches_per_s": round(reference, 1),
        "ratio": round(ours / reference, 2), "ratio_fp32_eager": round(ours_fp32 / reference, 2),
        "gflop_per_patch_step": round(flops / 1e9, 4),
        "achieved_gflops": round(flops * ours / 1e9, 2), "epoch_s": round(epoch_s, 2),
        "prep_s": cache_s, "bundle": str(out / "segmentation" / "model"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="classification epochs (ours and the reference)")
    parser.add_argument("--seg-steps", type=int, default=100, help="segmentation training steps (one epoch)")
    parser.add_argument("--reps", type=int, default=200, help="latency calls per backend")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch, 5 steps, 20 latency calls")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "throughput")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seg_steps, args.reps = 1, 5, 20
    if not DATA.is_dir():
        raise SystemExit(f"shared data not found at {DATA} (set MEDSIGHT_SHARED_DATA)")
    started = time.perf_counter()
    size, reps = (1024, 5) if args.quick else (2048, 10)
    peak = matmul_peak_gflops(size, reps)
    cls = classification(args, args.out)
    seg = segmentation(args, args.out)
    peak = max(peak, matmul_peak_gflops(size, reps))  # best of the start and the end: other jobs only slow it
    peak_bf16 = matmul_peak_gflops(size, reps, torch.bfloat16)
    cls["peak_fraction"] = round(cls["achieved_gflops"] / peak, 3)
    seg["peak_fraction"] = round(seg["achieved_gflops"] / peak, 3)
    seg["bf16_peak_fraction"] = round(seg["achieved_gflops"] / peak_bf16, 3)
    with tempfile.TemporaryDirectory(prefix="inductor-") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder  # an empty compile cache: the compile time is a cold one
        cls["latency"] = latencies(Path(cls["bundle"]), torch.rand(1, 1, 28, 28), args.reps)
        seg["latency"] = latencies(Path(seg["bundle"]), torch.randn(1, 3, 96, 96), args.reps)
    workers = batch_inference(args, Path(cls["bundle"]), Path(seg["bundle"]), args.out)
    report = {
        "benchmark": "training throughput vs plain loops, GFLOP/s, inference latency, sample cache",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
                   f"load average {os.getloadavg()[0]:.2f}",
        "command": "python bench/throughput.py" + (" --quick" if args.quick else f" --epochs {args.epochs} "
                                                   f"--seg-steps {args.seg_steps} --reps {args.reps}"),
        "fp32_matmul_peak_gflops": round(peak, 1), "bf16_matmul_peak_gflops": round(peak_bf16, 1),
        "classification": cls, "segmentation": seg, "predict_workers": workers,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    table = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.md").write_text(table + "\n")
    print(table)


def markdown(r: dict) -> str:
    c, s = r["classification"], r["segmentation"]
    lines = [
        f"matmul peak: fp32 {r['fp32_matmul_peak_gflops']}, bf16 {r['bf16_matmul_peak_gflops']} GFLOP/s. "
        f"{r['machine']}. `{r['command']}`",
        "",
        "| task | ours /s | plain loop /s | ratio | GFLOP per sample-step | achieved GFLOP/s | of fp32 peak |",
        "|---|---|---|---|---|---|---|",
        f"| PneumoniaMNIST, medmnist recipe (images) | {c['ours_images_per_s']} | {c['reference_images_per_s']} | "
        f"{c['ratio']} | {c['gflop_per_image_step']} | {c['achieved_gflops']} | {c['peak_fraction']:.1%} |",
        f"| DRIVE, drive recipe (96 px patches; compile {s['compile']}, cpu_amp {s['cpu_amp']}; epoch 1 with "
        f"compilation {s['ours_first_epoch_patches_per_s']}/s) | {s['ours_patches_per_s']} | "
        f"{s['reference_patches_per_s']} | {s['ratio']} | {s['gflop_per_patch_step']} | {s['achieved_gflops']} | "
        f"{s['peak_fraction']:.1%} (bf16 peak: {s['bf16_peak_fraction']:.1%}) |",
        f"| DRIVE, the same with compile and cpu_amp off (eager fp32) | {s['ours_fp32_eager_patches_per_s']} | "
        f"{s['reference_patches_per_s']} | {s['ratio_fp32_eager']} | | | |",
        "",
        "| network (batch 1) | eager ms | torch.compile ms (compile s) | ONNX Runtime ms |",
        "|---|---|---|---|",
    ]
    for name, block in (("compact_cnn 28 px", c), ("UNet 32-256, 96 px patch", s)):
        lat = block["latency"]
        compiled = (f"{lat['compiled_ms']} ({lat['compile_s']})" if lat.get("compiled_ms") is not None
                    else f"failed: {lat.get('compile_error', '')[:60]}")
        lines.append(f"| {name} | {lat['eager_ms']} | {compiled} | {lat['onnx_ms']} |")
    w = r["predict_workers"]
    lines += ["", "| medsight predict (start-up included) | files | 1 worker files/s | 2 workers files/s |",
              "|---|---|---|---|",
              f"| classifier (ONNX Runtime), PneumoniaMNIST val PNGs | {w['classifier_files']} | "
              f"{w['classifier_1_worker_files_per_s']} | {w['classifier_2_workers_files_per_s']} |",
              f"| segmenter (TTA as the bundle says), DRIVE TIFFs | {w['segmenter_files']} | "
              f"{w['segmenter_1_worker_files_per_s']} | {w['segmenter_2_workers_files_per_s']} |"]
    lines += ["", "| data | epoch s | prep s: none | memory cold | memory warm | disk cold | disk warm |",
              "|---|---|---|---|---|---|---|"]
    for name, block in (("PneumoniaMNIST train (4708)", c), ("DRIVE (20 cases)", s)):
        p = block["prep_s"]
        lines.append(f"| {name} | {block['epoch_s']} | {p['none']} | {p['memory_cold']} | {p['memory_warm']} | "
                     f"{p['disk_cold']} | {p['disk_warm']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
