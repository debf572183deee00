"""``medsight triage train BUNDLE --data VAL`` and ``medsight triage evaluate BUNDLE --data DATA --out DIR``."""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors

app = typer.Typer(help="A learnt triage policy: report automatically or refer to a radiologist.",
                  no_args_is_help=True)


@app.command("train")
@reports_errors
def train(
    bundle: Path = typer.Argument(..., help="A classification model folder (RUN_DIR/model)."),
    data: str = typer.Option(..., help="The labelled data set the model was trained on."),
    split: str = typer.Option("val", help="Split whose cases are replayed as episodes (train, val, test, all)."),
    costs: Path = typer.Option(None, help="YAML cost table: missed_finding, false_alarm, radiologist_time."),
    missed_finding: float = typer.Option(None, help="Cost of a missed finding (overrides --costs)."),
    false_alarm: float = typer.Option(None, help="Cost of a false alarm (overrides --costs)."),
    radiologist_time: float = typer.Option(None, help="Cost of a referral (overrides --costs)."),
    epochs: int = typer.Option(40, help="Passes over the episodes."),
    seed: int = typer.Option(0, help="Seed of the exploration."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train the Q-learning triage agent on a split and save it in BUNDLE/triage/."""
    from medsight.triage.agent import AgentConfig
    from medsight.triage.costs import load_costs
    from medsight.triage.train import train_policy

    table = load_costs(costs, {"missed_finding": missed_finding, "false_alarm": false_alarm,
                               "radiologist_time": radiologist_time})
    summary = train_policy(bundle=bundle, data=data, split=split, costs=table,
                           agent=AgentConfig(epochs=epochs, seed=seed), progress=progress)
    mean = summary["train_mean_cost"]
    typer.echo(f"trained on {summary['cases']} {split} cases ({summary['positives']} positive), "
               f"{summary['epochs']} epochs; mean cost per case on them: agent {mean['agent']:.4f}, "
               f"fixed threshold {mean['fixed_threshold']:.4f}, uncertainty threshold "
               f"{mean['uncertainty_threshold']:.4f}\nwrote {summary['folder']} ({summary['policy_version']})")


@app.command("evaluate")
@reports_errors
def evaluate(
    bundle: Path = typer.Argument(..., help="A classification model folder with a triage policy."),
    data: str = typer.Option(..., help="The labelled data set."),
    split: str = typer.Option("test", help="Held-out split: test (default) or val."),
    out: Path = typer.Option(..., help="Output folder for triage_metrics.json, triage_table.md, triage_curve.png."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Automation rate against error rate of the policy and both baselines on a held-out split."""
    from medsight.triage.evaluate import evaluate_policy, format_table

    result = evaluate_policy(bundle=bundle, data=data, split=split, out=out, progress=progress)
    note = "" if result["held_out"] else f" (warning: the policy was trained on this {split} split)"
    typer.echo(f"{split}: {result['rows'][0]['n']} cases{note}\n{format_table(result['rows'])}\n"
               f"wrote {', '.join(result['files'])}")
