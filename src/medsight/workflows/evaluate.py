"""``medsight evaluate``: score a bundle on a data set (metrics.json, per_case.csv, report.html).

Which cases, when ``--split`` is not given (the same rule for both tasks):

* data that is not the model's training data: **every case** (external data is scored whole);
* the model's own training data: its **held-out test split**; a run that kept none is a clear error
  (the other splits chose the weights, the epoch or the threshold, so their scores are optimistic).

The data counts as the training data when it is the folder the run trained on, or, for a classifier,
when it rebuilds the very training split the run recorded (the same files and labels: its hash).
``--split train|val|test|all`` picks the cases explicitly, as before.
"""

from __future__ import annotations

from pathlib import Path

from medsight.config import EvalConfig
from medsight.data.file_errors import write_skipped_files
from medsight.errors import DatasetError


def run_evaluation(*, bundle: Path, data: str, split: str | None = None, out: Path, progress: bool = True,
                   profile: str | None = None) -> dict:
    """Evaluate a bundle on ``split`` of a data set (default: see the module); writes metrics.json,
    per_case.csv and report.html into ``out``. The result's ``scored`` says which cases were scored.
    ``profile``: a segmenter's inference profile (None: the bundle's default).

    Raises:
        DatasetError: the model's own training data without a held-out test split and no ``split``.
        ConfigError: a ``profile`` for another task, or one the bundle does not have.
    """
    from medsight.bundle import load_bundle
    from medsight.inference.segmenter import check_profile

    model_bundle = load_bundle(bundle)
    if profile is not None:
        check_profile(model_bundle, profile)
    split, scored = (split, f"the {split} split (--split)") if split else default_split(model_bundle, data)
    evaluate = {"segmentation": evaluate_segmenter, "detection": evaluate_detection}.get(model_bundle.task,
                                                                                        evaluate_classifier)
    options = {"profile": profile} if model_bundle.task == "segmentation" else {}
    metrics = evaluate(model_bundle, bundle=Path(bundle), data=data, split=split, out=Path(out), progress=progress,
                       scored=scored, **options)
    metrics["scored"] = f"scored {metrics['n']} cases of {data}: {scored}"
    return metrics


def default_split(model_bundle, data: str | Path) -> tuple[str, str]:
    """``(split, why)``: the cases ``evaluate`` scores when no ``--split`` is given.

    Raises:
        DatasetError: ``data`` is the model's training data and the run kept no test split.
    """
    if not is_training_data(model_bundle, data):
        return "all", "every case (the data is not the model's training data)"
    if not _has_test_split(model_bundle, data):
        raise DatasetError(
            data,
            "is the data the model was trained on, and its run kept no held-out test split "
            "(its other cases chose the weights, the epoch or the threshold, so their scores are optimistic)",
            "evaluate on held-out data, or pass --split val or --split all knowing that",
        )
    return "test", "the held-out test split of the model's training data"


def is_training_data(model_bundle, data: str | Path) -> bool:
    """True when ``data`` is the folder the bundle was trained on, or (a classifier) rebuilds the training
    split the run recorded."""
    recorded = model_bundle.data.path
    if recorded and Path(recorded).resolve() == Path(data).resolve():
        return True
    if model_bundle.task == "segmentation" or not model_bundle.data.hash:
        return False
    return _training_split_hash(model_bundle, data) == model_bundle.data.hash


def _training_split_hash(model_bundle, data: str | Path) -> str | None:
    """The hash of the training split the bundle's data settings rebuild on ``data`` (None where they cannot);
    for a fold ensemble, of its whole cross-validation pool (every fold's training and validation cases)."""
    import numpy as np

    from medsight.classification.split import bundle_split
    from medsight.classification.train import data_hash
    from medsight.data.layouts import item_id

    config = model_bundle.data.config
    ensemble = config is not None and config.folds > 1 and config.fold is None
    try:
        ds, _, indices = bundle_split(model_bundle, data, "train")
        if ensemble:
            indices = np.concatenate([indices, bundle_split(model_bundle, data, "val")[2]])
    except DatasetError:  # other classes or no such split: not the training data
        return None
    items = [ds.items[i] for i in indices]
    return data_hash([item_id(item) for item in items], [item.label for item in items])


def _has_test_split(model_bundle, data: str | Path) -> bool:
    if model_bundle.task == "segmentation":
        return bool(model_bundle.split.of("test"))
    if model_bundle.task == "detection":
        from medsight.workflows.detection import has_test_split

        return has_test_split(model_bundle, data)
    from medsight.classification.split import bundle_split

    try:
        bundle_split(model_bundle, data, "test")
    except DatasetError:
        return False
    return True


def evaluate_classifier(model_bundle, *, bundle: Path, data: str, split: str, out: Path, progress: bool,
                        scored: str) -> dict:
    """Score a classification bundle on ``split`` of ``data``."""
    from medsight.classification.evaluate import evaluate_predictions
    from medsight.classification.prepare import load_tensors
    from medsight.classification.score import calibration_kwargs, score
    from medsight.classification.split import bundle_split
    from medsight.inference.predictor import Predictor

    ds, data_cfg, indices = bundle_split(model_bundle, data, split)
    tensors, bad = load_tensors(
        ds, indices, model_bundle.preprocess, on_bad_file=data_cfg.on_bad_file, progress=progress, desc=split
    )
    write_skipped_files(out, bad)
    eval_cfg = model_bundle.threshold_choice.evaluation or EvalConfig()
    result = score(Predictor(model_bundle).classifier, tensors, cfg=eval_cfg)
    return evaluate_predictions(
        tensors.labels.numpy(),
        result["probs"],
        label_names=model_bundle.label_names,
        case_ids=tensors.ids,
        threshold=model_bundle.threshold,
        threshold_note=model_bundle.threshold_choice.note_or("stored in the bundle"),
        cfg=eval_cfg,
        **calibration_kwargs(result, model_bundle.temperature, model_bundle.threshold_choice.calibration),
        out=out,
        title=f"{bundle.resolve().parent.name}: {split} split of {Path(data).name}",
        split=split,
        extra={"bundle": str(bundle), "data": str(data), "cases scored": scored, "skipped files": len(bad)},
    )


def evaluate_segmenter(model_bundle, *, bundle: Path, data: str, split: str, out: Path, progress: bool,
                       scored: str, profile: str | None = None) -> dict:
    """Score a segmentation bundle on the cases of ``data`` (``split`` all, or the run's train/val cases)."""
    from medsight.inference.segmenter import Segmenter
    from medsight.segmentation.evaluate import DatasetCases, evaluate_segmentation, open_split

    dataset, items = open_split(model_bundle, data, split)
    segmenter = Segmenter(bundle, profile=profile)  # the folder: its ONNX export is used where it has one
    return evaluate_segmentation(
        segmenter, DatasetCases(dataset, items), out=out, progress=progress,
        title=f"{bundle.resolve().parent.name}: {split} cases of {Path(data).name}",
        extra={"split": split, "bundle": str(bundle), "data": str(data), "cases scored": scored,
               "threshold_note": model_bundle.threshold_choice.note_or(""), "backend": segmenter.backend,
               "profile": segmenter.profile_name},
    )


def evaluate_detection(model_bundle, *, bundle: Path, data: str, split: str, out: Path, progress: bool,
                       scored: str) -> dict:
    """Score a detection bundle on ``split`` of ``data`` (:func:`medsight.detection.evaluate.evaluate_detector`)."""
    from medsight.detection.evaluate import evaluate_detector

    return evaluate_detector(model_bundle, bundle=bundle, data=data, split=split, out=out, progress=progress,
                             scored=scored)
