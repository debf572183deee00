"""The import contracts in ``pyproject.toml`` hold, lazy imports inside functions included: the layers from
contracts up to the command line, no import cycle (between packages, or between the modules of one package),
and a service that imports no training, workflow or GAN code (also not through another package)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_TYPES = ["layers", "acyclic_siblings", "forbidden"]


def test_pyproject_declares_the_layers_the_cycle_ban_and_the_service_contract() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert [contract["type"] for contract in contracts] == CONTRACT_TYPES
    layers = contracts[0]
    assert layers["containers"] == ["medsight"] and layers["exhaustive"] is True
    assert layers["layers"][0] == "cli" and layers["layers"][-1].startswith("config")
    assert contracts[1]["ancestors"] == ["medsight"]
    service = contracts[2]
    assert service["source_modules"] == ["medsight.serve"]
    assert {"medsight.training", "medsight.workflows", "medsight.gan"} <= set(service["forbidden_modules"])


def test_every_import_contract_is_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    verdicts = re.findall(r"\b(KEPT|BROKEN)\n", result.stdout)
    assert verdicts == ["KEPT"] * len(CONTRACT_TYPES), result.stdout[-4000:]
    assert f"Contracts: {len(CONTRACT_TYPES)} kept, 0 broken." in result.stdout
