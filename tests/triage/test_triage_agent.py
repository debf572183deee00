"""The Q-learning triage agent on synthetic case mixes whose optimal policy is known in closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsight.errors import ConfigError
from medsight.triage.agent import AgentConfig, QAgent, train_agent
from medsight.triage.baselines import baseline_actions, fit_baselines
from medsight.triage.costs import (
    ACTIONS,
    NEGATIVE,
    POSITIVE,
    REFER,
    CostTable,
    action_costs,
    expected_costs,
    load_costs,
)

COSTS = CostTable(missed_finding=10.0, false_alarm=1.0, radiologist_time=0.6)
TOLERANCE = 0.02  # the trained agent's expected reward is within 2% of the optimal policy's


def _case_mix(p_of_state: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cases spread evenly over the states; each is positive with its state's known probability."""
    rng = np.random.default_rng(seed)
    states = rng.integers(len(p_of_state), size=n)
    return states, rng.random(n) < p_of_state[states]


def _expected_reward(actions: np.ndarray, p_of_state: np.ndarray) -> float:
    """Mean reward over the (uniform) states of acting ``actions[s]`` in state ``s``: minus the expected cost."""
    return float(-expected_costs(p_of_state, COSTS)[np.arange(len(p_of_state)), actions].mean())


def test_agent_reaches_the_optimal_policy_reward_on_a_known_case_mix() -> None:
    p_of_state = (np.arange(10) + 0.5) / 10  # P(finding) 0.05, 0.15, ..., 0.95
    states, finding = _case_mix(p_of_state, 6000, seed=0)
    agent, history = train_agent(states[:, None], action_costs(finding, COSTS), sizes=(10,),
                                 config=AgentConfig(epochs=20, seed=0))
    optimal = expected_costs(p_of_state, COSTS).argmin(axis=1)
    # closed form: report negative at 0.05 (cost 0.5), refer at 0.15-0.35 (0.6 < 10p and < 1-p), positive from 0.45
    assert [ACTIONS[a] for a in optimal] == ["report_negative"] + ["refer"] * 3 + ["report_positive"] * 6
    learnt = agent.act(np.arange(10)[:, None])
    best, reached = _expected_reward(optimal, p_of_state), _expected_reward(learnt, p_of_state)
    assert best == pytest.approx(-0.41)
    assert reached >= best - TOLERANCE * abs(best)
    assert reached > _expected_reward(np.full(10, REFER), p_of_state) + 0.1  # always refer: -0.6
    assert history[-1] > history[0]  # the reward it collects grows as exploration decays
    # the Q-values of the chosen actions are the expected costs it learnt from interaction
    q = agent.q_values(np.arange(10)[:, None])[np.arange(10), learnt]
    assert -q == pytest.approx(expected_costs(p_of_state, COSTS)[np.arange(10), learnt], abs=0.12)


def test_agent_uses_the_finer_state_where_it_has_enough_cases() -> None:
    """Two features: probability bin x a second feature that flips the true risk; the optimum needs both."""
    p_of_state = np.array([[0.02, 0.3], [0.3, 0.9]])  # rows: probability bin, columns: second feature
    rng = np.random.default_rng(1)
    bins = rng.integers(2, size=(4000, 2))
    finding = rng.random(4000) < p_of_state[bins[:, 0], bins[:, 1]]
    agent, _ = train_agent(bins, action_costs(finding, COSTS), sizes=(2, 2), config=AgentConfig(epochs=15))
    grid = np.array([[a, b] for a in range(2) for b in range(2)])
    learnt = agent.act(grid)
    optimal = expected_costs(p_of_state.ravel(), COSTS).argmin(axis=1)
    assert list(learnt) == list(optimal) == [NEGATIVE, REFER, REFER, POSITIVE]


def test_training_is_reproducible_from_the_seed_and_unseen_states_are_referred() -> None:
    states, finding = _case_mix(np.array([0.01, 0.95]), 400, seed=2)
    runs = [train_agent(states[:, None], action_costs(finding, COSTS), sizes=(3,), config=AgentConfig(epochs=5))[0]
            for _ in range(2)]
    assert np.array_equal(runs[0].q[0], runs[1].q[0])
    assert list(runs[0].act(np.array([[0], [1], [2]]))) == [NEGATIVE, POSITIVE, REFER]  # state 2: no case


def test_agent_round_trips_through_tensors_and_rejects_foreign_bins() -> None:
    states, finding = _case_mix(np.array([0.05, 0.9]), 200, seed=3)
    agent, _ = train_agent(states[:, None], action_costs(finding, COSTS), sizes=(2,), config=AgentConfig(epochs=3))
    again = QAgent.from_tensors(agent.to_tensors())
    assert np.array_equal(again.act(np.array([[0], [1]])), agent.act(np.array([[0], [1]])))
    with pytest.raises(ConfigError, match="do not fit the agent"):
        agent.act(np.array([[5]]))


def test_cost_table_from_yaml_with_overrides_and_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "costs.yaml"
    path.write_text("missed_finding: 20\nfalse_alarm: 2\n")
    costs = load_costs(path, {"radiologist_time": 0.25, "false_alarm": None})
    assert costs.model_dump() == {"missed_finding": 20.0, "false_alarm": 2.0, "radiologist_time": 0.25}
    assert action_costs(np.array([True, False]), costs).tolist() == [[20.0, 0.0, 0.25], [0.0, 2.0, 0.25]]
    with pytest.raises(ConfigError, match=r"costs must be finite and >= 0.*'false_alarm': -1\.0"):
        load_costs(None, {"false_alarm": -1})
    with pytest.raises(ConfigError, match="extra_cost"):
        load_costs(None, {"extra_cost": 1})
    with pytest.raises(ConfigError, match="no such cost table file"):
        load_costs(tmp_path / "missing.yaml")


def test_baselines_fixed_automates_everything_and_uncertainty_refers_the_uncertain() -> None:
    rng = np.random.default_rng(4)
    finding = rng.random(500) < 0.5
    p = np.clip(np.where(finding, 0.7, 0.3) + rng.normal(0, 0.15, 500), 0, 1)
    uncertainty = -(p * np.log(p + 1e-12) + (1 - p) * np.log(1 - p + 1e-12))
    rules = fit_baselines(p, uncertainty, finding, COSTS)
    fixed = baseline_actions(rules["fixed_threshold"], p, uncertainty)
    assert (fixed != REFER).all() and 0.2 < rules["fixed_threshold"]["threshold"] < 0.8
    chosen = rules["uncertainty_threshold"]
    refer = baseline_actions(chosen, p, uncertainty) == REFER
    assert 0 < chosen["refer_fraction"] < 1 and refer.mean() == pytest.approx(chosen["refer_fraction"], abs=0.02)
    assert uncertainty[refer].min() > uncertainty[~refer].max() - 1e-12  # the most uncertain ones
    cost = action_costs(finding, COSTS)
    assert cost[np.arange(500), baseline_actions(chosen, p, uncertainty)].mean() < cost[np.arange(500), fixed].mean()
