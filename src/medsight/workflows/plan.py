"""``medsight plan DATA``: fingerprint a data set and write ``fingerprint.json`` and ``plan.json``.

Classification (:func:`plan_classification`): the images' fingerprint
(:func:`medsight.classification.fingerprint.fingerprint_images`) and the plan that fits the time budget
(:func:`medsight.classification.plan.make_classification_plan`), applied to the run config under the
user's own keys: a key the user set (a flag, ``--set``, a config file) wins over the plan. ``medsight train``
plans this way when given neither a recipe nor a config file.

Segmentation (:func:`plan_dataset`): the cases are read and planned exactly as training reads and plans them
(:func:`medsight.segmentation.cases.stepped_cases`, :func:`~medsight.segmentation.cases.plan_cases`):
after the intensity steps of the run's ``preprocess`` settings, with its ``segment.memory_budget_mb``
and ``segment.plan`` overrides, so the plan written here is the plan a training run on the same data
and config uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medsight.classification.plan import ClassificationPlan, StepTimer
from medsight.config import RunConfig
from medsight.errors import ConfigError, MedsightError
from medsight.segmentation.plan import Plan

#: minutes of training a plan fits into by default (about 5,000 small images on 2 CPU cores)
DEFAULT_BUDGET_MIN = 10.0


def plan_dataset(
    *,
    data: str | Path,
    out: Path,
    memory_budget_mb: float | None = None,
    spatial_dims: int | None = None,
    overrides: dict[str, Any] | None = None,
    config: RunConfig | None = None,
    progress: bool = True,
) -> Plan:
    """Read every case once, fingerprint the data set and derive the plan.

    Args:
        data: the segmentation data set (any layout of :mod:`medsight.data.seg_layouts`).
        out: folder for ``fingerprint.json`` and ``plan.json``.
        memory_budget_mb, overrides: replace ``config``'s ``segment.memory_budget_mb`` and
            ``segment.plan`` when given.
        spatial_dims: 2 for a slice-wise plan of 3D data.
        config: the training config the plan is for (its preprocessing, class names, data cache);
            default: the defaults of a segmentation run.

    Returns:
        The plan written to ``out/plan.json``.
    """
    from medsight.atomic_write import atomic_write_text
    from medsight.segmentation.cases import open_training_set, plan_cases, stepped_cases
    from medsight.segmentation.plan import write_plan

    cfg = (config or RunConfig(task="segmentation")).model_copy(deep=True)
    cfg.data.path = str(data)
    if memory_budget_mb is not None:
        cfg.segment.memory_budget_mb = memory_budget_mb
    if overrides is not None:
        cfg.segment.plan = dict(overrides)
    dataset = open_training_set(cfg)
    cases = ((stepped, labels) for _, _, labels, _, stepped in
             stepped_cases(dataset, cfg, progress, description="fingerprinting"))
    fp, plan = plan_cases(dataset, cases, cfg, spatial_dims=spatial_dims)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "fingerprint.json", json.dumps(fp, indent=2))
    write_plan(plan, out / "plan.json")
    return plan


def plan_task(data: str | Path) -> str:
    """``classification`` when ``data`` opens as a labelled classification set and is no segmentation layout
    (``dataset.json``, DRIVE, ``images/`` + masks), else ``segmentation`` (whose reader then says what is wrong)."""
    from medsight.data.layouts import open_dataset
    from medsight.data.seg_layouts import is_drive

    path = Path(data)
    if path.is_file():
        return "classification" if path.suffix.lower() in (".csv", ".npz") else "segmentation"
    if not path.is_dir() or (path / "dataset.json").is_file() or is_drive(path) or (path / "images").is_dir():
        return "segmentation"
    try:
        return "classification" if open_dataset(path).class_names else "segmentation"
    except MedsightError:
        return "segmentation"


def plan_classification(
    cfg: RunConfig, out: Path, *, time_budget_min: float = DEFAULT_BUDGET_MIN, progress: bool = True,
    seconds_per_image: StepTimer | None = None,
) -> tuple[RunConfig, ClassificationPlan]:
    """Fingerprint ``cfg.data.path``, plan its training within ``time_budget_min`` and write
    ``out/fingerprint.json`` and ``out/plan.json``.

    The data is checked first, as training checks it (one class, a class short of the folds asked for,
    mixed modalities), so a data set training would refuse is refused before anything is written.

    Args:
        cfg: the run config; the keys the user set in it win over the plan.
        out: the folder for the two files (the run folder, for ``medsight train``).
        time_budget_min: minutes for training every fold.
        seconds_per_image: the step timer; default: timed steps on ``cfg.train.device``.

    Returns:
        ``(the config with the plan applied under the user's keys, the plan)``.

    Raises:
        ConfigError: no data path, or a budget that is not positive.
        DatasetError: the data set cannot be trained on (see :func:`~medsight.classification.split.check_classes`).
    """
    from medsight.atomic_write import atomic_write_text
    from medsight.classification.fingerprint import fingerprint_images
    from medsight.classification.plan import make_classification_plan, write_classification_plan
    from medsight.classification.split import check_classes
    from medsight.classification.step_timing import step_timer
    from medsight.data.layouts import open_dataset
    from medsight.data.modalities import check_one_modality
    from medsight.runtime.device import pick_device, set_threads

    if not cfg.data.path:
        raise ConfigError("data.path", "no data set given", "pass --data PATH or set data.path in the config")
    ds = open_dataset(cfg.data.path, series_uid=cfg.data.series_uid, class_names=cfg.data.class_names,
                      strict=cfg.data.on_bad_file == "error")
    check_classes(ds, folds=cfg.data.folds)
    check_one_modality(ds)
    set_threads(cfg.train.num_threads)
    fingerprint = fingerprint_images(ds, modality=cfg.data.modality, progress=progress)
    n_pool, smallest = _cv_pool(ds, cfg)
    plan = make_classification_plan(
        fingerprint, time_budget_min=time_budget_min, n_pool=n_pool, min_class_members=smallest,
        seconds_per_image=seconds_per_image or step_timer(cfg.train.device),
        device=pick_device(cfg.train.device).type,
    )
    out = Path(out)
    atomic_write_text(out / "fingerprint.json", json.dumps(fingerprint, indent=2) + "\n")
    write_classification_plan(plan, out / "plan.json")
    return apply_plan(cfg, plan), plan


def plan_for_training(
    cfg: RunConfig, out: Path, *, time_budget_min: float = DEFAULT_BUDGET_MIN, reuse: bool = False,
    progress: bool = True,
) -> tuple[RunConfig, str]:
    """The config ``medsight train`` runs without a recipe or config file, and the line it prints.

    With ``reuse`` (``--resume``, or a DDP rank whose launcher planned) the run's own ``out/plan.json``
    is read back instead of measuring again, so the resumed run trains the same epochs.

    Raises:
        ConfigError: ``reuse`` and no ``out/plan.json``, or one that is not a classification plan.
    """
    from medsight.classification.plan import read_classification_plan

    path = Path(out) / "plan.json"
    if reuse:
        if not path.is_file():
            raise ConfigError(path, "is missing: a resumed or DDP-launched run without a recipe or config "
                              "reads the plan its first start wrote",
                              "resume with the options the run started with (--recipe none if it was not "
                              "planned), or plan it first: medsight plan DATA --task classification --out RUN")
        plan = read_classification_plan(path)
        return apply_plan(cfg, plan), f"planned run: {path} read back ({plan.epochs} epochs, not measured again)"
    planned, plan = plan_classification(cfg, out, time_budget_min=time_budget_min, progress=progress)
    return planned, (f"no recipe or config: the run is planned from the data within {time_budget_min:g} min "
                     f"({plan.folds} fold(s) x {plan.members_per_fold} member(s) x {plan.epochs} epochs); every "
                     f"decision and why: {path} "
                     "(--recipe none for the plain defaults)")


def apply_plan(cfg: RunConfig, plan: ClassificationPlan) -> RunConfig:
    """``cfg`` with the plan's keys (:meth:`ClassificationPlan.overrides`) where the user set nothing.

    A key counts as the user's when it was given (a flag, ``--set`` or a config file; pydantic's
    ``model_fields_set``). Three plan keys follow keys they depend on: the network's ``model.kwargs`` are
    dropped when the user chose another ``model.name``, the budget's ``train.time_limit_min`` when the
    user chose ``train.epochs``, and its ``train.members_per_fold`` (whole passes of the plan's folds and
    epochs) when the user chose ``train.epochs`` or another ``data.folds``: the run then trains one member per
    fold unless the user sets ``train.members_per_fold`` too.
    """
    from medsight.config import load_config

    user = _user_keys(cfg)
    planned = plan.overrides()
    if "model.name" in user and user["model.name"] != plan.model_name:
        planned.pop("model.kwargs")
    if "train.epochs" in user:
        planned.pop("train.time_limit_min")
    if "train.epochs" in user or user.get("data.folds", plan.folds) != plan.folds:
        planned.pop("train.members_per_fold")
    return load_config(overrides={**planned, **user})


def _user_keys(section: BaseModel, prefix: str = "") -> dict[str, object]:
    """The dotted keys set explicitly in ``section`` and its subsections, with their values."""
    keys: dict[str, object] = {}
    for name in section.model_fields_set:
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            keys.update(_user_keys(value, f"{prefix}{name}."))
        else:
            keys[f"{prefix}{name}"] = value
    return keys


def _cv_pool(ds, cfg: RunConfig) -> tuple[int, int]:
    """The images training and validation share (all but an official test split, or the one the user asked
    for with ``data.test_fraction``) and the smallest class's patients among them (images where there are no
    patient ids)."""
    import numpy as np

    from medsight.data.splits import resolve_splits

    data = cfg.data.model_copy(update={"folds": 1, "fold": None})
    if "test_fraction" not in cfg.data.model_fields_set:  # a cross-validation keeps no test split of its own
        data.test_fraction = 0.0
    splits = resolve_splits(ds, data)
    pool = np.concatenate([splits["train"], splits["val"]]).astype(int)
    members: dict[int, set[str]] = {k: set() for k in range(len(ds.class_names))}
    for i in pool:
        item = ds.items[i]
        if item.label is not None:
            members[item.label].add(item.patient_id or f"{item.source}#{item.index}#{item.series_uid}")
    return len(pool), min(len(m) for m in members.values())
