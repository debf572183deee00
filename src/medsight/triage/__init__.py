"""Triage: a reinforcement-learning policy that decides, per case, to report it automatically or refer it.

``medsight triage train BUNDLE --data VAL`` replays the labelled cases of a split as one-step
episodes for a tabular Q-learning agent (:mod:`medsight.triage.agent`) whose state is the
model's outputs (:mod:`medsight.triage.features`) and whose reward is minus a configurable cost
(:mod:`medsight.triage.costs`; training in :mod:`medsight.triage.train`); the policy is saved in
``BUNDLE/triage/`` and loaded by :mod:`medsight.triage.policy`, which the service imports.
``medsight triage evaluate`` compares it with a fixed-threshold and an uncertainty-threshold
rule on a held-out split (:mod:`medsight.triage.evaluate`). The service adds the policy's
decision to each classification when the bundle has one.

Importing this package pulls in neither torch nor the training code.
"""

from __future__ import annotations

from medsight.triage.costs import ACTIONS, CostTable, load_costs

__all__ = ["ACTIONS", "CostTable", "load_costs"]
