"""``medsight robustness``: a classifier's metrics under corruptions and attacks at graded severities.

The data are read as ``medsight evaluate`` reads them (the bundle's data settings, the same
split), decoded once, then for every corruption kind and severity each raw image is corrupted
(:mod:`medsight.robustness.corruptions`, seeded per image), passed through the bundle's own
preprocessing and scored by the bundle's :class:`~medsight.inference.predictor.Predictor` (calibrated
probabilities, as ``medsight evaluate`` scores them) at the bundle's threshold. Adversarial attacks
(:mod:`medsight.robustness.attacks`) perturb the preprocessed images at each ``eps``.

Writes ``robustness.json``, ``robustness.csv`` (one row per kind and severity),
``robustness.png`` (metric against severity, one line per kind) and ``report.html``.

Example:
    >>> result = run_robustness(bundle=Path("runs/demo/model"), data="data/phantoms", out=Path("rob"))
    >>> result["rows"][0]["kind"], result["rows"][0]["accuracy"]
    ('clean', 0.95)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medsight.atomic_write import atomic_write_text
from medsight.errors import ConfigError, DatasetError
from medsight.result_files import write_csv_table, write_strict_json
from medsight.robustness import corruptions
from medsight.robustness.attacks import ATTACKS, DEFAULT_EPS, PGD_STEPS, attack

METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity")
SEVERITIES = (1, 2, 3, 4, 5)
MRI_FORMATS = ("nifti", "nrrd")


def run_robustness(
    *,
    bundle: Path,
    data: str,
    out: Path,
    split: str | None = None,
    kinds: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    eps: Sequence[float] = DEFAULT_EPS,
    seed: int = 0,
    max_cases: int | None = None,
    progress: bool = True,
) -> dict:
    """Score ``bundle`` on ``data`` clean, corrupted and attacked; write the table, plot and report.

    Args:
        bundle: a classification bundle folder (RUN/model).
        data: the data set, any classification layout; ``split`` as in ``medsight evaluate``
            (default ``test``).
        kinds: corruption kinds (:data:`~medsight.robustness.corruptions.KINDS`) and attacks
            (``fgsm``, ``pgd``); default: the generic corruptions, the MRI artefacts when the
            data are MR, and both attacks.
        severities: corruption severities, 1 to 5.
        eps: attack radii on the network's input scale (0 is skipped: it is the clean row).
        seed: the corruption seed; the same seed gives the same table.
        max_cases: score only the first ``max_cases`` cases of the split (quick looks).

    Returns:
        ``{"rows": [{kind, severity, accuracy, ...}], "n", "split", ...}`` as in robustness.json.

    Raises:
        ConfigError: an unknown kind, a severity outside 1..5, a negative eps, a segmentation bundle.
        DatasetError: MRI artefacts asked for on data that are not MR; classes that differ from
            the bundle's; a split the data set does not have.
    """
    from medsight.bundle import load_bundle
    from medsight.inference.predictor import Predictor

    kinds = list(kinds) if kinds else None
    _check_request(kinds, severities, eps)
    model_bundle = load_bundle(bundle)
    if model_bundle.task == "segmentation":
        return _run_segmentation(model_bundle, bundle=bundle, data=data, out=out, split=split or "all",
                                 kinds=kinds, severities=severities, seed=seed, max_cases=max_cases,
                                 progress=progress)
    split = split or "test"
    samples, labels = _read_split(model_bundle, data, split, max_cases, progress)
    kinds = _classifier_kinds(kinds, samples[0], data)
    rows = _classifier_rows(Predictor(model_bundle), samples, np.asarray(labels), kinds=kinds,
                            severities=severities, eps=eps, seed=seed, progress=progress)
    result = {
        "bundle": str(bundle), "data": str(data), "split": split, "n": len(labels), "seed": seed,
        "threshold": model_bundle.threshold,
        "space": "corruptions on the raw decoded image; attacks on the network input",
        "pgd_steps": PGD_STEPS, "rows": rows, "severity_tables": severity_tables(),
    }
    write_outputs(result, Path(out))
    return result


def _classifier_kinds(kinds: list[str] | None, first, data: str) -> list[str]:
    """The corruptions and attacks to run on a classifier: ``kinds``, or by default the generic corruptions,
    the MRI artefacts when ``first`` (a sample of the split) is MR, and both attacks.

    Raises:
        DatasetError: MRI artefacts asked for on images that are not MR.
    """
    is_mr = _is_mr(first)
    if kinds is None:
        return list(corruptions.GENERIC_KINDS) + (list(corruptions.MRI_KINDS) if is_mr else []) + list(ATTACKS)
    wrong = [k for k in kinds if k in corruptions.MRI_KINDS and not is_mr]
    if wrong:
        raise DatasetError(
            data, f"{', '.join(wrong)} simulate MRI artefacts but these images are not MR "
            f"(format {first.meta.get('format', '?')}, modality {first.meta.get('modality') or 'unknown'})",
            f"leave them out, or choose from {', '.join(corruptions.GENERIC_KINDS + ATTACKS)}",
        )
    return kinds


def _classifier_rows(predictor, samples: list, y: np.ndarray, *, kinds: list[str], severities: Sequence[int],
                     eps: Sequence[float], seed: int, progress: bool) -> list[dict]:
    """The clean row, then one row per corruption severity and attack eps: the metrics, at the bundle's
    threshold, of the :class:`~medsight.inference.predictor.Predictor`'s calibrated probabilities."""
    import torch

    from medsight.classification.metrics import classification_metrics
    from medsight.progress import track

    bundle = predictor.bundle

    def score(kind: str, severity: float, images) -> dict:
        metrics = classification_metrics(y, predictor.predict_tensors(images), bundle.threshold)
        return {"kind": kind, "severity": severity, **{m: metrics[m] for m in METRICS}}

    clean = _preprocess_all(samples, bundle.preprocess)
    rows = [score("clean", 0, clean)]
    jobs = [(k, s) for k in kinds if k in corruptions.KINDS for s in severities]
    jobs += [(k, float(e)) for k in kinds if k in ATTACKS for e in eps if e > 0]
    targets = torch.as_tensor(y, dtype=torch.long)
    for kind, severity in track(jobs, description="robustness", enabled=progress):
        if kind in ATTACKS:
            images = attack(predictor.model, clean, targets, head=bundle.model.head, method=kind, eps=severity)
        else:
            code = corruptions.KINDS.index(kind)
            images = _preprocess_all(
                [_corrupted(s, kind, severity, np.random.default_rng((seed, code, severity, i)))
                 for i, s in enumerate(samples)],
                bundle.preprocess,
            )
        rows.append(score(kind, severity, images))
    return rows


