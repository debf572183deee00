"""``medsight pretrain DATA... --out DIR --mode supervised|simclr --model NAME``: weights for ``model.pretrained``."""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import parse_overrides, reports_errors


@reports_errors
def pretrain(
    data: list[str] = typer.Argument(
        ..., help="supervised: one labelled data set; simclr: folders, image/DICOM/NIfTI files or .npz archives "
        "(test_* arrays and test/ folders are never read)."
    ),
    out: Path = typer.Option(..., help="Output folder: weights.safetensors + pretrain.json."),
    mode: str = typer.Option("simclr", help="supervised or simclr (self-supervised, contrastive)."),
    model: str = typer.Option("compact_cnn", help="Registered 2D classifier (medsight models list)."),
    size: int = typer.Option(28, help="Images are resized to SIZE x SIZE."),
    channels: int = typer.Option(1, help="Input channels (preprocess.channels)."),
    epochs: int = typer.Option(20, help="Training epochs."),
    batch_size: int = typer.Option(256, help="Batch size (simclr: N images, 2N views)."),
    lr: float = typer.Option(1e-3, help="Learning rate."),
    temperature: float = typer.Option(0.5, help="NT-Xent temperature (simclr)."),
    seed: int = typer.Option(0, help="Seed of the initial weights and the augmentations."),
    recipe: str = typer.Option(None, help="supervised: a medsight train recipe under these settings."),
    kwarg: list[str] = typer.Option(None, "--kwarg", help="Model keyword argument: --kwarg width=16"),
    progress: bool = typer.Option(True, help="Print one line per epoch."),
) -> None:
    """Pretrain a model on your own data; fine-tune from it with model.pretrained=DIR/weights.safetensors."""
    from medsight.workflows.pretrain import run_pretrain

    info = run_pretrain(
        data=data, out=out, mode=mode, model=model, model_kwargs=parse_overrides(kwarg), size=size,
        channels=channels, epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature, seed=seed,
        recipe=recipe, progress=progress,
    )
    typer.echo(f"weights: {info['weights']}\nreport:  {out / 'pretrain.json'}")
