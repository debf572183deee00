"""Benchmark: the default classification command (no recipe) on every labelled classification set.

For PneumoniaMNIST, BreastMNIST (the shared ``.npz`` files: train and val only, the test splits are
withheld and never read) and the brain-MRI tumour folder, runs as a subprocess

    medsight train --task classification --data DATA --out RUN [--time-budget MIN] [--folds K]

which plans itself (RUN/plan.json, RUN/fingerprint.json), cross-validates over train + val, and
reports the out-of-fold estimate in RUN/metrics.json. Printed per data set: that estimate (ACC and
AUC with 95% CIs, n), the wall time, the plan's main choices, and in the same run a plain MONAI
ResNet-18 + PyTorch loop (Adam, min-max, no augmentation, fixed epochs) scored out of fold on the same
folds the same way, with the ratios medsight / reference of AUC and wall time.

Where this ``medsight train`` cannot plan yet (no ``--time-budget`` option), the bench runs
``--recipe none --folds K --set data.test_fraction=0`` instead, pools the folds' held-out
predictions (fold*/per_case.csv) into the out-of-fold estimate itself, and says so.

Reproduce:
    .venv/bin/python bench/classification.py [--sets pneumoniamnist breastmnist brain_mri_tumor]
        [--time-budget MIN] [--folds K] [--ref-epochs 20] [--quick] [--out bench/out/classification]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from classification_reference import oof_estimate, quick_subset, reference_cv

ROOT = Path(__file__).resolve().parents[1]
SETS = {"pneumoniamnist": "medmnist/pneumoniamnist.npz", "breastmnist": "medmnist/breastmnist.npz",
        "brain_mri_tumor": "brain_mri_tumor"}
FALLBACK_FOLDS = 5
#: the run's data settings that decide its splits (the reference rebuilds the same folds from them)
SPLIT_KEYS = ("val_fraction", "test_fraction", "folds")
#: the plan's main choices: a label and the config keys (dotted) that may hold it
CHOICES = {"input size": ("preprocess.size", "input_size", "size"),
           "normalisation": ("preprocess.normalize", "normalize", "normalisation", "normalization"),
           "channels": ("preprocess.channels", "channels"), "network": ("model.name", "model_name", "network"),
           "folds": ("data.folds", "folds"), "members per fold": ("train.members_per_fold", "members_per_fold"),
           "epochs": ("train.epochs", "epochs"), "TTA": ("eval.tta", "tta")}


def medsight_command() -> list[str]:
    """The ``medsight`` of the Python running this script (its venv's script, else ``-m``)."""
    script = Path(sys.executable).parent / "medsight"
    return [str(script)] if script.exists() else [sys.executable, "-m", "medsight.cli.main"]


def can_plan() -> bool:
    """Whether this ``medsight train`` plans by itself (it then takes ``--time-budget``)."""
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    help_text = subprocess.run([*medsight_command(), "train", "--help"], capture_output=True, text=True, env=env)
    return "--time-budget" in help_text.stdout


def train_args(data: Path, run: Path, args: argparse.Namespace, planned: bool) -> list[str]:
    """The ``medsight train`` arguments: the default command, or the no-plan fallback."""
    cmd = ["train", "--task", "classification", "--data", str(data), "--out", str(run), "--no-progress"]
    folds = args.folds or (None if planned else FALLBACK_FOLDS)
    if folds:
        cmd += ["--folds", str(folds)]
    if args.time_budget and planned:
        cmd += ["--time-budget", str(args.time_budget)]
    if not planned:
        cmd += ["--recipe", "none", "--set", "data.test_fraction=0"]
        if args.time_budget:
            cmd += ["--set", f"train.time_limit_min={args.time_budget / folds:.4g}"]
    if args.quick:
        cmd += ["--epochs", str(args.quick_epochs)]
    return cmd


def run_medsight(data: Path, run: Path, args: argparse.Namespace, planned: bool) -> dict:
    """Train with ``medsight train`` in a subprocess; its command, wall time and run folder."""
    if run.exists():
        shutil.rmtree(run)
    cmd = [*medsight_command(), *train_args(data, run, args, planned)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"medsight train failed (exit {done.returncode}) on {data}:\n{done.stderr[-3000:]}\n"
                 f"command: {shlex.join(cmd)}")
    shown = ["medsight", *cmd[len(medsight_command()):]]
    return {"command": shlex.join(shown), "wall_seconds": round(wall, 1), "stdout": done.stdout.strip()}


def read_estimate(run: Path, planned: bool) -> dict:
    """The out-of-fold estimate: RUN/metrics.json of a planned run (or of any cross-validation that writes
    its out-of-fold estimate there), else pooled here from the folds' held-out predictions."""
    path = run / "metrics.json"
    m = json.loads(path.read_text()) if path.exists() else {}
    if planned or "fold" in str(m.get("split", "")).lower():
        ci = m.get("metrics", {})

        def bounds(key: str) -> list:
            return [ci.get(key, {}).get("ci_low"), ci.get(key, {}).get("ci_high")]

        return {"source": "RUN/metrics.json", "split": m.get("split"), "n": m.get("n"),
                "accuracy": m.get("accuracy"), "accuracy_ci": bounds("accuracy"), "auc": m.get("auc"),
                "auc_ci": bounds("auc"), "threshold": m.get("threshold"), "threshold_note": m.get("threshold_note"),
                "keys": sorted(m)}
    y, probs = pooled_fold_predictions(run)
    return {"source": "pooled from RUN/fold*/per_case.csv by this bench (no out-of-fold RUN/metrics.json)",
            "split": "out-of-fold", **oof_estimate(y, probs)}


def held_out(run: Path) -> dict | None:
    """The run's own held-out split (RUN/test/metrics.json: carved out of train + val, not an official
    test split, which this bench never reads), scored by the ensemble; None when the run kept none."""
    path = run / "test" / "metrics.json"
    if not path.exists():
        return None
    m = json.loads(path.read_text())
    ci = m.get("metrics", {})
    return {"n": m.get("n"), "accuracy": m.get("accuracy"), "auc": m.get("auc"),
            "auc_ci": [ci.get("auc", {}).get("ci_low"), ci.get("auc", {}).get("ci_high")]}


def pooled_fold_predictions(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of every fold's held-out cases (its per_case.csv), in one pool."""
    y, probs, seen = [], [], set()
    for fold in fold_folders(run):
        names = json.loads((fold / "metrics.json").read_text())["label_names"]
        with (fold / "per_case.csv").open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row["case_id"] in seen:
                    sys.exit(f"{row['case_id']} is scored by two folds of {run}: not an out-of-fold pool")
                seen.add(row["case_id"])
                y.append(names.index(row["true_label"]))
                probs.append([float(row[f"prob_{name}"]) for name in names])
    if not y:
        sys.exit(f"{run} has no fold*/per_case.csv: nothing to pool")
    return np.array(y), np.array(probs)


def fold_folders(run: Path) -> list[Path]:
    """The folds' member-0 folders (``fold{k}``; a fold's other seeded members, ``fold{k}-member{r}``, validated
    the same cases), in fold order."""
    return sorted((p for p in run.glob("fold*") if p.is_dir() and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))


def scored_cases(run: Path) -> set[str] | None:
    """The case ids of medsight's out-of-fold estimate (RUN/per_case.csv, else the folds'); None without any."""
    tables = ([run / "per_case.csv"] if (run / "per_case.csv").exists() else
              [fold / "per_case.csv" for fold in fold_folders(run) if (fold / "per_case.csv").exists()])
    if not tables:
        return None
    ids: set[str] = set()
    for path in tables:
        with path.open(newline="") as handle:
            ids.update(row["case_id"] for row in csv.DictReader(handle))
    return ids


def plan_choices(run: Path) -> dict:
    """The plan's main choices (RUN/plan.json) and those the run trained with (its saved config, which
    has the command's overrides, e.g. --folds and --epochs, on top of the plan)."""
    plan = run / "plan.json"
    ran = run_config(run)
    flat_plan = _flatten(json.loads(plan.read_text())) if plan.exists() else {}
    return {"planned": plan.exists(), "plan": {label: _pick(flat_plan, keys) for label, keys in CHOICES.items()},
            "ran": {label: _pick(_flatten(ran), keys) for label, keys in CHOICES.items()}}


def run_config(run: Path) -> dict:
    """The resolved config the run saved (RUN/config.yaml, else its first fold's); {} without one."""
    for path in (run / "config.yaml", run / "fold0" / "config.yaml"):
        if path.exists():
            return yaml.safe_load(path.read_text()) or {}
    return {}


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    """``{"a.b": leaf}`` of a nested dict, leaving out notes and reasons (they explain, they are not choices)."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, object] = {}
    for key, sub in value.items():
        if not any(word in str(key).lower() for word in ("note", "reason", "why", "explain")):
            flat.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _pick(flat: dict[str, object], keys: tuple[str, ...]) -> object:
    """The value of the first of ``keys`` that a flattened key ends with (on a dot), else None."""
    for key in keys:
        for path, value in flat.items():
            if (path == key or path.endswith("." + key)) and not isinstance(value, dict):
                return value
    return None


def reference_settings(data: Path, run: Path, choices: dict, folds: int) -> dict:
    """The reference's splits, input size and channels. Splits: the run's own ``data`` settings (folds,
    test_fraction, ...) from its saved config, so both arms cross-validate the same pool; input size and
    channels: those of a planned run, else 28 px for MedMNIST, 64 px for a folder, and 1 channel."""
    ran = choices["ran"]
    size, channels = ran.get("input size"), ran.get("channels")
    if not (choices["planned"] and isinstance(size, list) and len(size) == 2):
        size = [28, 28] if data.suffix == ".npz" else [64, 64]
    if not (choices["planned"] and channels in (1, 3)):
        channels = 1
    split = {key: value for key, value in run_config(run).get("data", {}).items() if key in SPLIT_KEYS}
    split = {"test_fraction": 0.0, **split, "folds": folds}
    return {"split": split, "size": [int(v) for v in size], "channels": int(channels)}


def run_set(name: str, data: Path, args: argparse.Namespace, planned: bool) -> dict:
    out = args.out / name
    if args.quick:
        data = quick_subset(data, out / "quick-data", n=args.quick_images)
    ours = run_medsight(data, out / "run", args, planned)
    estimate = {**read_estimate(out / "run", planned), "held_out": held_out(out / "run")}
    choices = plan_choices(out / "run")
    folds = int(choices["ran"].get("folds") or args.folds or FALLBACK_FOLDS)
    ref = reference_cv(data, epochs=args.ref_epochs, **reference_settings(data, out / "run", choices, folds))
    scored = scored_cases(out / "run")
    estimate["same_cases"] = None if scored is None else scored == set(ref.pop("case_ids"))
    return {"dataset": name, "data": str(data), "planned": planned, "medsight": {**ours, **estimate},
            "choices": choices, "reference": ref, "ratio_auc": _ratio(estimate.get("auc"), ref["auc"]),
            "ratio_wall": _ratio(ours["wall_seconds"], ref["wall_seconds"])}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _fmt(value: float | None, ci: list | None = None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.4f}"
    if ci and None not in ci:
        text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
    return text


def report(row: dict) -> str:
    """A readable block for one data set."""
    m, r, plan, ran = row["medsight"], row["reference"], row["choices"]["plan"], row["choices"]["ran"]
    if row["choices"]["planned"]:
        source = "plan.json; where the run differs (an override), what it ran"
        choices = ", ".join(f"{label} {plan.get(label)}" + (f" (ran: {ran.get(label)})" if ran.get(label) !=
                                                             plan.get(label) else "") for label in CHOICES)
    else:
        source = "no plan.json; the run's config"
        choices = ", ".join(f"{label} {ran.get(label)}" for label in CHOICES)
    lines = [
        f"== {row['dataset']}: {row['data']}",
        f"medsight: {m['command']}",
        f"  estimate ({m['split']}, {m['source']}): n={m['n']} ACC {_fmt(m['accuracy'], m['accuracy_ci'])} "
        f"AUC {_fmt(m['auc'], m['auc_ci'])} (threshold: {m.get('threshold_note')})",
        *([f"  its held-out split (RUN/test, carved from train + val; the ensemble): n={m['held_out']['n']} "
           f"ACC {_fmt(m['held_out']['accuracy'])} AUC {_fmt(m['held_out']['auc'], m['held_out']['auc_ci'])}"]
          if m.get("held_out") else []),
        f"  wall {m['wall_seconds']} s; choices ({source}): {choices}",
        f"reference: MONAI ResNet-18, Adam lr {r['lr']}, batch {r['batch_size']}, {r['epochs']} epochs, "
        f"{r['size'][0]}x{r['size'][1]} px, {r['channels']} channel(s), min-max; the run's splits {r['split']}",
        f"  estimate (out-of-fold): n={r['n']} ACC {_fmt(r['accuracy'], r['accuracy_ci'])} "
        f"AUC {_fmt(r['auc'], r['auc_ci'])}; wall {r['wall_seconds']} s",
        f"ratio medsight / reference: AUC {row['ratio_auc']}, wall time {row['ratio_wall']}",
    ]
    if m.get("accuracy") is None and m.get("auc") is None:
        lines.append(f"  NOTE: RUN/metrics.json has no accuracy or auc; its keys: {', '.join(m.get('keys', []))}")
    if m.get("same_cases") is not None:
        lines.append("same cases scored by both: " + ("yes" if m["same_cases"] else
                     f"NO (medsight n={m['n']}, reference n={r['n']}): the pools differ, compare with care"))
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| data | n | medsight ACC [95% CI] | AUC [95% CI] | wall s | ResNet-18 ACC [95% CI] | AUC [95% CI] "
             "| wall s | AUC ratio | wall ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        m, r = row["medsight"], row["reference"]
        lines.append(f"| {row['dataset']} | {m['n']} | {_fmt(m['accuracy'], m['accuracy_ci'])} | "
                     f"{_fmt(m['auc'], m['auc_ci'])} | {m['wall_seconds']} | {_fmt(r['accuracy'], r['accuracy_ci'])} | "
                     f"{_fmt(r['auc'], r['auc_ci'])} | {r['wall_seconds']} | {row['ratio_auc']} | "
                     f"{row['ratio_wall']} |")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ""
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("MEDSIGHT_SHARED_DATA", ROOT.parent / "shared" / "data")),
                        help="the shared data folder (holds medmnist/ and brain_mri_tumor/)")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    parser.add_argument("--time-budget", type=float, default=None, help="minutes, passed to medsight train")
    parser.add_argument("--folds", type=int, default=None, help="default: the plan's (fallback: 5)")
    parser.add_argument("--ref-epochs", type=int, default=20, help="the reference's epochs per fold")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a 200-image subset, 2 folds, 2 epochs for both arms")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "classification")
    args = parser.parse_args()
    args.quick_images, args.quick_epochs = 200, 2
    if args.quick:
        args.folds, args.ref_epochs = args.folds or 2, args.quick_epochs
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    planned = can_plan()
    header = {
        "benchmark": "medsight train with no recipe (planned, cross-validated, out-of-fold estimate) against a "
                     "plain MONAI ResNet-18 on the same folds; train + val of each set, test splits never read",
        "machine": f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": shlex.join(["python", "bench/classification.py", *sys.argv[1:]]),
        "planning": "medsight train plans itself" if planned else
                    "FALLBACK: this medsight train does not plan (no --time-budget option), so the bench ran "
                    "--recipe none --folds K --set data.test_fraction=0 (the old defaults, cross-validated); "
                    "rerun after planning lands",
    }
    print("\n".join(f"{key}: {value}" for key, value in header.items()), flush=True)
    rows = []
    for name in args.sets:
        rows.append(run_set(name, args.data / SETS[name], args, planned))
        print(report(rows[-1]), flush=True)
    markdown = table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classification.json").write_text(json.dumps({**header, "results": rows}, indent=2, default=float))
    (args.out / "classification.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
