"""Model registry (versions of bundles with metrics, data hash, parent and stage) and the promotion gate."""

from medsight.registry.registry import STAGES, ModelRegistry, RegistryError

__all__ = ["STAGES", "ModelRegistry", "RegistryError"]
