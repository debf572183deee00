"""Where the work runs and in what precision, decided in one place.

CPU by default, CUDA when present; mixed precision only on CUDA (bfloat16 where the GPU
supports it, else float16 with a gradient scaler). On CPU every helper here is a no-op.

Example:
    >>> device = pick_device("auto")
    >>> scaler = grad_scaler(device, enabled=True)      # disabled pass-through on CPU
    >>> with autocast(device, enabled=True):
    ...     loss = model(images.to(device)).sum()
"""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractContextManager

import torch

from medsight.errors import ConfigError


def pick_device(preference: str = "auto") -> torch.device:
    """The device to train or predict on.

    Args:
        preference: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ConfigError: an unknown name, or CUDA asked for where there is none.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = f"device={preference}"
    try:
        device = torch.device(preference)
    except RuntimeError as exc:
        raise ConfigError(where, "not a device name", "use auto, cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(where, "medsight trains on cpu or cuda only", "use auto, cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(where, "CUDA is not available on this machine", "use auto or cpu")
    return device


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype on ``device``: bfloat16 where supported, else float16."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """Mixed-precision autocast on CUDA when ``enabled``; a no-op context on CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype(device))


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A loss scaler, active only for float16 autocast on CUDA (a pass-through otherwise)."""
    active = enabled and device.type == "cuda" and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=active)


def set_threads(num_threads: int) -> None:
    """Set torch's intra-op threads; ``0`` uses every core this process may run on."""
    if num_threads == 0:
        affinity = getattr(os, "sched_getaffinity", None)
        num_threads = len(affinity(0)) if affinity else os.cpu_count() or 1
    torch.set_num_threads(num_threads)
