"""Segmentation training end to end: data -> plan -> patch training -> bundle + metrics.

``train_segmenter`` opens a segmentation data set, splits its cases, normalises each
image, trains on random patches (foreground oversampled), validates every epoch by
sliding-window prediction (mean foreground Dice), checkpoints each epoch, and writes:

    out/checkpoints/last.safetensors   resumable training state (the same place as classification)
    out/metrics.csv              one row per epoch
    out/model/                   the best model as a Bundle
    out/metrics.json             per-class means with CIs and per-case metrics (val cases)

Example:
    >>> result = train_segmenter(data="data/drive", out=Path("runs/seg"), epochs=5)
    >>> result["best_val_dice"]
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsight.bundle import Bundle
from medsight.config import ModelConfig, PreprocessConfig, TrainConfig
from medsight.data.fingerprint import fingerprint
from medsight.data.seg_layouts import open_seg_dataset
from medsight.data.splits import split_indices
from medsight.engine.checkpoint import load_checkpoint, save_checkpoint
from medsight.engine.device import pick_device
from medsight.engine.evaluate import write_json
from medsight.engine.optim import build_optimizer, build_scheduler
from medsight.engine.patches import sample_patches
from medsight.engine.plan import make_plan
from medsight.engine.seg_losses import make_seg_loss
from medsight.engine.seg_metrics import segmentation_case_metrics, summarise_cases
from medsight.errors import DatasetError
from medsight.inference.postprocess import probs_to_labels
from medsight.inference.segment import sliding_window_probs
from medsight.models import create_model

CHECKPOINT = Path("checkpoints") / "last.safetensors"


def train_segmenter(
    *,
    data: str | Path,
    out: Path,
    model: str = "unet",
    model_kwargs: dict[str, Any] | None = None,
    epochs: int = 20,
    steps_per_epoch: int = 50,
    patch_size: list[int] | None = None,
    batch_size: int | None = None,
    lr: float = 1e-3,
    loss: str = "dice_ce",
    seed: int = 0,
    val_fraction: float = 0.2,
    patience: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train a segmenter on the data set at ``data`` and write its run folder ``out``.

    Args:
        data: a segmentation data set (see :func:`medsight.data.seg_layouts.open_seg_dataset`).
        out: the run folder.
        model: a registered segmentation model (``unet``, ``classic_unet``, ``dynunet``).
        model_kwargs: extra model arguments; ``unet`` gets ``base_features``/``depth`` from
            the plan unless given here.
        epochs, steps_per_epoch: training length (a step is one patch batch).
        patch_size, batch_size: default: the plan's.
        lr: AdamW learning rate (cosine schedule).
        loss: see :func:`medsight.engine.seg_losses.make_seg_loss`.
        seed: seeds the split, the patches and the weights.
        val_fraction: share of cases kept for validation (at least one case).
        patience: stop after this many epochs without a better val Dice (0: never).
        resume: continue from ``out/checkpoints/last.safetensors`` (an error when there is none).
        progress: print one line per epoch.

    Returns:
        ``{"best_epoch", "best_val_dice", "epochs_run", "bundle", "metrics"}``.

    Raises:
        DatasetError: fewer than 2 cases, or a case without a mask.
        MedsightError: unreadable files, a bad configuration or checkpoint.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dataset = open_seg_dataset(data)
    cases = [(item.case_id, *dataset.read(item)) for item in dataset.items]
    if len(cases) < 2:
        raise DatasetError(dataset.root, f"has {len(cases)} case(s)", "add cases: training and validation need 2+")
    for case_id, _, labels, _ in cases:
        if labels is None:
            raise DatasetError(case_id, "has no mask", "add its mask or remove the image")
    plan = make_plan(fingerprint(((s, lab) for _, s, lab, _ in cases), modality=dataset.modality))
    patch = [int(p) for p in (patch_size or plan["patch_size"])]
    batch = int(batch_size or plan["batch_size"])
    images = [_normalise(sample.array, plan["normalization"]) for _, sample, _, _ in cases]
    split = split_indices(np.zeros(len(cases), int), val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    train_idx, val_idx = list(split["train"]), list(split["val"])
    if not val_idx:
        val_idx = [train_idx.pop()]
    n_classes = max(max(dataset.label_names), int(max(lab.max() for _, _, lab, _ in cases))) + 1
    kwargs = _model_kwargs(model, plan, patch, model_kwargs or {})
    net = create_model(
        model, in_channels=images[0].shape[0], num_outputs=n_classes, spatial_dims=len(patch), **kwargs
    )
    device = pick_device("auto")
    net.to(device)
    cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed, early_stopping_metric="dice", patience=patience)
    optimizer = build_optimizer(net.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    loss_fn = make_seg_loss(loss, num_classes=n_classes)
    rng = np.random.default_rng(seed)
    state: dict[str, Any] = {"epoch": 0, "best_dice": -1.0, "best_epoch": 0, "history": []}
    best_state: dict[str, torch.Tensor] = {}
    if resume:  # a missing checkpoint is a clear error from load_checkpoint
        state = load_checkpoint(out / CHECKPOINT, model=net, optimizer=optimizer, scheduler=scheduler)
        best_state = state.pop("best_state")
        rng.bit_generator.state = state.pop("numpy_rng")
    train_images = [images[i] for i in train_idx]
    train_labels = [cases[i][2] for i in train_idx]
    foreground = list(range(1, n_classes))
    for epoch in range(state["epoch"] + 1, epochs + 1):
        if patience and epoch - state["best_epoch"] > patience:
            break
        net.train()
        total = 0.0
        for _ in range(steps_per_epoch):
            x, y = sample_patches(train_images, train_labels, patch_size=patch, batch_size=batch, generator=rng)
            optimizer.zero_grad()
            value = loss_fn(net(torch.from_numpy(x).to(device)), torch.from_numpy(y).to(device))
            value.backward()
            optimizer.step()
            total += float(value.detach())
        scheduler.step()
        dice = float(np.nanmean([_score(net, images[i], cases[i], patch, device, foreground)[2] for i in val_idx]))
        state["history"].append({"epoch": epoch, "train_loss": total / steps_per_epoch, "val_dice": dice,
                                 "lr": optimizer.param_groups[0]["lr"]})
        if dice > state["best_dice"]:
            state.update(best_dice=dice, best_epoch=epoch)
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        state["epoch"] = epoch
        save_checkpoint(out / CHECKPOINT, model=net, optimizer=optimizer, scheduler=scheduler,
                        state={**state, "numpy_rng": rng.bit_generator.state}, best_state=best_state)
        _write_csv(out / "metrics.csv", state["history"])
        if progress:
            print(f"epoch {epoch}/{epochs}  loss {total / steps_per_epoch:.4f}  val dice {dice:.4f}")
    net.load_state_dict(best_state)
    names = {k: dataset.label_names.get(k, f"label_{k}") for k in range(n_classes)}
    bundle = Bundle(
        task="segmentation",
        model=ModelConfig(name=model, kwargs=kwargs),
        preprocess=PreprocessConfig(size=patch, channels=images[0].shape[0], normalize="zscore"),
        label_names=[names[k] for k in range(n_classes)],
        metrics={"val_dice": state["best_dice"]},
        provenance={"data": str(data), "plan": plan, "best_epoch": state["best_epoch"], "seed": seed},
        state_dict=best_state,
    )
    bundle_path = bundle.save(out / "model")
    metrics = _evaluate(net, [cases[i] for i in val_idx], [images[i] for i in val_idx], patch, device, names, out)
    write_json(out / "metrics.json", metrics)
    return {"best_epoch": state["best_epoch"], "best_val_dice": state["best_dice"],
            "epochs_run": state["epoch"], "bundle": str(bundle_path), "metrics": metrics}


def _model_kwargs(model: str, plan: dict, patch: list[int], given: dict[str, Any]) -> dict[str, Any]:
    """Plan-derived defaults for the built-in segmenters, overridden by ``given``."""
    if model == "unet":
        return {"base_features": plan["base_features"], "depth": plan["depth"], **given}
    if model == "dynunet":
        return {"depth": plan["depth"], "patch_size": patch, **given}
    return dict(given)


def _normalise(array: np.ndarray, scheme: dict[str, Any]) -> np.ndarray:
    """The plan's normalisation: CT clip + global z-score, else per-image z-score."""
    array = np.asarray(array, dtype=np.float32)
    if scheme.get("scheme") == "ct":
        low, high = scheme["clip"]
        return ((np.clip(array, low, high) - scheme["mean"]) / max(scheme["std"], 1e-8)).astype(np.float32)
    return ((array - array.mean()) / max(float(array.std()), 1e-8)).astype(np.float32)


