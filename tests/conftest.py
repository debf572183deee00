"""Shared fixtures. Tests build their own small data; real data comes from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """``$MEDSIGHT_SHARED_DATA`` or ``../shared/data`` next to the repository."""
    return Path(os.environ.get("MEDSIGHT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; tests that need it skip with a reason when it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set MEDSIGHT_SHARED_DATA)")
    return root


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    """Two pytest workers on two cores: one torch thread each avoids oversubscription."""
    import torch

    torch.set_num_threads(1)
