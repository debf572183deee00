"""``medsight train [CONFIG.yaml] [--recipe NAME] [--data PATH] [--out RUN_DIR] ...``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import parse_overrides, reports_errors


@reports_errors
def train(
    config: Path = typer.Argument(None, help="YAML config; flags override its keys."),
    config_opt: Path = typer.Option(None, "--config", help="YAML config (same as the argument)."),
    recipe: str = typer.Option(None, help="A packaged recipe: demo, medmnist, photos, drive, demo_seg."),
    task: str = typer.Option(None, help="classification or segmentation."),
    data: str = typer.Option(
        None, help="Classification: a .npz, class folders, a CSV manifest or DICOM folders. Segmentation: "
        "images/ + masks/ (+ roi/), DRIVE, a Decathlon dataset.json, or a DICOM series with its SEG."
    ),
    out: Path = typer.Option(None, help="Run folder (default runs/<name>)."),
    model: str = typer.Option(None, help="Registered model name (medsight models list)."),
    epochs: int = typer.Option(None, help="train.epochs"),
    batch_size: int = typer.Option(None, help="train.batch_size"),
    lr: float = typer.Option(None, help="train.lr"),
    seed: int = typer.Option(None, help="train.seed (also the split seed)"),
    folds: int = typer.Option(None, help="k-fold cross-validation with an aggregate report"),
    on_bad_file: str = typer.Option(None, help="error (stop) or skip (and report the count)"),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/checkpoints/last."),
    set_: list[str] = typer.Option(None, "--set", help="Override any key: --set train.lr=0.01"),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train a model and write the run folder: config, metrics.csv, TensorBoard, bundle, report."""
    from medsight.config import load_config
    from medsight.engine.pipeline import run_training

    overrides = {
        "task": task,
        "data.path": data,
        "model.name": model,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.seed": seed,
        "data.folds": folds,
        "data.on_bad_file": on_bad_file,
        **parse_overrides(set_),
    }
    cfg = load_config(config or config_opt, recipe=recipe, overrides=overrides)
    run_dir = out or Path("runs") / cfg.name
    summary = run_training(cfg, out=run_dir, resume=resume, progress=progress)
    typer.echo(summary)
