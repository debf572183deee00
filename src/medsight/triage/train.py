"""Training a triage policy: the model's outputs on a labelled split, replayed as episodes for the agent.

Kept apart from :mod:`medsight.triage.policy` (saving, loading and serving a policy), so that the service,
which loads policies, never imports the training pipeline this module reads data with.

Example:
    >>> summary = train_policy(bundle="runs/demo/model", data="data/chest", split="val", costs=CostTable())
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import DatasetError
from medsight.triage.agent import AgentConfig, train_agent
from medsight.triage.costs import CostTable, action_costs
from medsight.triage.features import CaseOutputs, StateConfig, StateEncoder, case_outputs, finding_labels
from medsight.triage.policy import POLICY_DIR, TriagePolicy, classification_bundle, model_hash


def split_outputs(bundle_folder: str | Path, data: str | Path, split: str, *, tta_passes: int,
                  progress: bool = True) -> tuple[CaseOutputs, np.ndarray, list[str]]:
    """The model's outputs on one split of ``data``, with ``finding`` (True = positive label) and case ids.

    Raises:
        ConfigError: not a classification bundle.
        DatasetError: the data's classes differ from the model's, no such split, or unlabelled cases.
    """
    from medsight.classification.prepare import load_tensors
    from medsight.classification.split import bundle_split
    from medsight.inference.predictor import Predictor

    model_bundle = classification_bundle(bundle_folder)
    ds, data_cfg, indices = bundle_split(model_bundle, data, split)
    tensors, _ = load_tensors(ds, indices, model_bundle.preprocess, on_bad_file=data_cfg.on_bad_file,
                              progress=progress, desc=split)
    labels = tensors.labels.numpy()
    if (labels < 0).any():
        raise DatasetError(data, f"{int((labels < 0).sum())} cases of the {split} split have no label",
                           "triage learns and is scored from labelled cases; label them or use another split")
    outputs = case_outputs(Predictor(bundle_folder), tensors.images.numpy(), tta_passes=tta_passes)
    return outputs, finding_labels(labels), list(tensors.ids)


def train_policy(
    *, bundle: str | Path, data: str | Path, split: str = "val", costs: CostTable,
    state: StateConfig | None = None, agent: AgentConfig | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Train a triage agent on episodes replayed from the labelled cases of ``split`` and save it in the bundle.

    Returns:
        The training summary saved in ``triage.json`` (cases, positives, reward per epoch, the
        agent's and baselines' mean cost on the training episodes, policy_version).

    Raises:
        ConfigError: not a classification bundle.
        DatasetError: the split has one class only, or the data does not match the model.
    """
    from medsight.triage.baselines import baseline_actions, fit_baselines

    state = state or StateConfig()
    agent_cfg = agent or AgentConfig()
    outputs, finding, _ = split_outputs(bundle, data, split, tta_passes=state.tta_passes, progress=progress)
    encoder = StateEncoder.fit(outputs, state)
    bins = encoder.bins(outputs)
    cost = action_costs(finding, costs)
    q_agent, history = train_agent(bins, cost, sizes=encoder.sizes, config=agent_cfg)
    baselines = fit_baselines(outputs.p_finding, outputs.uncertainty, finding, costs)
    rows = np.arange(len(finding))
    train_cost = {"agent": float(cost[rows, q_agent.act(bins)].mean())}
    train_cost |= {name: float(cost[rows, baseline_actions(rule, outputs.p_finding, outputs.uncertainty)].mean())
                   for name, rule in baselines.items()}
    summary = {"split": split, "data": str(data), "cases": int(len(finding)), "positives": int(finding.sum()),
               "epochs": agent_cfg.epochs, "seed": agent_cfg.seed, "agent": agent_cfg.model_dump(),
               "mean_reward_per_epoch": [round(h, 6) for h in history], "train_mean_cost": train_cost}
    meta = {"model_hash": model_hash(bundle), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "training": summary}
    policy = TriagePolicy(encoder, q_agent, costs, baselines, meta)
    policy.save(bundle)
    return {**summary, "policy_version": policy.version, "folder": str(Path(bundle) / POLICY_DIR)}
