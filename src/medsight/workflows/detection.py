"""Detection runs: the plan, one model (or one per fold), and the lines the commands print.

``medsight plan DATA --task detection``, ``medsight train --task detection`` (planned when given neither a recipe
nor a config file) and ``medsight evaluate`` on a detection bundle reach these through
:mod:`medsight.workflows.plan`, :func:`medsight.workflows.train.run_training` and
:func:`medsight.workflows.evaluate.run_evaluation`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsight.config import RunConfig, save_config
from medsight.errors import ConfigError

#: minutes of training a detection plan fits into by default
DEFAULT_DETECTION_BUDGET_MIN = 60.0


def plan_detection(cfg: RunConfig, out: Path, *, time_budget_min: float = DEFAULT_DETECTION_BUDGET_MIN,
                   progress: bool = True, seconds_per_image=None):
    """Fingerprint ``cfg.data.path``, plan its training within ``time_budget_min`` and write
    ``out/fingerprint.json`` and ``out/plan.json``.

    Returns:
        ``(the config with the plan applied under the user's keys, the plan)``.

    Raises:
        ConfigError: no data path, or a budget that is not positive.
        DatasetError: no boxes at all, or no readable image.
    """
    from medsight.data.det_layouts import open_detection_set
    from medsight.detection.fingerprint import fingerprint_detection, write_fingerprint
    from medsight.detection.plan import make_detection_plan, write_detection_plan
    from medsight.detection.step_timing import detector_step_timer
    from medsight.runtime.device import pick_device, set_threads

    if not cfg.data.path:
        raise ConfigError("data.path", "no data set given", "pass --data PATH or set data.path in the config")
    dataset = open_detection_set(cfg.data.path, class_names=cfg.data.class_names,
                                 strict=cfg.data.on_bad_file == "error")
    set_threads(cfg.train.num_threads)
    fingerprint = fingerprint_detection(dataset, progress=progress)
    official_val = any(case.split == "val" for case in dataset.cases)
    n_train, n_val = _split_sizes(dataset, cfg, official_val)
    plan = make_detection_plan(
        fingerprint, time_budget_min=time_budget_min, n_train=n_train, n_val=n_val, official_val=official_val,
        seconds_per_image=seconds_per_image or detector_step_timer(cfg.train.device,
                                                                   class_names=list(dataset.class_names)),
        modality=cfg.data.modality, device=pick_device(cfg.train.device).type)
    out = Path(out)
    write_fingerprint(fingerprint, out)
    write_detection_plan(plan, out / "plan.json")
    return apply_detection_plan(cfg, plan), plan


def plan_for_detection_training(cfg: RunConfig, out: Path, *, time_budget_min: float, reuse: bool = False,
                                progress: bool = True) -> tuple[RunConfig, str]:
    """The config ``medsight train --task detection`` runs without a recipe or config file, and the line it prints;
    with ``reuse`` (``--resume``, a DDP rank) the run's own ``out/plan.json`` is read back, not measured again.

    Raises:
        ConfigError: ``reuse`` and no ``out/plan.json``, or one that is not a detection plan.
    """
    from medsight.detection.plan import read_detection_plan

    path = Path(out) / "plan.json"
    if reuse:
        if not path.is_file():
            raise ConfigError(path, "is missing: a resumed run without a recipe or config reads the plan its first "
                              "start wrote", "resume with the options the run started with, or plan it first: "
                              "medsight plan DATA --task detection --out RUN")
        plan = read_detection_plan(path)
        return apply_detection_plan(cfg, plan), f"planned run: {path} read back ({plan.epochs} epochs)"
    planned, plan = plan_detection(cfg, out, time_budget_min=time_budget_min, progress=progress)
    return planned, (f"no recipe or config: the detection run is planned from the data within {time_budget_min:g} "
                     f"min (input {plan.size}, {plan.epochs} epochs); every decision and why: {path}")


def apply_detection_plan(cfg: RunConfig, plan) -> RunConfig:
    """``cfg`` with the plan's keys where the user set nothing (a flag, ``--set`` or a config file); the budget's
    time limit is dropped when the user chose ``train.epochs``."""
    from medsight.config import load_config
    from medsight.workflows.plan import _user_keys

    user = _user_keys(cfg)
    planned = plan.overrides()
    if "train.epochs" in user:
        planned.pop("train.time_limit_min")
    return load_config(overrides={**planned, **user})


def _split_sizes(dataset, cfg: RunConfig, official_val: bool) -> tuple[int, int]:
    from medsight.data.splits import resolve_splits

    data = cfg.data.model_copy(update={"folds": 1, "fold": None})
    if official_val and "test_fraction" not in cfg.data.model_fields_set:
        data.test_fraction = 0.0
    splits = resolve_splits(dataset, data)
    return max(1, len(splits["train"])), max(1, len(splits["val"]))


def train_detection(cfg: RunConfig, *, out: Path, resume: bool, progress: bool) -> str:
    """One detector (or, with ``data.folds`` > 1 and no ``data.fold``, one per fold in ``out/fold{k}``); returns
    the lines the command prints."""
    from medsight.detection.train import detection_config, train_detector
    from medsight.runtime.distributed import is_main

    cfg = detection_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if is_main():
        save_config(cfg, out / "config.yaml")
    if cfg.data.folds > 1 and cfg.data.fold is None:
        from medsight.training.folds import cross_validate

        results, folders = cross_validate(cfg, out, resume=resume, train_fold=lambda run: train_detector(
            run.config, out=run.folder, resume=run.resume, progress=progress))
        if not is_main():
            return ""
        lines = [f"fold {k}: {det_summary('val', r['metrics'])}  ({folder / 'model'})"
                 for k, (r, folder) in enumerate(zip(results, folders, strict=True))]
        mean = float(np.nanmean([r["metrics"]["ap50"] for r in results]))
        return "\n".join([*lines, f"cross-validation of {cfg.data.folds} folds: mean ap50={mean:.4f} (each fold "
                          "keeps its own bundle; there is no fold ensemble for detection yet)"])
    result = train_detector(cfg, out=out, resume=resume, progress=progress)
    if not is_main():
        return ""
    stopped = f"\nstopped early: {result['stop_reason']}" if result["stop_reason"] else ""
    return det_summary("val", result["metrics"]) + stopped + (
        f"\nbest epoch {result['best_epoch']} of {result['epochs_run']} (on {result['metric']})"
        f"\nscore threshold: {result['metrics']['extra']['threshold_note']}"
        f"\nbundle:  {out / 'model'}\nreport:  {out / 'report.html'}\nmetrics: {out / 'metrics.json'}")


def det_summary(split: str, metrics: dict) -> str:
    """``val: n=82 ap50=… [95% CI …] map=… ap10=… froc_mean=… image_auc=…``."""
    level = round(100 * metrics.get("ci_level", 0.95))
    parts = []
    for key in ("ap50", "map", "ap10", "froc_mean", "image_auc"):
        low, high = (metrics.get("ci") or {}).get(key, [None, None])
        ci = f" [{level}% CI {low:.4f}-{high:.4f}]" if low is not None and np.isfinite(low) else ""
        parts.append(f"{key}={metrics[key]:.4f}{ci}" if metrics[key] is not None else f"{key}=n/a")
    return f"{split}: n={metrics['n']} " + " ".join(parts)


def has_test_split(model_bundle, data: str | Path) -> bool:
    """True when the bundle's data settings give ``data`` a test split (an official one, or one carved out)."""
    from medsight.data.det_layouts import open_detection_set
    from medsight.data.splits import resolve_splits

    dataset = open_detection_set(data, class_names=list(model_bundle.label_names))
    return bool(len(resolve_splits(dataset, model_bundle.data.split_config(data))["test"]))
