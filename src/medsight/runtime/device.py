"""Where the work runs and in what precision, decided in one place.

CPU by default, CUDA when present. Mixed precision on CUDA (``train.amp``: bfloat16 where the
GPU supports it, else float16 with a gradient scaler); on CPU only when asked (``train.cpu_amp``)
and only on a CPU with native bfloat16 (AVX512-BF16 or AMX), where it is ~1.4x faster for
convolutions; elsewhere the CPU helpers are no-ops.

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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_bf16_active(device: torch.device, asked: bool) -> tuple[bool, str]:
    """``(active, note)``: whether bfloat16 autocast runs on this CPU, and a line saying so."""
    if not asked or device.type != "cpu":
        return False, ""
    if not cpu_has_native_bf16():
        return False, "train.cpu_amp is on, but this CPU has no native bfloat16 (AVX512-BF16/AMX): training in float32"
    return True, "training in bfloat16 mixed precision on the CPU (train.cpu_amp)"


def autocast_dtype(device: torch.device, enabled: bool, *, cpu_bf16: bool = False) -> torch.dtype | None:
    """The dtype :func:`autocast` computes in on ``device``; None where it is a no-op (float32)."""
    if device.type == "cuda" and enabled:
        return amp_dtype(device)
    if cpu_bf16_active(device, cpu_bf16)[0]:
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool, *, cpu_bf16: bool = False) -> AbstractContextManager:
    """Mixed-precision autocast: on CUDA when ``enabled``; on CPU when ``cpu_bf16`` and the CPU
    has native bfloat16 (:func:`cpu_bf16_active`); a no-op context otherwise. Cast the outputs
    to float before the loss."""
    dtype = autocast_dtype(device, enabled, cpu_bf16=cpu_bf16)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A loss scaler, active only for float16 autocast on CUDA (a pass-through otherwise)."""
    active = enabled and device.type == "cuda" and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=active)


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``; 2D image batches ``(N, C, H, W)`` channels-last, the layout the
    trainers keep their 2D models in (convolutions run faster in it on CPU)."""
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if images.ndim == 4 else images


def set_threads(num_threads: int) -> None:
    """Set torch's intra-op threads; ``0`` uses every core this process may run on."""
    if num_threads == 0:
        affinity = getattr(os, "sched_getaffinity", None)
        num_threads = len(affinity(0)) if affinity else os.cpu_count() or 1
    torch.set_num_threads(num_threads)
