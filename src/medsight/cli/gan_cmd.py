"""``medsight gan train DATA --out DIR``, ``medsight gan sample GENERATOR --n N --label L --out DIR``,
``medsight gan report GENERATOR --data DATA --classifier BUNDLE --out DIR``."""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import reports_errors

app = typer.Typer(help="Generate training images: class-conditional DCGAN and mask-to-image Pix2Pix.",
                  no_args_is_help=True)


def _size(values: list[int] | None) -> tuple[int, int]:
    values = values or [64]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


@app.command("train")
@reports_errors
def train(
    data: Path = typer.Argument(..., help="A classification set (dcgan) or image/mask pairs (pix2pix)."),
    out: Path = typer.Option(..., help="Output folder: generator/, checkpoints/, history.json."),
    kind: str = typer.Option("dcgan", help="dcgan (label -> image) or pix2pix (mask -> image)."),
    size: list[int] = typer.Option(None, help="Image size, one or two values, 28..64 (default 64); repeatable."),
    channels: int = typer.Option(1, help="Image channels."),
    epochs: int = typer.Option(50, help="Training epochs."),
    batch_size: int = typer.Option(None, help="Batch size (default 64 for dcgan, 8 for pix2pix)."),
    seed: int = typer.Option(0, help="Random seed."),
    val_fraction: float = typer.Option(0.15, help="dcgan: as in the classifier run, so the GAN never sees val."),
    test_fraction: float = typer.Option(0.15, help="dcgan: as in the classifier run, so the GAN never sees test."),
    class_names: list[str] = typer.Option(None, "--class-name",
                                          help="dcgan: classes in label order, as data.class_names; repeatable."),
    resume: bool = typer.Option(False, help="Continue from OUT/checkpoints/last.safetensors."),
    progress: bool = typer.Option(True, help="Print one line per epoch."),
) -> None:
    """Train a GAN; the generator folder is rewritten after every epoch."""
    from medsight.errors import ConfigError

    if kind == "dcgan":
        from medsight.gan.dcgan import train_dcgan

        folder = train_dcgan(data, out=out, size=_size(size), channels=channels, epochs=epochs,
                             batch_size=batch_size or 64, seed=seed, val_fraction=val_fraction,
                             test_fraction=test_fraction, class_names=class_names or None, resume=resume,
                             progress=progress)
    elif kind == "pix2pix":
        from medsight.gan.pix2pix import train_pix2pix

        folder = train_pix2pix(data, out=out, size=_size(size), channels=channels, epochs=epochs,
                               batch_size=batch_size or 8, seed=seed, resume=resume, progress=progress)
    else:
        raise ConfigError(f"--kind {kind}", "is not a GAN medsight trains", "use dcgan or pix2pix")
    typer.echo(f"generator: {folder}")


@app.command("sample")
@reports_errors
def sample(
    generator: Path = typer.Argument(..., help="A generator folder written by medsight gan train (OUT/generator)."),
    out: Path = typer.Option(..., help="Folder for the PNG files."),
    n: int = typer.Option(16, help="dcgan: how many images."),
    label: str = typer.Option(None, help="dcgan: the class, by name or index."),
    masks: Path = typer.Option(None, help="pix2pix: a folder of mask images to translate."),
    seed: int = typer.Option(0, help="Random seed of the noise."),
) -> None:
    """Write generated images as PNG files."""
    from medsight.errors import ConfigError
    from medsight.models.generator_store import read_info, write_pngs

    info = read_info(generator)
    if info.kind == "pix2pix":
        from medsight.gan.pix2pix import read_masks, translate

        if masks is None:
            raise ConfigError("--masks", "is missing; a pix2pix generator makes images from masks",
                              "pass --masks DIR with mask images")
        label_maps, files = read_masks(masks, info.size)
        paths = write_pngs(translate(generator, label_maps), out, [f"{p.name.split('.')[0]}_generated" for p in files])
    else:
        from medsight.gan.dcgan import sample_images

        if label is None:
            raise ConfigError("--label", f"is missing; the generator makes {info.label_names}", "pass --label NAME")
        images = sample_images(generator, n=n, label=label, seed=seed)
        name = info.label_names[info.label_index(label)]
        paths = write_pngs(images, out, [f"{name}_{i:04d}" for i in range(len(images))])
    typer.echo(f"wrote {len(paths)} PNG file(s) to {out}")


@app.command("report")
@reports_errors
def report(
    generator: Path = typer.Argument(..., help="A dcgan generator folder."),
    data: str = typer.Option(..., help="The real classification data set."),
    classifier: Path = typer.Option(..., help="A classifier bundle trained on the real data (RUN/model)."),
    out: Path = typer.Option(..., help="Output folder for quality.json, report.html and sample grids."),
    seed: int = typer.Option(0, help="Random seed."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Classifier Fréchet distance (not Inception FID), train-on-synthetic/test-on-real accuracy, sample grids."""
    from medsight.gan.quality import FD_NAME, gan_report

    result = gan_report(generator=generator, data=data, classifier=classifier, out=out, seed=seed, progress=progress)
    fd, tstr = result["classifier_frechet_distance"], result["tstr"]
    typer.echo(
        f"{FD_NAME}: {fd['all']:.3f} (real train vs real val: {fd['real_train_vs_real_val']:.3f})\n"
        f"TSTR on real val (n={tstr['n_real_val']}): accuracy={tstr['accuracy']:.4f} auc={tstr['auc']:.4f}\n"
        f"wrote {out / 'quality.json'} and {out / 'report.html'}"
    )
