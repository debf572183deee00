"""The state a triage policy sees for one case: what the model said about it, in a few numbers.

Per case, from the bundle's own predictor (so the probabilities equal the served ones):

* ``p_finding``: the probability of a finding. For a binary model, the probability of its
  second class; for a multi-class model, ``1 - P(first class)`` (anything but the first,
  normal class is a finding).
* ``uncertainty``: the predictive entropy (nats) of the mean probabilities over ``tta_passes``
  mirrored copies of the input (1 pass: the entropy of the plain prediction).
* an embedding summary: the norm of the penultimate features (the input of the network's
  last linear layer) and their first ``embedding_components`` principal components, with the
  PCA fitted on the training episodes.

:class:`StateEncoder` turns these continuous numbers into bins (probability: equal-width bins
on [0, 1]; the others: quantile bins fitted on the training episodes), the discrete state of
the tabular Q-learner.

Example:
    >>> outputs = case_outputs(predictor, images, tta_passes=2)
    >>> encoder = StateEncoder.fit(outputs, StateConfig())
    >>> encoder.bins(outputs).shape        # (cases, 4): probability, uncertainty, norm, PC1
    (120, 4)
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medsight.errors import ConfigError
from medsight.models.heads import entropy


class StateConfig(BaseModel):
    """How a case becomes a discrete state."""

    model_config = ConfigDict(extra="forbid")

    prob_bins: int = Field(10, ge=2, le=100)
    uncertainty_bins: int = Field(3, ge=1, le=20)
    embedding_components: int = Field(1, ge=0, le=8)
    embedding_bins: int = Field(2, ge=1, le=10)
    tta_passes: int = Field(2, ge=1, le=8)


@dataclass
class CaseOutputs:
    """The model's outputs for ``N`` cases: ``probs (N, K)``, ``uncertainty (N,)``, ``embedding (N, D)``."""

    probs: np.ndarray
    uncertainty: np.ndarray
    embedding: np.ndarray

    @property
    def p_finding(self) -> np.ndarray:
        """Probability of a finding: ``1 - P(first class)`` (for two classes, P(second class))."""
        return 1.0 - self.probs[:, 0]


def finding_labels(labels: np.ndarray) -> np.ndarray:
    """True where the label is a finding (any class but the first)."""
    return np.asarray(labels) != 0


def case_outputs(predictor, images: np.ndarray, *, tta_passes: int, batch_size: int = 64) -> CaseOutputs:
    """Probabilities, TTA entropy and penultimate features of preprocessed ``(N, C, *size)`` images."""
    chunks = [_chunk_outputs(predictor, images[i:i + batch_size], tta_passes)
              for i in range(0, len(images), batch_size)]
    return CaseOutputs(*(np.concatenate([c[j] for c in chunks]) for j in range(3)))


def _chunk_outputs(predictor, batch: np.ndarray, tta_passes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import torch

    batch = np.ascontiguousarray(batch, np.float32)
    with penultimate(predictor.model) as captured:
        probs = predictor.predict_arrays(batch)
        if not captured:  # the ONNX backend does not run the PyTorch module
            with torch.inference_mode():
                predictor.model(torch.from_numpy(batch).to(predictor.device))
    embedding = captured[0]
    spatial = batch.ndim - 2
    # the identity, then left-right, up-down, both... (the last spatial axis first, as medsight's TTA)
    axes = [a for r in range(spatial + 1) for a in itertools.combinations(range(batch.ndim - 1, 1, -1), r)]
    passes = [probs] + [predictor.predict_arrays(np.ascontiguousarray(np.flip(batch, a)))
                        for a in axes[1:tta_passes]]
    return probs, entropy(np.mean(passes, axis=0), axis=1), embedding


@contextlib.contextmanager
def penultimate(model) -> Iterator[list[np.ndarray]]:
    """Capture the input of the network's last ``nn.Linear`` (its penultimate features) while inside.

    The hook is removed on exit, whatever happens; the model is not changed.

    Raises:
        ConfigError: the network has no linear layer.
    """
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"model {type(model).__name__}", "has no linear layer to take an embedding from",
                          "set embedding_components: 0")
    captured: list[np.ndarray] = []

    def hook(_module, inputs) -> None:
        captured.append(inputs[0].detach().flatten(1).float().cpu().numpy())

    handle = linears[-1].register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@dataclass
