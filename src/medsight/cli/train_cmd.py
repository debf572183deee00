"""``medsight train [CONFIG.yaml] [--recipe NAME] [--data PATH] [--out RUN_DIR] [--nproc N] ...``

``--nproc N`` (and ``--nnodes``/``--node-rank``/``--master-addr``/``--master-port`` for
several machines) re-launches the same command under ``torchrun`` as N data-parallel
processes; the direct form ``torchrun --nproc-per-node N -m medsight.cli.main train ...``
works as well. torchrun's per-rank folders (a failed rank's ``error.json``) go to
``RUN_DIR/torchrun/``.

A classification with neither ``--recipe`` nor a config file plans itself first
(:func:`medsight.workflows.plan.plan_for_training`): ``RUN_DIR/fingerprint.json`` and ``RUN_DIR/plan.json``,
within ``--time-budget`` minutes; ``--recipe none`` keeps the plain defaults. ``--resume``, and each rank
of a ``--nproc`` launch (the launcher plans before it starts them), read ``RUN_DIR/plan.json`` back.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from medsight.cli.errors import parse_overrides, reports_errors

#: The run folder's subfolder for torchrun's per-rank folders under ``--nproc``/``--nnodes``.
TORCHRUN_LOGS = "torchrun"


@reports_errors
def train(
    config: Path = typer.Argument(None, help="YAML config; flags override its keys."),
    config_opt: Path = typer.Option(None, "--config", help="YAML config (same as the argument)."),
    recipe: str = typer.Option(
        None, help="A packaged recipe: demo, medmnist, photos, drive, demo_seg; none for the defaults. "
        "Without a recipe or config, a classification plans itself from the data (RUN/plan.json) and "
        "segmentation of a DRIVE folder trains the drive recipe."
    ),
    time_budget: float = typer.Option(None, "--time-budget", help="Minutes of training the plan fits every "
                                      "fold into (a planned classification: default 10; detection: 60)."),
    task: str = typer.Option(None, help="classification, segmentation or detection."),
    data: str = typer.Option(
        None, help="Classification: a .npz, class folders, a CSV manifest or DICOM folders. Segmentation: images/ + "
        "masks/ (+ roi/), DRIVE, an MSD dataset.json, a DICOM series + SEG. Detection: COCO, VOC, YOLO or a box CSV."
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
    pretrained: str = typer.Option(None, help="model.pretrained: weights to start from (medsight pretrain, "
                                   "safetensors, or a torchvision/MONAI/MedicalNet state dict)."),
    synthetic: str = typer.Option(None, help="train.synthetic: a generator folder (medsight gan train)."),
    synthetic_ratio: float = typer.Option(None, help="train.synthetic_ratio: generated samples per real one."),
    set_: list[str] = typer.Option(None, "--set", help="Override any key: --set train.lr=0.01"),
    progress: bool = typer.Option(True, help="Show progress bars."),
    nproc: int = typer.Option(1, min=1, help="Data-parallel processes on this machine (DDP through torchrun)."),
    nnodes: int = typer.Option(1, min=1, help="Machines in a multi-node DDP run (torchrun --nnodes)."),
    node_rank: int = typer.Option(0, min=0, help="This machine's index, 0..nnodes-1 (node 0 writes the run)."),
    master_addr: str = typer.Option(None, help="Address of node 0 for a multi-node run (default 127.0.0.1)."),
    master_port: int = typer.Option(29500, help="A free TCP port on node 0 for a multi-node run."),
) -> None:
    """Train a model and write the run folder: config, metrics.csv, TensorBoard, bundle, report."""
    from medsight.config import load_config
    from medsight.runtime import distributed
    from medsight.workflows.train import run_training

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
        "model.pretrained": pretrained,
        "train.synthetic": synthetic,
        "train.synthetic_ratio": synthetic_ratio,
        **parse_overrides(set_),
    }
    config = config or config_opt
    chosen = _recipe_for(recipe, config, data, overrides)
    cfg = load_config(config, recipe=chosen, overrides=overrides)
    run_dir = out or Path("runs") / cfg.name
    cfg = _planned(cfg, run_dir, planned=chosen is None and not config, time_budget=time_budget, resume=resume,
                   progress=progress)
    if (nproc > 1 or nnodes > 1) and not distributed.under_torchrun():
        _check_launch(cfg, nproc=nproc, nnodes=nnodes, node_rank=node_rank)
        flags = {
            "--config": config, "--recipe": recipe, "--out": run_dir.resolve(), "--task": task,
            "--data": data, "--model": model, "--epochs": epochs, "--batch-size": batch_size, "--lr": lr,
            "--seed": seed, "--folds": folds, "--on-bad-file": on_bad_file, "--pretrained": pretrained,
            "--synthetic": synthetic, "--synthetic-ratio": synthetic_ratio, "--time-budget": time_budget,
        }
        command = torchrun_command(_cli_args(flags, sets=set_, resume=resume, progress=progress), nproc=nproc,
                                   nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
                                   master_port=master_port, log_dir=run_dir.resolve() / TORCHRUN_LOGS)
        raise typer.Exit(subprocess.run(command, check=False).returncode)
    with distributed.session(cfg.train.device):
        summary = run_training(cfg, out=run_dir, resume=resume, progress=progress and distributed.is_main())
    if summary:
        typer.echo(summary)
    if distributed.under_torchrun() and distributed.world_size() > 1:
        _exit_without_teardown()


def _recipe_for(recipe: str | None, config: Path | None, data: str | None, overrides: dict) -> str | None:
    """The recipe to load: the one asked for (``none``: the defaults); with neither a recipe nor a
    config file, the recipe made for a recognised public layout (``drive`` for segmentation of a
    DRIVE folder), said on stderr."""
    from medsight.data.seg_layouts import is_drive
    from medsight.runtime import distributed

    if recipe is not None or config is not None or overrides.get("task") != "segmentation" or not data:
        return recipe
    if not is_drive(data):
        return None
    if not distributed.under_torchrun():  # the launcher says it once, not every rank
        typer.echo(f"{data} is a DRIVE folder: training the drive recipe (--recipe none for the defaults)", err=True)
    return "drive"


def _planned(cfg, run_dir: Path, *, planned: bool, time_budget: float | None, resume: bool, progress: bool):
    """``cfg`` planned from the data when it is a classification or detection without recipe or config; else ``cfg``.

    A DDP rank (under torchrun) reads the plan its launcher wrote, like ``--resume``.

    Raises:
        ConfigError: ``--time-budget`` where nothing is planned.
    """
    from medsight.errors import ConfigError
    from medsight.runtime import distributed
    from medsight.workflows.plan import DEFAULT_BUDGET_MIN, plan_for_training

    if not planned or cfg.task not in ("classification", "detection"):
        if time_budget is not None:
            raise ConfigError("--time-budget", "sets the budget of a planned classification, but this run is not "
                              "planned (a recipe, a config file or a segmentation)",
                              "drop --time-budget, or train a classification or detection without --recipe and "
                              "config")
        return cfg
    rank = distributed.under_torchrun()
    if cfg.task == "detection":
        from medsight.workflows.detection import DEFAULT_DETECTION_BUDGET_MIN, plan_for_detection_training

        cfg, line = plan_for_detection_training(cfg, run_dir, time_budget_min=time_budget or
                                                DEFAULT_DETECTION_BUDGET_MIN, reuse=resume or rank,
                                                progress=progress and not rank)
    else:
        cfg, line = plan_for_training(cfg, run_dir, time_budget_min=time_budget or DEFAULT_BUDGET_MIN,
                                      reuse=resume or rank, progress=progress and not rank)
    if not rank:  # the launcher says it once, not every rank
        typer.echo(line, err=True)
    return cfg


def _exit_without_teardown() -> None:
    """End a finished DDP process at once. Everything is written and the process group is gone,
    but gloo on CPU (PyTorch 2.13) can still abort a process in the interpreter's teardown
    (``terminate called without an active exception``), which torchrun reports as a failed
    run; ``os._exit`` skips that teardown."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def torchrun_command(
    args: list[str], *, nproc: int, nnodes: int = 1, node_rank: int = 0, master_addr: str | None = None,
    master_port: int = 29500, log_dir: Path | None = None,
) -> list[str]:
    """The ``python -m torch.distributed.run ... -m medsight.cli.main train ARGS`` command line.

    One machine without ``master_addr``: ``--standalone`` (torchrun picks a free port).
    Otherwise a static rendezvous at ``master_addr:master_port`` (node 0's address).
    ``log_dir``: where torchrun keeps its per-rank folders (a failed rank's ``error.json``);
    without it, torchrun leaves a ``torchelastic_*`` folder in the system's temp folder each launch.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if log_dir is not None:
        command += ["--log-dir", str(log_dir)]
    if nnodes == 1 and master_addr is None:
        command.append("--standalone")
    else:
        command += ["--nnodes", str(nnodes), "--node-rank", str(node_rank),
                    "--master-addr", master_addr or "127.0.0.1", "--master-port", str(master_port)]
    return [*command, "-m", "medsight.cli.main", "train", *args]


def _cli_args(flags: dict[str, object], *, sets: list[str] | None, resume: bool, progress: bool) -> list[str]:
    """The ``medsight train`` arguments that reproduce this call in each launched process."""
    args = [part for flag, value in flags.items() if value is not None for part in (flag, str(value))]
    for pair in sets or []:
        args += ["--set", pair]
    return args + (["--resume"] if resume else []) + ([] if progress else ["--no-progress"])


def _check_launch(cfg, *, nproc: int, nnodes: int, node_rank: int) -> None:
    """Clear errors before any process starts: task, node rank, processes per node, batch split."""
    from medsight.errors import ConfigError
    from medsight.runtime import distributed
    from medsight.runtime.device import pick_device

    if node_rank >= nnodes:
        raise ConfigError(f"--node-rank {node_rank}", f"is outside 0..{nnodes - 1}", "number the machines from 0")
    distributed.check_processes(nproc, pick_device(cfg.train.device))
    distributed.check_config(cfg.train, nproc * nnodes)
    if cfg.task == "segmentation" and cfg.segment.batch_size:
        distributed.check_batch(cfg.segment.batch_size, nproc * nnodes, "segment.batch_size")
