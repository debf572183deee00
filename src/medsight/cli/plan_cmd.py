"""``medsight plan DATA [--task TASK] [--out DIR] [--time-budget MIN] [--memory-mb N] [--set KEY=VALUE]``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import parse_overrides, reports_errors


@reports_errors
def plan(
    data: Path = typer.Argument(..., help="Classification: class folders, a CSV manifest, an .npz or DICOM folders. "
                                "Segmentation: image/mask folders, DRIVE, an MSD dataset.json folder or DICOM + SEG."),
    task: str = typer.Option(None, help="classification, segmentation or detection (default: classification when "
                             "DATA opens as a labelled classification set, else segmentation)."),
    out: Path = typer.Option(Path("plan"), help="Folder for fingerprint.json and plan.json."),
    time_budget: float = typer.Option(None, "--time-budget", help="Classification and detection: minutes of "
                                      "training the plan fits every fold into (default 10; detection 60)."),
    memory_mb: float = typer.Option(2000, help="Segmentation: memory budget of one training step (MB)."),
    spatial_dims: int = typer.Option(None, help="Segmentation: force a 2D plan of 3D data (2)."),
    set_: list[str] = typer.Option(None, "--set", help="Segmentation: a plan field (--set batch_size=4); "
                                   "classification, detection: a config key (--set data.modality=CT)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Fingerprint a data set and derive its training plan, every decision explained.

    Classification: input size, normalisation by modality, channels, network, batch size, augmentation, class
    weights, folds, TTA and the epochs that fit the time budget. Segmentation: spacing, normalisation, patch
    and batch size. Detection: input size, anchor sizes, batch size, augmentation and the epochs that fit.
    """
    from medsight.errors import ConfigError
    from medsight.workflows.plan import DEFAULT_BUDGET_MIN, plan_classification, plan_dataset, plan_task

    chosen = task or plan_task(data)
    if chosen not in ("classification", "segmentation", "detection"):
        raise ConfigError(f"--task {chosen}", "is not a task", "use classification, segmentation or detection")
    if chosen == "detection":
        from medsight.config import load_config
        from medsight.workflows.detection import DEFAULT_DETECTION_BUDGET_MIN, plan_detection

        cfg = load_config(overrides={"task": "detection", "data.path": str(data), **parse_overrides(set_)})
        _, result = plan_detection(cfg, out, time_budget_min=time_budget or DEFAULT_DETECTION_BUDGET_MIN,
                                   progress=progress)
        for line in plan_lines(result):
            typer.echo(line)
    elif chosen == "segmentation":
        if time_budget is not None:
            raise ConfigError("--time-budget", "plans a classification; a segmentation plan fits memory",
                              "use --memory-mb for segmentation")
        result = plan_dataset(
            data=data, out=out, memory_budget_mb=memory_mb, spatial_dims=spatial_dims,
            overrides=parse_overrides(set_) or None, progress=progress,
        )
        for note in result.notes:
            typer.echo(f"- {note}")
    else:
        from medsight.config import load_config

        cfg = load_config(overrides={"task": "classification", "data.path": str(data), **parse_overrides(set_)})
        _, result = plan_classification(cfg, out, time_budget_min=time_budget or DEFAULT_BUDGET_MIN,
                                        progress=progress)
        for line in plan_lines(result):
            typer.echo(line)
    typer.echo(f"wrote {out / 'plan.json'} and {out / 'fingerprint.json'}")


def plan_lines(plan) -> list[str]:
    """A classification or detection plan as a short table: each decision and why, what the budget forced, the
    estimate."""
    width = max(len(key) for key in plan.notes)
    lines = [f"{key:<{width}}  {note}" for key, note in plan.notes.items()]
    lines += [f"gave up: {item}" for item in plan.gave_up]
    lines.append(f"estimated training time {plan.estimated_min:.3g} min of the {plan.time_budget_min:g} min budget")
    return lines
