"""Benchmark: the robustness table of a trained classifier bundle (PneumoniaMNIST recipe by default).

Prints the table (kind, severity, accuracy, AUC) as JSON and a markdown table, and writes
robustness.json/.csv/.png and report.html to ``--out``. Pass ``--bundle`` for an existing
bundle; without it a PneumoniaMNIST model is trained quickly first (``--minutes``).

Reproduce:
    .venv/bin/python bench/robustness.py [--data ../shared/data/medmnist/pneumoniamnist.npz] [--minutes 3]
    .venv/bin/python bench/robustness.py --bundle runs/pneumonia/model --data ... --max-cases 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"))
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--recipe", default="medmnist")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time limit when no --bundle")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medsight-bench-robustness"))
    parser.add_argument("--split", default="val", help="the shared MedMNIST files hold train and val only")
    parser.add_argument("--max-cases", type=int, default=None)
    args = parser.parse_args()
    from medsight.robustness.run import run_robustness

    bundle = args.bundle
    if bundle is None:
        from medsight.config import load_config
        from medsight.workflows.train import run_training

        cfg = load_config(recipe=args.recipe, overrides={"data.path": args.data, "train.time_limit_min": args.minutes})
        run_training(cfg, out=args.out / "run", progress=False)
        bundle = args.out / "run" / "model"
    start = time.perf_counter()
    result = run_robustness(bundle=bundle, data=args.data, split=args.split, out=args.out / "robustness",
                            max_cases=args.max_cases, progress=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"bundle": str(bundle), "n": result["n"], "split": result["split"], "seconds": round(seconds, 1),
                      "rows": result["rows"]}, default=float))
    print("\n| kind | severity | accuracy | AUC |\n|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['kind']} | {row['severity']} | {row['accuracy']:.3f} | {row['auc']:.3f} |")


if __name__ == "__main__":
    main()
