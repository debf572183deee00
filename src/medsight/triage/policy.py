"""A triage policy in a bundle: training it, saving it beside the model, loading it to act.

The policy lives in the bundle folder::

    model/triage/
      policy.safetensors   the state encoder (PCA, bin edges) and the agent's Q-tables, visit and case counts
      triage.json          format, policy_version (SHA-256 of policy.safetensors), the model hash it was
                           trained for (SHA-256 of bundle.json + weights.safetensors, as the service reports),
                           cost table, state and agent settings, the baselines' parameters, the training summary

A policy only fits the model whose outputs it was trained on: loading it for a bundle with
other weights or another bundle.json is an error. Retraining a model writes a fresh bundle
folder, which drops the old policy.

Example:
    >>> summary = train_policy(bundle="runs/demo/model", data="data/chest", split="val", costs=CostTable())
    >>> policy = load_policy("runs/demo/model")
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medsight.bundle import bundle_hash, load_bundle
from medsight.errors import BundleError, ConfigError, DatasetError
from medsight.hashing import file_sha256
from medsight.triage.agent import AgentConfig, QAgent, train_agent
from medsight.triage.costs import ACTIONS, CostTable, action_costs
from medsight.triage.features import CaseOutputs, StateConfig, StateEncoder, case_outputs, finding_labels

FORMAT_VERSION = 1
POLICY_DIR = "triage"
POLICY_TENSORS = "policy.safetensors"
POLICY_JSON = "triage.json"


@dataclass
class TriagePolicy:
    """The fitted state encoder, the Q-learning agent, the costs and the baselines fitted beside it."""

    encoder: StateEncoder
    agent: QAgent
    costs: CostTable
    baselines: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str | None:
        return self.meta.get("policy_version")

    def actions(self, outputs: CaseOutputs) -> np.ndarray:
        """The agent's action per case (indices into ``ACTIONS``)."""
        return self.agent.act(self.encoder.bins(outputs))

    def decide(self, outputs: CaseOutputs) -> list[dict[str, Any]]:
        """Per case: ``{"action", "expected_costs", "policy_version"}``.

        ``expected_costs`` are the agent's learnt mean costs of each action in the case's state
        (minus its Q-values); None for an action it never tried there.
        """
        bins = self.encoder.bins(outputs)
        q = self.agent.q_values(bins)
        return [{"action": ACTIONS[a],
                 "expected_costs": {name: (None if not np.isfinite(v) else round(float(-v), 6))
                                    for name, v in zip(ACTIONS, row, strict=True)},
                 "policy_version": self.version}
                for a, row in zip(self.agent.act(bins), q, strict=True)]

    def save(self, bundle_folder: str | Path) -> Path:
        """Write ``bundle_folder/triage/`` (replacing an older policy) and return it."""
        from safetensors.numpy import save_file

        target = Path(bundle_folder) / POLICY_DIR
        staging = Path(tempfile.mkdtemp(prefix=".triage-", dir=bundle_folder))
        tensors = {f"encoder.{k}": np.ascontiguousarray(v, dtype=np.float64) for k, v in
                   self.encoder.to_tensors().items()}
        tensors |= {f"agent.{k}": np.ascontiguousarray(v) for k, v in self.agent.to_tensors().items()}
        save_file(tensors, str(staging / POLICY_TENSORS))
        self.meta["policy_version"] = _sha256(staging / POLICY_TENSORS)
        record = {"format_version": FORMAT_VERSION, **self.meta, "actions": list(ACTIONS),
                  "costs": self.costs.model_dump(), "state": self.encoder.config.model_dump(),
                  "state_features": self.encoder.feature_names, "state_bins": list(self.agent.sizes),
                  "baselines": self.baselines}
        (staging / POLICY_JSON).write_text(json.dumps(record, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        return target


model_hash = bundle_hash  # the policy is valid for exactly these weights


def _sha256(path: Path) -> str:
    return f"sha256:{file_sha256(path)[:16]}"


def has_policy(bundle_folder: str | Path) -> bool:
    return (Path(bundle_folder) / POLICY_DIR / POLICY_JSON).is_file()


def load_policy(bundle_folder: str | Path) -> TriagePolicy:
    """The bundle's triage policy.

    Raises:
        BundleError: no policy, an unreadable one, or one trained for another model version.
    """
    from safetensors.numpy import load_file

    folder = Path(bundle_folder) / POLICY_DIR
    train = f"run `medsight triage train {bundle_folder} --data VAL_DATA`"
    if not (folder / POLICY_JSON).is_file():
        raise BundleError(bundle_folder, "has no triage policy", train)
    try:
        record = json.loads((folder / POLICY_JSON).read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(folder / POLICY_JSON, f"not valid JSON ({exc})", train) from exc
    if record.get("format_version") != FORMAT_VERSION:
        raise BundleError(folder / POLICY_JSON, f"policy format {record.get('format_version')} is not "
                          f"{FORMAT_VERSION}", train)
    current = model_hash(bundle_folder)
    if record.get("model_hash") != current:
        raise BundleError(folder, f"the triage policy was trained for model {record.get('model_hash')}, this bundle "
                          f"is {current}", f"retrain the policy for this model: {train}")
    if not (folder / POLICY_TENSORS).is_file() or _sha256(folder / POLICY_TENSORS) != record.get("policy_version"):
        raise BundleError(folder / POLICY_TENSORS, "missing or not the file triage.json records", train)
    tensors = load_file(str(folder / POLICY_TENSORS))
    state = StateConfig.model_validate(record["state"])
    meta = {k: v for k, v in record.items() if k not in ("costs", "state", "baselines", "actions", "format_version")}
    return TriagePolicy(
        encoder=StateEncoder.from_tensors({k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")}, state),
        agent=QAgent.from_tensors({k[6:]: v for k, v in tensors.items() if k.startswith("agent.")}),
        costs=CostTable.model_validate(record["costs"]),
        baselines=record["baselines"],
        meta=meta,
    )


def classification_bundle(bundle_folder: str | Path):
    """The loaded bundle, which must be a classifier.

    Raises:
        ConfigError: a segmentation (or other non-classification) bundle.
    """
    model_bundle = load_bundle(bundle_folder, weights=False)
    if model_bundle.task != "classification":
        raise ConfigError(bundle_folder, f"is a {model_bundle.task} bundle; triage decides per case from class "
                          "probabilities", "train the triage policy on a classification bundle")
    return model_bundle


def split_outputs(bundle_folder: str | Path, data: str | Path, split: str, *, tta_passes: int,
                  progress: bool = True) -> tuple[CaseOutputs, np.ndarray, list[str]]:
    """The model's outputs on one split of ``data``, with ``finding`` (True = positive label) and case ids.

    Raises:
        ConfigError: not a classification bundle.
        DatasetError: the data's classes differ from the model's, no such split, or unlabelled cases.
    """
    from medsight.engine.pipeline import bundle_split
    from medsight.engine.prepare import load_tensors
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


class ServedPolicy:
    """A bundle's policy bound to the service's predictor: one image in, the triage decision out."""

    def __init__(self, policy: TriagePolicy, predictor) -> None:
        self.policy = policy
        self.predictor = predictor

    def decide_sample(self, sample) -> dict[str, Any]:
        from medsight.transforms import preprocess

        batch = preprocess(sample, self.predictor.bundle.preprocess)[None]
        outputs = case_outputs(self.predictor, batch, tta_passes=self.policy.encoder.config.tta_passes)
        return self.policy.decide(outputs)[0]


def served_policy(bundle_folder: str | Path, predictor) -> ServedPolicy | None:
    """The bundle's policy for the service, or None when the bundle has none.

    Raises:
        BundleError: a policy that is unreadable or was trained for another model version.
    """
    if not has_policy(bundle_folder):
        return None
    return ServedPolicy(load_policy(bundle_folder), predictor)


__all__ = ["POLICY_DIR", "ServedPolicy", "TriagePolicy", "classification_bundle", "has_policy", "load_policy",
           "model_hash", "served_policy", "split_outputs", "train_policy"]
