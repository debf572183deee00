"""How well a triage policy automates, on a held-out split, beside the two baselines in the same run.

For the agent and both baselines (:mod:`medsight.triage.baselines`): the automation rate (cases
reported without a radiologist), the error rate among the automated cases, missed findings,
false alarms, referrals and the mean cost per case under the policy's cost table.
Writes ``triage_metrics.json``, ``triage_table.md`` and ``triage_curve.png`` (automation rate
against error rate: the uncertainty rule swept over its referral fraction, the agent and the
fixed threshold as points).

Example:
    >>> result = evaluate_policy(bundle="runs/demo/model", data="data/chest", split="test", out=Path("triage_eval"))
    >>> [row["policy"] for row in result["rows"]]
    ['agent', 'fixed_threshold', 'uncertainty_threshold']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medsight.atomic_write import atomic_write_text
from medsight.triage.baselines import NAMES, REFER_FRACTIONS, baseline_actions, refer_cutoff
from medsight.triage.costs import NEGATIVE, POSITIVE, REFER, CostTable, action_costs

COLUMNS = ("policy", "n", "automation_rate", "error_rate", "missed_findings", "false_alarms", "referrals",
           "mean_cost")


def triage_row(name: str, actions: np.ndarray, finding: np.ndarray, costs: CostTable) -> dict[str, Any]:
    """One table row for ``actions`` on cases whose truth is ``finding``."""
    finding = np.asarray(finding, dtype=bool)
    automated = actions != REFER
    missed = int(((actions == NEGATIVE) & finding).sum())
    false_alarms = int(((actions == POSITIVE) & ~finding).sum())
    cost = action_costs(finding, costs)[np.arange(len(actions)), actions]
    return {"policy": name, "n": len(actions), "automation_rate": float(automated.mean()),
            "error_rate": float((missed + false_alarms) / automated.sum()) if automated.any() else 0.0,
            "missed_findings": missed, "false_alarms": false_alarms, "referrals": int((~automated).sum()),
            "mean_cost": float(cost.mean())}


def evaluate_policy(*, bundle: str | Path, data: str | Path, split: str = "test", out: Path,
                    progress: bool = True) -> dict[str, Any]:
    """Evaluate the bundle's triage policy and both baselines on ``split`` of ``data``; write the outputs to ``out``.

    Raises:
        BundleError: no policy, or one trained for another model version.
        ConfigError: not a classification bundle.
    """
    from medsight.triage.policy import classification_bundle, load_policy
    from medsight.triage.train import split_outputs

    classification_bundle(bundle)
    policy = load_policy(bundle)
    outputs, finding, _ = split_outputs(bundle, data, split, tta_passes=policy.encoder.config.tta_passes,
                                        progress=progress)
    p, unc = outputs.p_finding, outputs.uncertainty
    rows = [triage_row("agent", policy.actions(outputs), finding, policy.costs)]
    rows += [triage_row(name, baseline_actions(policy.baselines[name], p, unc), finding, policy.costs)
             for name in NAMES]
    trained_on = policy.meta.get("training", {}).get("split")
    threshold = policy.baselines["fixed_threshold"]["threshold"]
    curve = [triage_row(f"refer {f:.0%}", baseline_actions(
        {"threshold": threshold, "refer_fraction": f, "max_uncertainty": refer_cutoff(unc, f)}, p, unc),
        finding, policy.costs) for f in REFER_FRACTIONS]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"split": split, "data": str(data), "bundle": str(bundle), "held_out": split != trained_on,
              "trained_on": trained_on, "policy_version": policy.version, "costs": policy.costs.model_dump(),
              "positives": int(finding.sum()), "rows": rows,
              "uncertainty_sweep": [{k: r[k] for k in ("policy", "automation_rate", "error_rate", "mean_cost")}
                                    for r in curve]}
    atomic_write_text(out / "triage_metrics.json", json.dumps(result, indent=2))
    atomic_write_text(out / "triage_table.md", format_table(rows) + "\n")
    _curve_png(rows, curve, out / "triage_curve.png")
    return {**result, "files": [str(out / n) for n in ("triage_metrics.json", "triage_table.md", "triage_curve.png")]}


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows (rates as percentages)."""
    def cell(key: str, value: Any) -> str:
        if key in ("automation_rate", "error_rate"):
            return f"{100 * value:.1f}%"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(k, row[k]) for k in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def _curve_png(rows: list[dict[str, Any]], curve: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsight.report.plots import save_figure

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot([r["automation_rate"] for r in curve], [r["error_rate"] for r in curve], "-o", ms=3,
            label="uncertainty threshold (sweep)")
    for row, marker in zip(rows, ("*", "s", "D"), strict=True):
        ax.plot(row["automation_rate"], row["error_rate"], marker, ms=10 if marker == "*" else 7, label=row["policy"])
    ax.set_xlabel("automation rate (cases reported without a radiologist)")
    ax.set_ylabel("error rate among automated cases")
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=100)


__all__ = ["COLUMNS", "evaluate_policy", "format_table", "triage_row"]
