"""``medsight explain BUNDLE IMAGE... --method gradcam|gradcam++|occlusion --out DIR``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import finish_batch, reports_errors


@reports_errors
def explain(
    bundle: Path = typer.Argument(..., help="A classifier's model folder (RUN_DIR/model)."),
    images: list[Path] = typer.Argument(None, help="Image files or folders (searched recursively)."),
    method: str = typer.Option("gradcam", help="gradcam, gradcam++ or occlusion."),
    out: Path = typer.Option(Path("explanations"), help="Folder for the overlays, raw maps and explanations.csv."),
    layer: str = typer.Option(None, help="Target layer (dotted module path); default: the last conv block."),
    target: str = typer.Option(None, help="Class to explain; default: the predicted class."),
    faithfulness: str = typer.Option(
        None, help="A data set: report deletion/insertion AUC of every method vs a random order on its split."
    ),
    split: str = typer.Option("val", help="The split --faithfulness uses."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Heatmap overlays (PNG) and raw maps (.npy, NIfTI for 3D) showing what drove each prediction.

    A file that fails gets a row with the reason in explanations.csv and the others go on; the
    command then exits 3 and says how many failed.
    """
    from medsight.explain import explain_files, faithfulness_report

    if images:
        counts = explain_files(bundle=bundle, images=images, method=method, out=out, layer=layer, target=target,
                               progress=progress)
        typer.echo(f"wrote {counts['ok']} explanation(s) to {out}/ ({counts['errors']} failed); "
                   f"{out / 'explanations.csv'}")
    if faithfulness:
        report = faithfulness_report(bundle=bundle, data=faithfulness, split=split, out=out, progress=progress)
        typer.echo(f"faithfulness on the {split} split (deletion: lower is better, insertion: higher is better):")
        for name, values in report.items():
            typer.echo(f"  {name:10s} deletion AUC {values['deletion_auc']:.4f}  insertion AUC "
                       f"{values['insertion_auc']:.4f}  (n={values['n']})")
    if not images and not faithfulness:
        from medsight.errors import ConfigError

        raise ConfigError("medsight explain", "nothing to explain", "give image files, or --faithfulness DATA")
    if images:
        finish_batch(counts)
