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


@pytest.fixture(scope="session")
def small_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small folder-per-class phantom data set (normal / nodule, 32 px)."""
    from medsight.data.phantoms import make_chest_phantoms

    return make_chest_phantoms(tmp_path_factory.mktemp("phantoms"), n_per_class=40, size=32, seed=1)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, small_phantoms: Path) -> Path:
    """A run folder from a 3-epoch training on the small phantoms."""
    from medsight.config import load_config
    from medsight.workflows.train import run_training

    cfg = load_config(
        recipe="demo",
        overrides={
            "data.path": str(small_phantoms),
            "preprocess.size": [32, 32],
            "train.epochs": 3,
            "eval.bootstrap": 200,
        },
    )
    out = tmp_path_factory.mktemp("run")
    run_training(cfg, out=out, progress=False)
    return out
