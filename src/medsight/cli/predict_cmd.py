"""``medsight predict BUNDLE INPUT... [--out preds.csv|preds.json|MASK_DIR] [--workers N]``"""

from __future__ import annotations

from pathlib import Path

import typer

from medsight.cli.errors import finish_batch, reports_errors


@reports_errors
def predict(
    bundle: Path = typer.Argument(..., help="A model folder (RUN_DIR/model)."),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively); a 3D "
                                        "segmenter reads each folder of DICOM slices as one volume."),
    out: Path = typer.Option(None, help="Classifiers: a .csv or .json file (default predictions.csv). Segmenters: "
                             "a folder for the masks and predictions.csv (default masks/); detectors: boxes/."),
    resume: bool = typer.Option(False, "--resume", help="Skip files that already have a row in the output CSV."),
    backend: str = typer.Option("auto", help="torch, onnx (needs medsight export) or auto: ONNX Runtime where the "
                                "bundle has a current ONNX export (segmenters: not with --mixed-precision)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    out_of_domain: str = typer.Option(
        None, "--out-of-domain", help="Classifiers and detectors: flag (answer, marked out_of_domain, with the "
        "reasons), refuse (no answer: an error row with the reasons) or off, for inputs outside the training domain; "
        "default: the bundle's own (its training config's predict.out_of_domain)."
    ),
    profile: str = typer.Option(None, "--profile", help="Segmenters: fast or accurate, the inference profiles "
                                "measured when the bundle was trained (default: the bundle's own, fast)."),
    workers: int = typer.Option(1, min=1, help="Worker processes (each loads the model once); rows stay in input "
                                "order."),
    probabilities: bool = typer.Option(
        False, "--probabilities", help="Segmenters: also write each foreground class's probability map next to its "
        "mask (16-bit PNG holding p x 65535, or float32 NIfTI with the image's affine)."
    ),
    mixed_precision: bool = typer.Option(
        False, "--mixed-precision", help="Segmenters: run the network in bfloat16 where the CPU has native bf16 "
        "(AVX512-BF16/AMX; about 2x faster, probabilities within ~0.02), autocast on CUDA; float32 elsewhere."
    ),
) -> None:
    """Predict labels for images (classifiers), write masks (segmenters) or boxes (detectors).

    A file that fails gets a row with the reason in its error column and the others go on; the
    command then exits 3 and says how many failed (0 when every file succeeded).
    """
    from medsight.bundle import load_bundle
    from medsight.errors import ConfigError

    header = load_bundle(bundle, weights=False)
    if profile is not None:
        from medsight.inference.segmenter import check_profile

        check_profile(header, profile)
    if header.task == "detection":
        return _predict_boxes(bundle, inputs, out, progress=progress, backend=backend, out_of_domain=out_of_domain,
                              refused=[probabilities, mixed_precision, resume, workers > 1])
    if header.task == "segmentation":
        if out_of_domain is not None:
            raise ConfigError("--out-of-domain", "is for classification models",
                              "drop it: a segmentation bundle keeps no domain record")
        return _predict_masks(bundle, inputs, out, workers=workers, progress=progress, resume=resume,
                              probabilities=probabilities, mixed_precision=mixed_precision, backend=backend,
                              profile=profile)
    if probabilities or mixed_precision:
        flag = "--probabilities" if probabilities else "--mixed-precision"
        raise ConfigError(flag, "is for segmentation models", "drop it: a classifier's class probabilities are "
                          "already columns of its output, and it runs in float32 (or ONNX: --backend onnx)")
    from medsight.inference.domain import NO_RECORD
    from medsight.inference.predictor import decision_rule, predict_to_file

    out = out or Path("predictions.csv")
    if workers > 1:
        from medsight.inference.parallel import predict_parallel

        counts = predict_parallel(bundle=bundle, inputs=inputs, out=out, workers=workers, progress=progress,
                                  resume=resume, backend=backend, out_of_domain=out_of_domain)
    else:
        counts = predict_to_file(bundle=bundle, inputs=inputs, out=out, progress=progress, resume=resume,
                                 backend=backend, out_of_domain=out_of_domain)
    if header.domain is None:
        typer.echo(f"note: {NO_RECORD}")
    typer.echo(f"wrote {out}: {counts['ok']} predicted, {counts['errors']} failed, {counts['skipped']} already done; "
               f"{decision_rule(header.label_names, header.threshold)}")
    finish_batch(counts)


def _predict_masks(bundle: Path, inputs: list[Path], out: Path | None, *, workers: int, **options) -> None:
    """A segmentation bundle: one mask per file and predictions.csv in the folder ``out`` (default masks/)."""
    from medsight.errors import ConfigError
    from medsight.inference.segmenter import segment_to_folder

    out = out or Path("masks")
    if out.suffix.lower() in {".csv", ".json"}:
        raise ConfigError(f"--out {out}", "a segmentation model writes mask files into a folder",
                          "pass a folder, e.g. --out masks")
    if workers > 1:
        from medsight.inference.parallel import segment_parallel

        counts = segment_parallel(bundle=bundle, inputs=inputs, out=out, workers=workers, **options)
    else:
        counts = segment_to_folder(bundle=bundle, inputs=inputs, out=out, **options)
    typer.echo(f"wrote {counts['ok']} mask(s) to {out}/ and {out / 'predictions.csv'}; "
               f"{counts['errors']} failed (see the error column); {counts['skipped']} already done")
    finish_batch(counts)


def _predict_boxes(bundle: Path, inputs: list[Path], out: Path | None, *, progress: bool, backend: str,
                   out_of_domain: str | None, refused: list[bool]) -> None:
    """A detection bundle: boxes.csv, boxes.json and overlays in the folder ``out`` (default boxes/); ``refused``:
    whether each of the options a detector does not take was given."""
    from medsight.detection.predict import predict_boxes
    from medsight.errors import ConfigError

    flags = ("--probabilities", "--mixed-precision", "--resume", "--workers")
    for flag, given in zip(flags, refused, strict=True):
        if given:
            raise ConfigError(flag, "is not available for detection models", f"drop {flag}")
    out = out or Path("boxes")
    if out.suffix.lower() in {".csv", ".json"}:
        raise ConfigError(f"--out {out}", "a detection model writes boxes.csv, boxes.json and overlays into a folder",
                          "pass a folder, e.g. --out boxes")
    counts = predict_boxes(bundle=bundle, inputs=inputs, out=out, progress=progress, backend=backend,
                           out_of_domain=out_of_domain)
    typer.echo(f"wrote {out / 'boxes.csv'}, {out / 'boxes.json'} and overlays in {out / 'overlays'}/: "
               f"{counts['ok']} image(s) done, {counts['errors']} failed (see the error column)")
    finish_batch(counts)
