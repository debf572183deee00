"""Detection training end to end: data -> in-memory inputs -> RetinaNet epochs -> bundle -> evaluation.

``train_detector`` opens a detection data set (:func:`~medsight.data.det_layouts.open_detection_set`), splits it
(:func:`~medsight.data.splits.resolve_splits`: the data set's own train and val splits kept), fits every image to
the input once (:mod:`medsight.detection.batches`), and trains MONAI's RetinaNet
(:func:`~medsight.models.detectors.build_detector`: ResNet-FPN, the plan's anchors, ATSS matcher, hard negatives)
in the one training loop (:func:`medsight.training.loop.fit`: schedule, time limit, checkpoints, exact resume,
early stopping, ``metrics.csv``, TensorBoard, progress, DDP). Every epoch validates on the validation images at the
input size (:func:`~medsight.detection.metrics.detection_metrics` without bootstrap: ``ap50``, ``map``, ``ap10``,
``froc_mean``, ``image_auc``; forward passes only, a fraction of an epoch's cost); the best epoch follows
``train.early_stopping_metric`` (``ap50`` unless set). Then it writes::

    out/model/                      the best weights as a detection bundle; its score threshold is the validation
                                    FROC point at detect.operating_fp_per_image false positives per image
    out/metrics.json, per_image.csv, report.html
                                    the validation images scored by the bundle itself (with bootstrap CIs)

Example:
    >>> cfg = load_config(overrides={"task": "detection", "data.path": "data/fractures"})
    >>> result = train_detector(cfg, out=Path("runs/fractures"))
    >>> result["metrics"]["ap50"], result["threshold"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medsight.config import RunConfig
from medsight.detection.batches import BoxBatches, BoxSet, load_box_set, predict_set
from medsight.detection.heads import DetectorLoss, FlatHeads, anchors_for
from medsight.errors import ConfigError, DatasetError
from medsight.runtime import distributed
from medsight.training.loop import FitResult, Task, check_metric, fit, now
from medsight.training.optim import build_optimizer

#: the validation columns of ``metrics.csv`` (any may be ``train.early_stopping_metric``, as may ``train_loss``)
METRICS = ("ap50", "map", "ap10", "froc_mean", "image_auc", "train_loss")
#: the best epoch's metric when ``train.early_stopping_metric`` is left unset
DEFAULT_METRIC = "ap50"
DETECTOR_KWARGS = ("backbone", "fpn_channels", "finest_stride")


def detection_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the detection defaults where the user set nothing: the ``retinanet`` model and ``ap50`` as the
    best epoch's metric (the config's own defaults are classification's)."""
    updates: dict[str, Any] = {}
    if "early_stopping_metric" not in cfg.train.model_fields_set:
        train = cfg.train.model_copy(update={"early_stopping_metric": DEFAULT_METRIC})
        train.model_fields_set.add("early_stopping_metric")
        updates["train"] = train
    if "name" not in cfg.model.model_fields_set:
        updates["model"] = cfg.model.model_copy(update={"name": "retinanet"})
    return cfg.model_copy(update=updates, deep=True) if updates else cfg


