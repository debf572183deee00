"""``medsight plan DATA``: fingerprint a segmentation data set and write ``plan.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def plan_dataset(
    *,
    data: str | Path,
    out: Path,
    memory_budget_mb: float = 2000,
    spatial_dims: int | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict:
    """Read every case once, fingerprint the data set and derive the plan.

    Writes ``out/fingerprint.json`` and ``out/plan.json`` and returns the plan.
    """
    from medsight.atomic_write import atomic_write_text
    from medsight.data.fingerprint import fingerprint
    from medsight.data.seg_layouts import open_seg_dataset
    from medsight.progress import track
    from medsight.segmentation.plan import make_plan, write_plan

    ds = open_seg_dataset(data)

    def cases():
        for item in track(ds.items, description="fingerprinting", enabled=progress):
            sample, mask, _ = ds.read(item)
            yield sample, mask

    fp = fingerprint(cases(), modality=ds.modality)
    plan = make_plan(fp, memory_budget_mb=memory_budget_mb, spatial_dims=spatial_dims, overrides=overrides)
    plan["label_names"] = {str(k): v for k, v in ds.label_names.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "fingerprint.json", json.dumps(fp, indent=2))
    write_plan(plan, out / "plan.json")
    return plan
