"""A triage policy in a bundle: saving it beside the model, loading it to act (training: :mod:`.train`).

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
    >>> policy = load_policy("runs/demo/model")
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsight.bundle import bundle_hash, load_bundle
from medsight.errors import BundleError, ConfigError
from medsight.hashing import file_sha256
from medsight.triage.agent import QAgent
from medsight.triage.costs import ACTIONS, CostTable
from medsight.triage.features import CaseOutputs, StateConfig, StateEncoder, case_outputs

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
           "model_hash", "served_policy"]
