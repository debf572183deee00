"""``medsight evaluate BUNDLE --data PATH [--split test] --out DIR``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors


@reports_errors
def evaluate(
    bundle: Path = typer.Argument(..., help="A model folder written by training (RUN_DIR/model)."),
    data: str = typer.Option(..., help="The data set: any layout medsight trains on (classification or segmentation)."),
    split: str = typer.Option(None, help="train, val, test, or all (default: every case of data the model was not "
                              "trained on; the held-out test split of its own training data)."),
    out: Path = typer.Option(..., help="Output folder for metrics.json, per_case.csv, report.html."),
    profile: str = typer.Option(None, "--profile", help="Segmenters: fast or accurate, the inference profiles "
                                "measured when the bundle was trained (default: the bundle's own, fast)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Evaluate a bundle on a data set split, with 95% bootstrap CIs and a report."""
    from medsight.workflows.evaluate import run_evaluation

    metrics = run_evaluation(bundle=bundle, data=data, split=split, out=out, progress=progress, profile=profile)
    if metrics.get("task") == "detection":
        from medsight.workflows.detection import det_summary

        typer.echo(f"{det_summary(metrics['split'], metrics)}\n{metrics['scored']}\n"
                   f"wrote {out / 'metrics.json'}, {out / 'per_image.csv'} and {out / 'report.html'}")
        return
    if metrics.get("task") == "segmentation":
        from medsight.segmentation.evaluate import seg_summary

        typer.echo(f"{seg_summary(metrics['split'], metrics)}\n{metrics['scored']}\n"
                   f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
        return
    typer.echo(
        f"{metrics['split']}: n={metrics['n']} accuracy={metrics['accuracy']:.4f} auc={metrics['auc']:.4f} "
        f"sensitivity={metrics['sensitivity']:.4f} specificity={metrics['specificity']:.4f} "
        f"(threshold {_threshold(metrics['threshold'])})\n{metrics['scored']}\n"
        f"wrote {out / 'metrics.json'} and {out / 'report.html'}"
    )


def _threshold(value: float | None) -> str:
    """The decision threshold rounded to 4 digits; a multi-class model has none (argmax)."""
    return "argmax" if value is None else f"{value:.4f}"
