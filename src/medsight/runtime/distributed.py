"""Data-parallel training across processes (``torch.distributed``, launched by ``torchrun``).

``medsight train --nproc N`` re-launches itself under ``torchrun``; every process then
runs the same training loop. The process group comes from torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), with the
``gloo`` backend on CPU and ``nccl`` on CUDA (one GPU per process).

Each rank draws the *same* seeded global batch of ``batch_size`` rows (the same shuffling,
balanced sampling and augmentation as one process) and trains on its own
``batch_size / world`` of it; DDP averages the gradients, so one step equals the
one-process step on the whole batch (exactly without batch norm and dropout; on CUDA batch
norm becomes ``SyncBatchNorm``). Only rank 0 writes checkpoints, logs, bundles and reports.

Outside ``torchrun`` every helper is a no-op: rank 0 of a world of 1.

Example:
    >>> with session("auto"):                       # under torchrun: the process group
    ...     net = wrap(model, device)               # DDP when the world is larger than 1
    ...     images, labels = shard(images, labels)  # this rank's rows of the global batch
    ...     if is_main():
    ...         save(...)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from medsight.config import TrainConfig
from medsight.errors import ConfigError

_LAUNCH_VARS = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


def under_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (``torch.distributed.run``)."""
    return all(name in os.environ for name in _LAUNCH_VARS)


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the run (1 outside torchrun)."""
    import torch.distributed as dist

    if is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1")) if under_torchrun() else 1


def rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    import torch.distributed as dist

    if is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if under_torchrun() else 0


def local_rank() -> int:
    """This process's rank on its node (its GPU index on CUDA)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if under_torchrun() else 0


def is_main() -> bool:
    """True on the one process that logs, checkpoints and writes the bundle and report."""
    return rank() == 0


@contextlib.contextmanager
def session(device_preference: str = "auto") -> Iterator[None]:
    """The process group for the duration of a run (a no-op outside torchrun or at world size 1).

    The backend is ``nccl`` when training on CUDA (each process on ``cuda:LOCAL_RANK``) and
    ``gloo`` on CPU. On a clean exit all ranks meet at a barrier before the group is torn
    down, so rank 0 finishes its bundle and report while the others wait.

    Raises:
        ConfigError: more processes on this node than GPUs.
    """
    import torch.distributed as dist

    from medsight.runtime.device import pick_device

    if not under_torchrun() or world_size() == 1 or is_initialized():
        yield
        return
    device = pick_device(device_preference)
    if device.type == "cuda":
        check_processes(local_rank() + 1, device)
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def check_processes(nproc: int, device: torch.device) -> None:
    """A clear error when ``nproc`` processes on one node would share a core or a GPU.

    Raises:
        ConfigError: ``nproc`` above the CPU cores (CPU training) or the GPUs (CUDA training).
    """
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ConfigError(f"--nproc {nproc}", f"this node has {gpus} GPU(s)", f"use --nproc {gpus} or fewer")
        return
    cores = _cores()
    if nproc > cores:
        raise ConfigError(
            f"--nproc {nproc}", f"this node has {cores} CPU core(s)", f"use --nproc {cores} or fewer (one per core)"
        )


def check_config(cfg: TrainConfig, world: int) -> None:
    """Training settings that data-parallel training over ``world`` processes cannot honour.

    Raises:
        ConfigError: ``batch_size`` not divisible by the number of processes (every rank takes
            the same share of a global batch), or gradual unfreezing (DDP fixes the trained
            parameters when it wraps the model).
    """
    if world == 1:
        return
    check_batch(cfg.batch_size, world, "train.batch_size")
    if cfg.unfreeze_every:
        raise ConfigError(
            f"train.unfreeze_every={cfg.unfreeze_every}", "gradual unfreezing is not supported with DDP",
            "set train.unfreeze_every=0 or train in one process",
        )


def check_batch(batch_size: int, world: int, key: str) -> None:
    """A clear error when a global batch of ``batch_size`` does not split evenly over ``world`` processes.

    Raises:
        ConfigError: naming ``key`` and the nearest batch sizes that split.
    """
    if batch_size % world:
        low = batch_size - batch_size % world
        raise ConfigError(
            f"{key}={batch_size}", f"does not split evenly over {world} processes",
            f"use a multiple of {world}, e.g. {max(low, world)} or {low + world}",
        )


def threads_per_process(num_threads: int) -> int:
    """``train.num_threads`` for one process: ``0`` (every core) becomes this process's share of the node."""
    if num_threads or not under_torchrun():
        return num_threads
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, _cores() // local_world)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when the world is larger than 1, else ``model`` itself.

    Batch-norm layers normalise with the statistics of the global batch: on CUDA they become
    ``SyncBatchNorm``; on CPU (gloo, which PyTorch's ``SyncBatchNorm`` does not run on)
    :func:`~medsight.runtime.sync_norm.sync_batch_norm` changes them in place, over a process group
    of their own. Checkpoints and best weights are taken from ``model``, never from the wrapper.
    """
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index or local_rank()])
    from medsight.runtime.sync_norm import sync_batch_norm

    sync_batch_norm(model)
    return DistributedDataParallel(model)


def shard(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous slice of a global batch (the whole batch at world size 1)."""
    world = world_size()
    if world == 1:
        return images, labels
    index = rank()
    return torch.tensor_split(images, world)[index], torch.tensor_split(labels, world)[index]


def mean_over_ranks(total: torch.Tensor, count: int) -> float:
    """``sum(total) / sum(count)`` over all ranks: the one-process mean of a sharded sum."""
    import torch.distributed as dist

    if world_size() == 1:
        return float(total) / count
    both = torch.stack([total.detach().double().reshape(()), torch.tensor(float(count), dtype=torch.float64,
                                                                          device=total.device)])
    dist.all_reduce(both)
    return float(both[0] / both[1])


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself at world size 1)."""
    import torch.distributed as dist

    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class NullLog:
    """Stands in for :class:`~medsight.training.callbacks.RunLog` on the ranks that write nothing."""

    def write(self, history: list[dict[str, float]]) -> None:
        """Nothing: rank 0 writes metrics.csv and TensorBoard."""

    def write_csv(self, history: list[dict[str, float]]) -> None:
        """Nothing: rank 0 writes metrics.csv."""

    def note(self, text: str) -> None:
        """Nothing: rank 0 writes the notes."""

    def close(self) -> None:
        """Nothing to close."""


def _cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1
