"""``medsight robustness BUNDLE --data PATH [--split test] --out DIR [--kind noise --kind pgd] [--eps 0.01]``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors


@reports_errors
def robustness(
    bundle: Path = typer.Argument(..., help="A classifier's model folder written by training (RUN_DIR/model)."),
    data: str = typer.Option(..., help="The data set, any classification layout medsight trains on."),
    split: str = typer.Option(None, help="train, val, test, or all (default: test)."),
    out: Path = typer.Option(..., help="Output folder for robustness.json/.csv/.png and report.html."),
    kinds: list[str] = typer.Option(
        None, "--kind",
        help="Repeatable: noise, blur, contrast, brightness, jpeg, rotation; MR data also bias_field, ghosting, "
        "spike, motion; attacks fgsm, pgd (default: all that apply).",
    ),
    eps: list[float] = typer.Option(None, help="Repeatable attack radius on the network input scale "
                                    "(default 0.005 0.01 0.02 0.05)."),
    max_cases: int = typer.Option(None, help="Score only the first N cases of the split (a quick look)."),
    seed: int = typer.Option(0, help="Seed of the random corruption parameters."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Metrics under noise, blur, contrast, brightness, JPEG, rotation, MRI artefacts and FGSM/PGD attacks."""
    from medsight.robustness.attacks import DEFAULT_EPS
    from medsight.robustness.run import run_robustness

    result = run_robustness(
        bundle=bundle, data=data, split=split, out=out, kinds=kinds or None, eps=eps or DEFAULT_EPS,
        max_cases=max_cases, seed=seed, progress=progress,
    )
    clean = result["rows"][0]
    worst = min(result["rows"], key=lambda r: r["accuracy"])
    typer.echo(
        f"{result['split']}: n={result['n']} clean accuracy={clean['accuracy']:.4f} auc={clean['auc']:.4f}; "
        f"worst: {worst['kind']} at {worst['severity']} accuracy={worst['accuracy']:.4f}\n"
        f"wrote {out / 'robustness.csv'}, {out / 'robustness.png'} and {out / 'report.html'}"
    )