class StateEncoder:
    """Continuous state summary and its discretisation, fitted on the training episodes.

    Attributes:
        config: the bins and components.
        pca_mean: ``(D,)`` mean embedding of the training episodes.
        pca_components: ``(k, D)`` principal axes (sign fixed: largest loading positive).
        edges: inner bin edges per feature after the probability (uncertainty, norm, PC1...).
    """

    config: StateConfig
    pca_mean: np.ndarray
    pca_components: np.ndarray
    edges: list[np.ndarray]

    @classmethod
    def fit(cls, outputs: CaseOutputs, config: StateConfig) -> StateEncoder:
        emb = np.asarray(outputs.embedding, dtype=np.float64)
        mean = emb.mean(axis=0)
        k = config.embedding_components
        components = np.zeros((k, emb.shape[1]))
        if k:
            _, _, vt = np.linalg.svd(emb - mean, full_matrices=False)
            top = vt[:k]
            top *= np.sign(top[np.arange(len(top)), np.abs(top).argmax(axis=1)])[:, None]
            components[: len(top)] = top
        encoder = cls(config, mean, components, [])
        summary = encoder.summary(outputs)
        counts = [config.uncertainty_bins] + [config.embedding_bins] * (1 + k)
        encoder.edges = [np.quantile(summary[:, j + 1], np.linspace(0, 1, n + 1)[1:-1]) for j, n in enumerate(counts)]
        return encoder

    @property
    def feature_names(self) -> list[str]:
        return ["p_finding", "uncertainty", "embedding_norm",
                *(f"embedding_pc{i + 1}" for i in range(self.config.embedding_components))]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of bins per feature."""
        return (self.config.prob_bins, *(len(e) + 1 for e in self.edges))

    def summary(self, outputs: CaseOutputs) -> np.ndarray:
        """``(N, F)`` continuous state: p_finding, uncertainty, embedding norm, PCA components."""
        emb = np.asarray(outputs.embedding, dtype=np.float64)
        if emb.shape[1] != self.pca_mean.shape[0]:
            raise ConfigError("triage policy", f"expects {self.pca_mean.shape[0]} embedding features, the model "
                              f"gives {emb.shape[1]}", "retrain the policy with medsight triage train")
        pcs = (emb - self.pca_mean) @ self.pca_components.T
        return np.column_stack([outputs.p_finding, outputs.uncertainty, np.linalg.norm(emb, axis=1), pcs])

    def bins(self, outputs: CaseOutputs) -> np.ndarray:
        """``(N, F)`` bin index of each feature."""
        summary = self.summary(outputs)
        n = self.config.prob_bins
        prob = np.clip((summary[:, 0] * n).astype(int), 0, n - 1)
        rest = [np.digitize(summary[:, j + 1], e) for j, e in enumerate(self.edges)]
        return np.column_stack([prob, *rest]).astype(np.int64)

    def to_tensors(self) -> dict[str, np.ndarray]:
        return {"pca_mean": self.pca_mean, "pca_components": self.pca_components,
                **{f"edges_{i}": e for i, e in enumerate(self.edges)}}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], config: StateConfig) -> StateEncoder:
        n_edges = 2 + config.embedding_components
        return cls(config, tensors["pca_mean"], tensors["pca_components"],
                   [tensors[f"edges_{i}"] for i in range(n_edges)])


__all__ = ["CaseOutputs", "StateConfig", "StateEncoder", "case_outputs", "finding_labels", "penultimate"]
