"""A tabular Q-learning agent that learns when to report a case automatically and when to refer it.

Each labelled case is a one-step episode replayed from the training split: the agent sees the
case's discrete state (bins of :class:`~medsight.triage.features.StateEncoder`), picks an action
epsilon-greedily (report negative, report positive, refer), and the label plays the
radiologist: the reward is minus the action's cost from the cost table (a referral costs the
radiologist's time and is always right). The episode then ends, so the Q-learning target is
the reward itself (no bootstrap term) and the update is the running mean
``Q(s, a) += (r - Q(s, a)) / n(s, a)``. Exploration decays linearly from ``epsilon_start`` to
``epsilon_end`` over the epochs; the run is reproducible from ``seed``.

Sparse states: the agent keeps one Q-table per level of detail, level ``m`` using the first
``m + 1`` state features (level 0: the probability bin alone), and updates all of them on every
step. It acts on the finest level whose state held at least ``min_cases`` training cases and
has tried every action there. A state no training case fell in is referred.

Example:
    >>> agent, history = train_agent(bins, action_costs(finding, costs), sizes=(10,), config=AgentConfig())
    >>> agent.act(bins[:3])
    array([2, 0, 1])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medsight.errors import ConfigError
from medsight.triage.costs import ACTIONS, REFER


class AgentConfig(BaseModel):
    """How the Q-learner trains."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(40, ge=1, le=10_000)
    epsilon_start: float = Field(1.0, ge=0, le=1)
    epsilon_end: float = Field(0.05, ge=0, le=1)
    min_cases: int = Field(10, ge=1)
    seed: int = 0


@dataclass
class QAgent:
    """Q-tables per level of detail. ``q[m]``, ``visits[m]``: ``(states, actions)``; ``cases[m]``: ``(states,)``."""

    sizes: tuple[int, ...]
    q: list[np.ndarray]
    visits: list[np.ndarray]
    cases: list[np.ndarray]
    min_cases: int

    @classmethod
    def empty(cls, sizes: tuple[int, ...], min_cases: int) -> QAgent:
        counts = [int(np.prod(sizes[: m + 1])) for m in range(len(sizes))]
        return cls(tuple(int(s) for s in sizes), [np.zeros((n, len(ACTIONS))) for n in counts],
                   [np.zeros((n, len(ACTIONS)), dtype=np.int64) for n in counts],
                   [np.zeros(n, dtype=np.int64) for n in counts], min_cases)

    def indices(self, bins: np.ndarray) -> np.ndarray:
        """``(levels, N)`` state index of each case at each level (mixed radix over the first features)."""
        bins = np.asarray(bins, dtype=np.int64).reshape(len(bins), -1)
        if bins.shape[1] != len(self.sizes) or (bins < 0).any() or (bins >= np.array(self.sizes)).any():
            raise ConfigError("triage state", f"bins of shape {bins.shape} do not fit the agent's {self.sizes}",
                              "encode the cases with the policy's own state encoder")
        out = np.zeros((len(self.sizes), len(bins)), dtype=np.int64)
        index = np.zeros(len(bins), dtype=np.int64)
        for m, size in enumerate(self.sizes):
            index = index * size + bins[:, m]
            out[m] = index
        return out

    def q_values(self, bins: np.ndarray) -> np.ndarray:
        """``(N, actions)`` Q-values the agent acts on: ``-inf`` for an action never tried, NaN for an unseen state."""
        rows = [self._q_one(column) for column in self.indices(bins).T]
        return np.stack(rows) if rows else np.zeros((0, len(ACTIONS)))

    def _q_one(self, index: np.ndarray) -> np.ndarray:
        for m in range(len(self.sizes) - 1, -1, -1):
            s = index[m]
            tried = self.visits[m][s] > 0
            if (self.cases[m][s] >= self.min_cases and tried.all()) or (m == 0 and tried.any()):
                return np.where(tried, self.q[m][s], -np.inf)
        return np.full(len(ACTIONS), np.nan)

    def act(self, bins: np.ndarray) -> np.ndarray:
        """Greedy actions (indices into ``ACTIONS``); ties and unseen states go to a referral."""
        return np.array([greedy(self._q_one(column)) for column in self.indices(bins).T], dtype=np.int64)

    def to_tensors(self) -> dict[str, np.ndarray]:
        tensors = {"sizes": np.array(self.sizes, dtype=np.int64), "min_cases": np.array([self.min_cases])}
        for m in range(len(self.sizes)):
            tensors |= {f"q_{m}": self.q[m], f"visits_{m}": self.visits[m], f"cases_{m}": self.cases[m]}
        return tensors

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> QAgent:
        sizes = tuple(int(s) for s in tensors["sizes"])
        levels = range(len(sizes))
        return cls(sizes, [tensors[f"q_{m}"] for m in levels], [tensors[f"visits_{m}"] for m in levels],
                   [tensors[f"cases_{m}"] for m in levels], int(tensors["min_cases"][0]))


def greedy(q: np.ndarray) -> int:
    """The action with the highest Q; a tie prefers refer, then report_positive; an unseen state (NaN) is referred."""
    if np.isnan(q).any():
        return REFER
    return len(ACTIONS) - 1 - int(np.argmax(q[::-1]))


def train_agent(
    bins: np.ndarray, costs: np.ndarray, *, sizes: tuple[int, ...], config: AgentConfig
) -> tuple[QAgent, list[float]]:
    """Q-learning on one-step episodes replayed from labelled cases.

    Args:
        bins: ``(N, F)`` discrete state of each case.
        costs: ``(N, actions)`` cost of each action on each case (from its label; see
            :func:`~medsight.triage.costs.action_costs`). The agent only ever sees the cost of
            the action it took.
        sizes: bins per state feature.
        config: epochs, exploration, back-off, seed.

    Returns:
        ``(agent, history)``: the mean reward the agent collected in each epoch (exploration included).

    Raises:
        ConfigError: no cases, or ``costs`` that do not match ``bins``.
    """
    costs = np.asarray(costs, dtype=np.float64)
    if len(bins) == 0 or costs.shape != (len(bins), len(ACTIONS)):
        raise ConfigError("triage training", f"{len(bins)} cases with costs of shape {costs.shape}",
                          "train on a split with labelled cases")
    rng = np.random.default_rng(config.seed)
    agent = QAgent.empty(sizes, config.min_cases)
    index = agent.indices(bins)
    for m in range(len(sizes)):
        agent.cases[m] = np.bincount(index[m], minlength=len(agent.cases[m]))
    history: list[float] = []
    steps = max(config.epochs - 1, 1)
    for epoch in range(config.epochs):
        epsilon = config.epsilon_start + (config.epsilon_end - config.epsilon_start) * epoch / steps
        order = rng.permutation(len(bins))
        explore = rng.random(len(bins)) < epsilon
        random_actions = rng.integers(len(ACTIONS), size=len(bins))
        total = 0.0
        for i in order:
            action = int(random_actions[i]) if explore[i] else greedy(agent._q_one(index[:, i]))
            reward = -costs[i, action]
            for m in range(len(sizes)):
                s = index[m, i]
                agent.visits[m][s, action] += 1
                agent.q[m][s, action] += (reward - agent.q[m][s, action]) / agent.visits[m][s, action]
            total += reward
        history.append(total / len(bins))
    return agent, history


__all__ = ["AgentConfig", "QAgent", "train_agent"]
