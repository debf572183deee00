"""Training checkpoints in one safetensors file, written atomically, never pickled.

Layout of ``checkpoints/last.safetensors``:

* tensors ``model.<name>``: the current weights (and buffers);
* tensors ``best.<name>``: the best weights so far;
* tensors ``optim.<index>.<key>``: the optimizer's per-parameter state (momentum, Adam moments);
* tensors ``rng.torch`` / ``rng.numpy`` / ``rng.cuda.<i>``: random-number generator states;
* metadata ``medsight``: JSON with the format version, the optimizer's param groups and
  non-tensor state, the scheduler's state, the random states that are not tensors, and the
  caller's ``state`` (epoch, early stopping, history, ...).

A crash while writing leaves the previous checkpoint intact: the bytes go to a temporary
file in the same folder, are flushed to disk, then renamed over the old file
(:mod:`medsight.atomic_write`); a full disk removes the temporary file and raises
:class:`~medsight.errors.OutputWriteError`.

Example:
    >>> save_checkpoint(path, model=model, optimizer=opt, scheduler=sched, state={"epoch": 3})
    >>> state = load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    >>> state["epoch"]
    3
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsight.atomic_write import atomic_write_bytes
from medsight.errors import MedsightError

FORMAT = "medsight-checkpoint/1"
CHECKPOINT = Path("checkpoints") / "last.safetensors"  # a run folder's checkpoint, both tasks
_KEY = "medsight"
_FIX = "delete it to start the run over (or train without --resume)"


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    state: dict[str, Any],
    best_state: dict[str, torch.Tensor] | None = None,
    averaged: dict[str, torch.Tensor] | None = None,
    prior_best: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write model, optimizer, scheduler, RNG states and ``state`` atomically to ``path``.

    Args:
        path: the checkpoint file (its folder is created).
        model: whose ``state_dict`` is saved.
        optimizer: whose state is saved (tensors as tensors, the rest as JSON).
        scheduler: an LR scheduler with ``state_dict`` (or None).
        state: JSON-able training state (epoch, early stopping, history...).
        best_state: the best weights so far, saved under the ``best.`` prefix.
        averaged: the moving average of the weights (``train.ema``), under the ``ema.`` prefix.
        prior_best: a run its time limit cut inside an epoch whose validation became the best: the
            best weights before that epoch, which a resumed run that completes the epoch goes back
            to (``prior_best.`` prefix).

    Raises:
        OutputWriteError: the disk is full or the folder not writable (the previous checkpoint is kept).
    """
    from safetensors.torch import save

    tensors = _prefixed("model.", model.state_dict())
    tensors.update(_prefixed("best.", best_state or {}))
    tensors.update(_prefixed("ema.", averaged or {}))
    tensors.update(_prefixed("prior_best.", prior_best or {}))
    optim = optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for index, slots in optim["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = _cpu_copy(value)
            else:
                plain_state.setdefault(str(index), {})[key] = value
    rng_tensors, rng_meta = _rng_state()
    tensors.update(rng_tensors)
    meta = {
        "format": FORMAT,
        "optimizer": {"param_groups": optim["param_groups"], "state": plain_state},
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_meta,
        "state": state,
    }
    atomic_write_bytes(Path(path), save(tensors, metadata={_KEY: json.dumps(meta)}))


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states from ``path``.

    A per-epoch schedule (``LambdaLR``) goes on at the saved epoch with the learning rates of
    the schedule given now: the fresh optimizer's rates and the schedule's own function, so a
    resume with more ``train.epochs`` or another ``train.lr`` takes effect from the first
    resumed epoch (with the same config the rates are the saved ones).

    Returns:
        The ``state`` given to :func:`save_checkpoint`, plus ``"best_state"``: the best
        weights (CPU tensors; empty when none were saved), ``"averaged"``: the weight
        average, and ``"prior_best"`` (both empty when none was saved).

    Raises:
        MedsightError: the file is missing, corrupt, not a medsight checkpoint, or does not
            fit this model/optimizer.
    """
    path = Path(path)
    tensors, meta = _read(path)
    configured = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    try:
        model.load_state_dict(_unprefixed("model.", tensors))
        optim_meta = meta["optimizer"]
        slots: dict[int, dict[str, Any]] = {}
        for key, value in optim_meta["state"].items():
            slots.setdefault(int(key), {}).update(value)
        for name, value in _unprefixed("optim.", tensors).items():
            index, key = name.split(".", 1)
            slots.setdefault(int(index), {})[key] = value
        optimizer.load_state_dict({"state": slots, "param_groups": optim_meta["param_groups"]})
        if scheduler is not None and meta["scheduler"] is not None:
            scheduler.load_state_dict(meta["scheduler"])
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                _follow_schedule(optimizer, scheduler, configured)
        _restore_rng(tensors, meta["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise MedsightError(
            path, f"the checkpoint does not fit this model or optimizer ({_first_line(exc)})",
            f"resume with the config that wrote it, or {_FIX}",
        ) from exc
    return {**meta["state"], "best_state": _unprefixed("best.", tensors), "averaged": _unprefixed("ema.", tensors),
            "prior_best": _unprefixed("prior_best.", tensors)}


def _follow_schedule(optimizer: torch.optim.Optimizer, scheduler, configured: list[float]) -> None:
    """Each group's rate at the scheduler's epoch, from the configured base rate (not the saved one)."""
    scheduler.base_lrs = list(configured)
    for group, base, factor in zip(optimizer.param_groups, configured, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * factor(scheduler.last_epoch)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not path.is_file():
        raise MedsightError(path, "no checkpoint here", "train without --resume to start a new run")
    try:
        raw = path.read_bytes()
        tensors = load(raw)
        meta = _metadata(raw)
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as exc:
        problem = f"the checkpoint is unreadable or corrupt ({_first_line(exc)})"
        raise MedsightError(path, problem, _FIX) from exc
    if meta.get("format") != FORMAT:
        raise MedsightError(path, f"not a {FORMAT} file (format {meta.get('format')!r})", _FIX)
    return tensors, meta


def _metadata(raw: bytes) -> dict[str, Any]:
    """The JSON stored in the safetensors header's metadata (header: 8-byte length + JSON)."""
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    meta = json.loads(header.get("__metadata__", {}).get(_KEY, "{}"))
    if not isinstance(meta, dict):
        raise ValueError("the metadata is not a JSON object")
    return meta


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = cuda_state.cpu()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(py_state), py_gauss],
    }
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = meta["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if torch.cuda.is_available():
        names = [f"rng.cuda.{i}" for i in range(torch.cuda.device_count())]
        torch.cuda.set_rng_state_all([tensors[name] for name in names if name in tensors])


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + name: _cpu_copy(value) for name, value in tensors.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy that shares storage with nothing (safetensors refuses shared tensors)."""
    return tensor.detach().to("cpu", copy=True).contiguous()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
