"""The demo: synthetic chest phantoms -> a trained, evaluated classifier and lung segmenter -> reports."""

from __future__ import annotations

import time
from pathlib import Path


def run_demo(*, out: Path, n_per_class: int = 300, epochs: int | None = None, seed: int = 0,
             progress: bool = True) -> str:
    """Generate phantoms with and without a nodule, train the demo recipe, evaluate, predict; then
    the same for a small lung-field segmentation (``demo_seg`` recipe), with masks written as PNG.

    Returns:
        What was written where, for the CLI to print.
    """
    from medsight.config import load_config
    from medsight.data.phantoms import make_chest_phantoms, make_lung_phantoms
    from medsight.inference.predictor import predict_to_file
    from medsight.inference.segmenter import segment_to_folder
    from medsight.workflows.train import run_training

    start = time.perf_counter()
    out = Path(out)
    data = make_chest_phantoms(out / "data", n_per_class=n_per_class, size=64, seed=seed)
    cfg = load_config(
        recipe="demo", overrides={"data.path": str(data), "train.seed": seed, "train.epochs": epochs}
    )
    run_dir = out / "run"
    summary = run_training(cfg, out=run_dir, progress=progress)
    examples = sorted((data / "nodule").glob("*.png"))[:3] + sorted((data / "normal").glob("*.png"))[:3]
    predict_to_file(bundle=run_dir / "model", inputs=examples, out=out / "predictions.csv", progress=False)
    seg_data = make_lung_phantoms(out / "seg_data", n=40, size=64, seed=seed)
    seg_cfg = load_config(recipe="demo_seg", overrides={"data.path": str(seg_data), "train.seed": seed,
                                                             "train.epochs": epochs})
    seg_summary = run_training(seg_cfg, out=out / "seg_run", progress=progress)
    seg_examples = sorted((seg_data / "images").glob("*.png"))[:3]
    segment_to_folder(bundle=out / "seg_run" / "model", inputs=seg_examples, out=out / "masks", progress=False)
    minutes = (time.perf_counter() - start) / 60
    return (
        f"medsight demo finished in {minutes:.1f} min\n"
        f"data:        {data} (synthetic chest phantoms, {n_per_class} per class)\n"
        f"{summary}\n"
        f"predictions: {out / 'predictions.csv'} (6 example files)\n\n"
        f"segmentation: {seg_data} (synthetic lung fields, 40 images)\n"
        f"{seg_summary}\n"
        f"masks:       {out / 'masks'} (3 example files)\n\n"
        f"next: medsight evaluate {run_dir / 'model'} --data {data} --split test --out {out / 'eval'}"
    )