def severity_tables() -> dict[str, list]:
    """The corruption parameters per severity 0..5, for the JSON and the report."""
    names = {
        "noise": "NOISE_STD", "blur": "BLUR_SIGMA", "contrast": "CONTRAST_FACTOR",
        "brightness": "BRIGHTNESS_SHIFT", "jpeg": "JPEG_QUALITY", "rotation": "ROTATION_DEG",
        "bias_field": "BIAS_STRENGTH", "ghosting": "GHOST_INTENSITY", "spike": "SPIKE_INTENSITY",
        "motion": "MOTION",
    }
    return {kind: [list(v) if isinstance(v, tuple) else v for v in getattr(corruptions, name)]
            for kind, name in names.items()}


def _check_request(kinds: list[str] | None, severities: Sequence[int], eps: Sequence[float]) -> None:
    from medsight.robustness.attacks import check_attack

    for kind in kinds or []:
        if kind not in corruptions.KINDS and kind not in ATTACKS:
            raise ConfigError(f"kind={kind}", "unknown corruption or attack",
                              f"choose from {', '.join(corruptions.KINDS + ATTACKS)}")
    for severity in severities:
        corruptions.check_severity(severity)
        if severity == 0:
            raise ConfigError("severity=0", "severity 0 is the clean row, always included", "use 1 to 5")
    for value in eps:
        check_attack("fgsm", value)


def _read_split(model_bundle, data: str, split: str, max_cases: int | None, progress: bool):
    """The raw samples and labels of one split, read as ``medsight evaluate`` reads them."""
    from medsight.classification.split import bundle_split
    from medsight.errors import MedsightError
    from medsight.progress import track

    ds, data_cfg, indices = bundle_split(model_bundle, data, split)
    if max_cases is not None:
        indices = indices[:max_cases]
    samples, labels = [], []
    for i in track(indices, description=f"reading {split}", enabled=progress):
        item = ds.items[int(i)]
        try:
            samples.append(ds.read(item))
        except MedsightError:
            if data_cfg.on_bad_file == "error":
                raise
            continue
        labels.append(int(item.label) if item.label is not None else -1)
    if not samples:
        raise DatasetError(data, f"no readable image in the {split} split", "run medsight data inspect on it")
    return samples, labels


def _run_segmentation(model_bundle, *, bundle, data, out, split, kinds, severities, seed, max_cases, progress):
    """Segmenters: the corruptions only (no attacks), scored by Dice and pooled pixel AUC / accuracy."""
    from medsight.inference.segmenter import Segmenter
    from medsight.robustness.segmentation import segmentation_rows
    from medsight.segmentation.evaluate import open_split

    attacks = [k for k in kinds or [] if k in ATTACKS]
    if attacks:
        raise ConfigError(f"--kind {attacks[0]}", "adversarial attacks are run on classifiers only",
                          f"choose corruptions: {', '.join(corruptions.KINDS)}")
    if "rotation" in (kinds or []):
        raise ConfigError("--kind rotation", "a rotation moves the anatomy away from the reference mask, which "
                          "is not rotated with it, so its Dice would measure the misalignment",
                          "leave rotation out for segmenters")
    dataset, items = open_split(model_bundle, data, split)
    cases = [(item.case_id, *dataset.read(item)) for item in items[:max_cases]]
    is_mr = _is_mr(cases[0][1])
    kinds = kinds or [k for k in corruptions.GENERIC_KINDS if k != "rotation"] + (
        list(corruptions.MRI_KINDS) if is_mr else [])
    rows = segmentation_rows(Segmenter(model_bundle), cases, kinds=kinds, severities=severities, seed=seed,
                             progress=progress)
    result = {"bundle": str(bundle), "data": str(data), "split": split, "n": len(cases), "seed": seed,
              "task": "segmentation", "space": "corruptions on the raw decoded image, scored inside the ROI",
              "rows": rows, "severity_tables": severity_tables()}
    write_outputs(result, Path(out))
    return result