def _predict(net: torch.nn.Module, image: np.ndarray, patch: list[int], device: torch.device) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return probs_to_labels(sliding_window_probs(net, image, patch_size=patch, device=device))


def _score(net, image: np.ndarray, case, patch: list[int], device, foreground: list[int]):
    """Predict one case and score it inside its ROI: ``(pred, per-class metrics, mean foreground Dice)``.

    Validation during training and the final evaluation use this one function, so early
    stopping sees the same Dice the report shows.
    """
    _, sample, labels, roi = case
    pred = _predict(net, image, patch, device)
    scores = segmentation_case_metrics(pred, labels, spacing=sample.spacing, labels=foreground, roi=roi)
    return pred, scores, float(np.nanmean([scores[k]["dice"] for k in foreground]))


def _evaluate(net, cases, images, patch, device, names: dict[int, str], out: Path) -> dict:
    """Per-case metrics of the val cases (inside the ROI when given), their summary, and report.html."""
    from medsight.report.segmentation import SegCase, write_segmentation_report

    per_case, rows, shown = [], [], []
    foreground = [k for k in names if k > 0]
    for case, image in zip(cases, images, strict=True):
        pred, scores, dice = _score(net, image, case, patch, device, foreground)
        per_case.append(scores)
        rows.append({"case_id": case[0], "metrics": {names[k]: v for k, v in scores.items()}})
        shown.append(SegCase(case[0], image, case[2], pred, dice))
    summary = summarise_cases(per_case, label_names=names)
    write_segmentation_report(out, title=f"{out.name}: segmentation, validation cases", summary=summary, cases=shown)
    return {"summary": summary, "per_case": rows}


def _write_csv(path: Path, history: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
