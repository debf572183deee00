"""``medsight registry list|register|promote|rollback --registry DIR``"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medsight.cli.errors import reports_errors

app = typer.Typer(help="Versions of model bundles: candidates, production, rollback.", no_args_is_help=True)

_REGISTRY = typer.Option(..., "--registry", help="The registry folder (registry.json + versions/).")


@app.command("list")
@reports_errors
def list_versions(registry: Path = _REGISTRY) -> None:
    """Every version with its stage, parent, hash, data hash and headline metric."""
    from medsight.registry import ModelRegistry

    versions = ModelRegistry(registry).list()
    for v in versions:
        metric = next((f"{k}={val:.4f}" for k, val in v["metrics"].items() if k.endswith("auc") or "dice" in k), "")
        gate = v["notes"].get("gate")
        verdict = f"gate {'passed' if gate['passed'] else 'REJECTED'} ({gate['difference']:+.4f})" if gate else ""
        typer.echo(f"{v['version']:>3}  {v['stage']:<10}  parent={v['parent'] or '-':<3}  {v['hash']}  "
                   f"data={v['data_hash'] or '-'}  {metric}  {verdict}".rstrip())
    if not versions:
        typer.echo(f"{registry}: no versions yet (medsight registry register BUNDLE --registry {registry})")


@app.command("register")
@reports_errors
def register(
    bundle: Path = typer.Argument(..., help="A model folder (RUN_DIR/model)."),
    registry: Path = _REGISTRY,
    parent: int | None = typer.Option(None, help="The version this one was derived from."),
    metrics: Path | None = typer.Option(None, help="A metrics.json to record (default: the bundle's own metrics)."),
    data_hash: str | None = typer.Option(None, help="The training data's hash (default: the bundle's)."),
) -> None:
    """Copy a bundle into the registry as a new candidate."""
    from medsight.errors import ConfigError
    from medsight.registry import ModelRegistry

    recorded = None
    if metrics is not None:
        try:
            recorded = json.loads(metrics.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(metrics, f"cannot read it as JSON ({type(exc).__name__})",
                              "pass the metrics.json an evaluation wrote") from exc
    version = ModelRegistry(registry).register(bundle, metrics=recorded, data_hash=data_hash, parent=parent)
    typer.echo(f"registered {bundle} as version {version} (candidate)")


@app.command("promote")
@reports_errors
def promote(version: int = typer.Argument(..., help="The version to serve."), registry: Path = _REGISTRY) -> None:
    """Make a version production; the previous production is archived. A watching service swaps to it."""
    from medsight.registry import ModelRegistry

    record = ModelRegistry(registry).promote(version)
    typer.echo(f"version {record['version']} ({record['hash']}) is now production")


@app.command("rollback")
@reports_errors
def rollback(registry: Path = _REGISTRY) -> None:
    """Go back to the previous production version."""
    from medsight.registry import ModelRegistry

    record = ModelRegistry(registry).rollback()
    typer.echo(f"rolled back: version {record['version']} ({record['hash']}) is production again")