def _is_mr(sample) -> bool:
    modality = str(sample.meta.get("modality") or "").upper()
    return modality == "MR" or (not modality and sample.meta.get("format") in MRI_FORMATS)


def _corrupted(sample, kind: str, severity: int, rng: np.random.Generator):
    from medsight.sample import Sample

    array = corruptions.corrupt(sample.array, kind, severity, rng)
    return Sample(array, spacing=sample.spacing, affine=sample.affine, meta=sample.meta)


def _preprocess_all(samples, prep):
    import torch

    from medsight.transforms import preprocess

    return torch.from_numpy(np.stack([preprocess(s, prep) for s in samples]).astype(np.float32, copy=False))


def write_outputs(result: dict, out: Path) -> None:
    """robustness.json, robustness.csv, robustness.png and report.html in ``out``."""
    write_strict_json(out / "robustness.json", result)
    write_csv_table(out / "robustness.csv", result["rows"], list(result["rows"][0]))
    plot_robustness(result["rows"], out / "robustness.png")
    atomic_write_text(out / "report.html", report_html(result, out / "robustness.png"))


def plot_robustness(rows: list[dict], path: Path) -> Path:
    """Accuracy and AUC against severity: corruptions on the left, attacks (against eps) on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsight.report.plots import save_figure

    clean = rows[0]
    kinds = list(dict.fromkeys(r["kind"] for r in rows[1:]))
    panels = [("corruptions", [k for k in kinds if k not in ATTACKS]), ("attacks", [k for k in kinds if k in ATTACKS])]
    panels = [(name, ks) for name, ks in panels if ks]
    fig, axes = plt.subplots(2, max(len(panels), 1), figsize=(5.2 * max(len(panels), 1), 7.5), squeeze=False)
    for col, (name, ks) in enumerate(panels):
        for row, metric in enumerate(("accuracy", "auc")):
            ax = axes[row][col]
            for kind in ks:
                points = [(0, clean[metric])] + [(r["severity"], r[metric]) for r in rows if r["kind"] == kind]
                ax.plot(*zip(*points, strict=True), marker="o", label=kind)
            ax.set_xlabel("severity (0 = clean)" if name == "corruptions" else "eps (network input scale)")
            ax.set_ylabel(metric)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{metric} under {name}")
            ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=100)


def report_html(result: dict, png: Path) -> str:
    from medsight.report.html import Figure, figures, key_values, page, paragraph, section, table

    metrics = [key for key in result["rows"][0] if key not in ("kind", "severity")]
    rows = [[r["kind"], r["severity"], *[r[m] for m in metrics]] for r in result["rows"]]
    clean_acc = result["rows"][0]["accuracy"]
    worst = min(result["rows"], key=lambda r: r["accuracy"])
    how = ("Attacks (FGSM, and PGD with "
           f"{result['pgd_steps']} steps) perturb the preprocessed network input; their severity column is eps."
           if "pgd_steps" in result else "Segmenters are scored inside the region of interest: Dice per case, "
           "accuracy and AUC over the pooled pixels; no attacks are run on them.")
    tables = [[kind, *values] for kind, values in result["severity_tables"].items()]
    body = [
        section("Summary", key_values({
            "bundle": result["bundle"], "data": result["data"], "split": result["split"], "cases": result["n"],
            "clean accuracy": clean_acc, "worst": f"{worst['kind']} at {worst['severity']}: {worst['accuracy']:.3f}",
            "threshold": result.get("threshold"), "seed": result["seed"],
        })),
        section("Metrics under corruption and attack", paragraph(
            "Corruptions are applied to the raw decoded image, before the bundle's preprocessing; severity 1 is "
            "mild and 5 severe. " + how
        ), table(["kind", "severity", *metrics], rows)),
        section("Metric against severity", figures([Figure(
            png, "Accuracy and AUC against severity",
            "each line is one corruption or attack; the point at 0 is the clean score. A flat line is robust; "
            "a steep early drop means even a mild artefact of that kind changes the model's answers.",
        )])),
        section("Severity tables", paragraph(
            "Parameters for severities 0 to 5 (intensities as fractions of the image's range; blur sigma and "
            "motion translation as fractions of the in-plane side; rotation in degrees).", note=True),
            table(["kind", *[str(s) for s in range(6)]], [[k, *[str(v) for v in vals]] for k, *vals in tables])),
    ]
    return page(f"Robustness of {Path(result['bundle']).resolve().parent.name}", "\n".join(body))


