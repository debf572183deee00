"""Model registry and factory, and the model families that register into it.

The registry (:mod:`medsight.models.registry`) imports no family; this package imports each family
module, whose ``@register_model`` decorators fill the registry.
"""

from medsight.models import classifiers, detectors, ensemble, segmenters  # noqa: F401  (they register their models)
from medsight.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
