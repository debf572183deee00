"""``medsight plan DATA``: fingerprint a segmentation data set and write ``plan.json``.

The cases are read and planned exactly as training reads and plans them
(:func:`medsight.segmentation.cases.stepped_cases`, :func:`~medsight.segmentation.cases.plan_cases`):
after the intensity steps of the run's ``preprocess`` settings, with its ``segment.memory_budget_mb``
and ``segment.plan`` overrides, so the plan written here is the plan a training run on the same data
and config uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medsight.config import RunConfig
from medsight.segmentation.plan import Plan


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
