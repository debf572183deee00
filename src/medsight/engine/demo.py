"""The demo: synthetic chest phantoms -> trained, evaluated classifier -> report."""

from __future__ import annotations

import time
from pathlib import Path


def run_demo(*, out: Path, n_per_class: int = 300, epochs: int | None = None, seed: int = 0,
             progress: bool = True) -> str:
    """Generate phantoms with and without a nodule, train the demo recipe, evaluate, predict.

    Returns:
        What was written where, for the CLI to print.
    """
    from medsight.config import load_config
    from medsight.data.phantoms import make_chest_phantoms
    from medsight.engine.pipeline import run_training
    from medsight.inference.predictor import predict_to_file

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
    minutes = (time.perf_counter() - start) / 60
    return (
        f"medsight demo finished in {minutes:.1f} min\n"
        f"data:        {data} (synthetic chest phantoms, {n_per_class} per class)\n"
        f"{summary}\n"
        f"predictions: {out / 'predictions.csv'} (6 example files)\n"
        f"next: medsight evaluate {run_dir / 'model'} --data {data} --split test --out {out / 'eval'}"
    )
