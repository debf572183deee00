"""``medsight evaluate``: score a bundle on one split of a data set (metrics.json, per_case.csv, report.html)."""

from __future__ import annotations

from pathlib import Path

from medsight.config import EvalConfig
from medsight.data.file_errors import write_skipped_files


def run_evaluation(*, bundle: Path, data: str, split: str | None = None, out: Path, progress: bool = True) -> dict:
    """Evaluate a bundle on one split of a data set; writes metrics.json, per_case.csv, report.html.

    ``split``: ``train``, ``val``, ``test`` or ``all``; default ``test`` for classifiers and
    ``all`` for segmenters (a segmentation run keeps no test split: evaluate on a held-out folder).
    """
    from medsight.bundle import load_bundle
    from medsight.classification.evaluate import evaluate_predictions
    from medsight.classification.prepare import load_tensors
    from medsight.classification.score import calibration_kwargs, score
    from medsight.classification.split import bundle_split
    from medsight.inference.predictor import Predictor

    model_bundle = load_bundle(bundle)
    if model_bundle.task == "segmentation":
        return evaluate_segmenter(model_bundle, bundle=bundle, data=data, split=split or "all", out=Path(out),
                                  progress=progress)
    split = split or "test"
    ds, data_cfg, indices = bundle_split(model_bundle, data, split)
    tensors, bad = load_tensors(
        ds, indices, model_bundle.preprocess, on_bad_file=data_cfg.on_bad_file, progress=progress, desc=split
    )
    write_skipped_files(out, bad)
    eval_cfg = model_bundle.threshold_choice.evaluation or EvalConfig()
    scored = score(Predictor(model_bundle).classifier, tensors, cfg=eval_cfg)
    return evaluate_predictions(
        tensors.labels.numpy(),
        scored["probs"],
        label_names=model_bundle.label_names,
        case_ids=tensors.ids,
        threshold=model_bundle.threshold,
        threshold_note=model_bundle.threshold_choice.note_or("stored in the bundle"),
        cfg=eval_cfg,
        **calibration_kwargs(scored, model_bundle.temperature, model_bundle.threshold_choice.calibration),
        out=Path(out),
        title=f"{Path(bundle).resolve().parent.name}: {split} split of {Path(data).name}",
        split=split,
        extra={"bundle": str(bundle), "data": str(data), "skipped files": len(bad)},
    )


def evaluate_segmenter(model_bundle, *, bundle: Path, data: str, split: str, out: Path, progress: bool) -> dict:
    """Score a segmentation bundle on the cases of ``data`` (``split`` all, or the run's train/val cases)."""
    from medsight.inference.segmenter import Segmenter
    from medsight.segmentation.evaluate import DatasetCases, evaluate_segmentation, open_split

    dataset, items = open_split(model_bundle, data, split)
    return evaluate_segmentation(
        Segmenter(model_bundle), DatasetCases(dataset, items), out=out, progress=progress,
        title=f"{Path(bundle).resolve().parent.name}: {split} cases of {Path(data).name}",
        extra={"split": split, "bundle": str(bundle), "data": str(data),
               "threshold_note": model_bundle.threshold_choice.note_or("")},
    )