def train_detector(cfg: RunConfig, *, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Train a detector as ``cfg`` says and write its run folder ``out`` (see the module).

    Returns:
        ``{"best_epoch", "best_metric", "metric", "epochs_run", "stop_reason", "threshold", "bundle", "metrics"}``.

    Raises:
        DatasetError: no boxes in the training images, or no validation images.
        ConfigError: a model other than ``retinanet``, a bad early-stopping metric, anchors of the wrong shape, a
            batch that does not split evenly over the DDP processes.
        MedsightError: unreadable files or checkpoint.
    """
    from medsight.data.det_layouts import open_detection_set
    from medsight.runtime.device import pick_device, set_threads

    started = now()
    cfg = detection_config(cfg)
    check_metric(cfg.train.early_stopping_metric, METRICS)
    if cfg.model.name != "retinanet":
        raise ConfigError(f"model.name={cfg.model.name}", "is not a detection model", "use retinanet (the default)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()
    distributed.check_config(cfg.train, distributed.world_size())  # also when started by torchrun directly
    set_threads(distributed.threads_per_process(cfg.train.num_threads))
    torch.manual_seed(cfg.train.seed)
    dataset = open_detection_set(cfg.data.path, class_names=cfg.data.class_names,
                                 strict=cfg.data.on_bad_file == "error")
    train_set, val_set, bad = _split_sets(dataset, cfg, progress and main)
    if bad and main:
        from medsight.data.file_errors import write_skipped_files

        write_skipped_files(out, bad)
    detector = _detector(cfg, dataset)
    device = pick_device(cfg.train.device)
    net = FlatHeads(detector).to(device)
    anchors = anchors_for(detector, [cfg.preprocess.channels, *cfg.preprocess.size])
    fitted = _fit(cfg, detector, net, anchors, (train_set, val_set), device, out=out, resume=resume,
                  progress=progress and main, started=started)
    net.load_state_dict(fitted.best_state)
    result = {"best_epoch": fitted.best_epoch, "best_metric": fitted.best_metric, "metric": fitted.metric_name,
              "epochs_run": fitted.epochs_run, "stop_reason": fitted.stop_reason}
    if not main:
        return {**result, "threshold": None, "bundle": "", "metrics": {}}
    from medsight.detection.fingerprint import run_fingerprint
    from medsight.detection.ship import ship_detector

    shipped = ship_detector(cfg, dataset, detector, net, fitted, (train_set, val_set), device, out,
                            fingerprint=run_fingerprint(dataset, out, progress=progress), progress=progress)
    return {**result, **shipped}


def _split_sets(dataset, cfg: RunConfig, progress: bool) -> tuple[BoxSet, BoxSet, list[dict[str, str]]]:
    """The training and validation images at the input size (the data set's own splits kept)."""
    from medsight.data.splits import resolve_splits

    if not any(len(case.boxes) for case in dataset.cases if case.split != "test"):
        raise DatasetError(dataset.root, f"has no boxes in any of its {len(dataset.cases)} images, so there is "
                           "nothing to learn to detect", "check the annotations with medsight data inspect")
    splits = resolve_splits(dataset, cfg.data)
    if not len(splits["val"]):
        raise DatasetError(dataset.root, "leaves no validation images (the best epoch and the score threshold are "
                           "chosen on them)", "add a val split, or set data.val_fraction above 0")
    on_bad = cfg.data.on_bad_file
    train_set, bad = load_box_set(dataset, [dataset.cases[i] for i in splits["train"]], cfg.preprocess,
                                  progress=progress, desc="reading train", on_bad_file=on_bad)
    val_set, bad_val = load_box_set(dataset, [dataset.cases[i] for i in splits["val"]], cfg.preprocess,
                                    progress=progress, desc="reading val", on_bad_file=on_bad)
    if not len(train_set) or not len(val_set):
        raise DatasetError(dataset.root, "has no readable training or validation image", "check the image files")
    return train_set, val_set, bad + bad_val


def _detector(cfg: RunConfig, dataset):
    """The RetinaNetDetector of ``cfg``: the plan's (``detect.anchor_sizes``) anchors, ``model.kwargs``' network."""
    from medsight.models.detectors import build_detector

    unknown = sorted(set(cfg.model.kwargs) - set(DETECTOR_KWARGS))
    if unknown:
        raise ConfigError(f"model.kwargs {unknown}", "are not detector options", f"use {', '.join(DETECTOR_KWARGS)}")
    if len(cfg.preprocess.size) != dataset.spatial_dims:
        raise ConfigError(f"preprocess.size={cfg.preprocess.size}", f"is {len(cfg.preprocess.size)}D, the data "
                          f"{dataset.spatial_dims}D", f"give {dataset.spatial_dims} sizes (or let the plan choose)")
    return build_detector(dataset.spatial_dims, cfg.preprocess.channels, dataset.class_names, cfg.detect,
                          cfg.detect.anchor_sizes, **cfg.model.kwargs)


def _fit(cfg: RunConfig, detector, net: torch.nn.Module, anchors, sets: tuple[BoxSet, BoxSet],
         device: torch.device, *, out: Path, resume: bool, progress: bool, started: float) -> FitResult:
    """The epochs (:func:`medsight.training.loop.fit`), validating every epoch on the validation images."""
    train_set, val_set = sets
    task = Task(
        net=net,
        optimizer=build_optimizer(net.parameters(), cfg.train),
        loss=DetectorLoss(detector, anchors),
        batches=BoxBatches(train_set, cfg.train, cfg.augment),
        validate=lambda network: validation_row(detector, network, val_set, anchors, device),
        metrics=METRICS,
        leading_columns=("epoch", "train_loss", "ap50", "map", "lr"),
    )
    return fit(task, cfg=cfg.train, device=device, run_dir=out, resume=resume, progress=progress, started=started,
               unit="images", speed_column="images_per_s")


def validation_row(detector, network: torch.nn.Module, val_set: BoxSet, anchors, device: torch.device) -> dict:
    """The epoch's validation columns: :func:`detection_metrics` on the validation images at the input size (IoU
    does not change when an image and its boxes are scaled alike), without bootstrap."""
    from medsight.detection.metrics import detection_metrics

    predicted = predict_set(detector, network, val_set, anchors, device)
    scores = detection_metrics(val_set.boxes, predicted, list(detector.spec.class_names), bootstrap=0)
    return {key: float(scores[key]) for key in METRICS if key != "train_loss"}
