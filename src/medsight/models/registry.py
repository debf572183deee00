"""One registry and one factory for every network.

The registry knows no model family: each family module registers its factories with
:func:`register_model` when it is imported, and :mod:`medsight.models` imports every family, so
any import of ``medsight.models`` (or of a module inside it) fills the registry.

Every factory takes the same keyword-only core arguments and returns an ``nn.Module``
whose forward maps ``(N, in_channels, *spatial)`` to logits ``(N, num_outputs)``
(classifiers) or ``(N, num_outputs, *spatial)`` (segmenters).

Example:
    >>> @register_model("tiny")
    ... def tiny(*, in_channels, num_outputs, spatial_dims, **kwargs): ...
    >>> model = create_model("tiny", in_channels=1, num_outputs=2, spatial_dims=2)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medsight.errors import ConfigError

_REGISTRY: dict[str, Callable[..., Any]] = {}
_TASKS: dict[str, str] = {}


def register_model(name: str, *, task: str = "classification") -> Callable[[Callable], Callable]:
    """Decorator that registers a model factory under ``name``; duplicates are an error."""

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = factory
        _TASKS[name] = task
        return factory

    return wrap


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those for one task."""
    return sorted(n for n in _REGISTRY if task is None or _TASKS[n] == task)


def create_model(name: str, *, in_channels: int, num_outputs: int, spatial_dims: int, **kwargs: Any):
    """Build a registered model.

    Raises:
        ConfigError: the name is not registered, or the model rejects the arguments.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"model.name={name}", "unknown model", f"choose one of: {', '.join(list_models())}")
    try:
        return _REGISTRY[name](
            in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims, **kwargs
        )
    except TypeError as exc:
        raise ConfigError(f"model {name}", f"bad model arguments ({exc})", "check model.kwargs") from exc

