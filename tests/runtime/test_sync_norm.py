"""Batch norm synchronised over CPU (gloo) DDP processes: 2 processes, each with half the batch,
compute what one process computes on the whole batch (outputs, gradients, running statistics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from medsight.runtime.sync_norm import GlooSyncBatchNorm, sync_batch_norm

pytestmark = pytest.mark.xdist_group("ddp")  # one process group at a time, like tests/runtime/test_ddp.py

TOL = 1e-5


def _net(dims: int) -> nn.Module:
    torch.manual_seed(0)
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    return nn.Sequential(conv(2, 4, 3, padding=1), norm(4), nn.ReLU(), conv(4, 3, 1), norm(3, momentum=None))


def _batch(dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch of 8 with a mean and scale far from 0 and 1 (so the statistics matter)."""
    generator = torch.Generator().manual_seed(1)
    shape = (8, 2, 6, 6) if dims == 2 else (8, 2, 4, 4, 4)
    x = 3.0 + 2.0 * torch.randn(shape, generator=generator)
    return x, torch.randn((8, 3, *shape[2:]), generator=generator)


def _step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
    """Two training steps' forward + backward (gradients summed), then the running statistics and an eval output."""
    x = x.clone().requires_grad_(True)
    for _ in range(2):
        out = net(x)
        nn.functional.mse_loss(out, y).backward()
    module = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    result = {"out": out.detach().numpy(), "x_grad": x.grad.numpy()}
    result.update({f"grad.{k}": p.grad.numpy() for k, p in module.named_parameters()})
    result.update({f"buffer.{k}": b.numpy().astype(np.float64) for k, b in module.named_buffers()})
    module.eval()
    result["eval_out"] = module(x.detach()).detach().numpy()
    return result


def _worker(rank: int, store: str, out: str, dims: int, synced: bool) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        net = _net(dims)
        if synced:
            assert sync_batch_norm(net) == 2
        ddp = nn.parallel.DistributedDataParallel(net)
        x, y = _batch(dims)
        rows = slice(4 * rank, 4 * rank + 4)
        result = _step(ddp, x[rows], y[rows])
        np.savez(Path(out) / f"rank{rank}.npz", **result)
    finally:
        torch.distributed.destroy_process_group()


def _two_processes(tmp_path: Path, dims: int, synced: bool) -> list[dict[str, np.ndarray]]:
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path), dims, synced), nprocs=2, join=True)
    return [dict(np.load(tmp_path / f"rank{rank}.npz")) for rank in (0, 1)]


@pytest.mark.parametrize("dims", [2, 3])
def test_two_processes_normalise_like_one_process_on_the_whole_batch(tmp_path: Path, dims: int) -> None:
    x, y = _batch(dims)
    one = _step(_net(dims), x, y)
    ranks = _two_processes(tmp_path, dims, synced=True)
    np.testing.assert_allclose(np.concatenate([r["out"] for r in ranks]), one["out"], atol=TOL)
    np.testing.assert_allclose(np.concatenate([r["eval_out"] for r in ranks]), one["eval_out"], atol=TOL)
    # each rank's loss is the mean over its half: its input gradient is twice its rows' share
    np.testing.assert_allclose(np.concatenate([r["x_grad"] for r in ranks]) / 2, one["x_grad"], atol=TOL)
    for key in one:
        if key.startswith(("grad.", "buffer.")):
            for r in ranks:  # DDP averaged the gradients; the statistics are the global batch's
                np.testing.assert_allclose(r[key], one[key], atol=TOL, err_msg=key)
    assert one["buffer.4.num_batches_tracked"] == 2 and np.abs(one["buffer.1.running_mean"]).max() > 0.05


def test_without_synchronisation_the_processes_differ(tmp_path: Path) -> None:
    """The check above has teeth: plain batch norm under DDP normalises each half on its own."""
    x, y = _batch(2)
    one = _step(_net(2), x, y)
    ranks = _two_processes(tmp_path, 2, synced=False)
    assert np.abs(np.concatenate([r["out"] for r in ranks]) - one["out"]).max() > 1e-2
    assert np.abs(ranks[0]["grad.0.weight"] - one["grad.0.weight"]).max() > 1e-3


def test_conversion_keeps_parameters_buffers_hooks_and_eval_behaviour() -> None:
    net = _net(2)
    net.eval()
    x, _ = _batch(2)
    before = net(x)
    keys = list(net.state_dict())
    frozen = net[1].register_forward_pre_hook(lambda module, args: None)
    assert sync_batch_norm(net, group="unused in eval mode") == 2
    assert isinstance(net[1], GlooSyncBatchNorm) and isinstance(net[4], GlooSyncBatchNorm)
    assert list(net.state_dict()) == keys
    assert frozen.id in net[1]._forward_pre_hooks
    torch.testing.assert_close(net(x), before)
    assert sync_batch_norm(nn.Sequential(nn.Conv2d(1, 1, 1))) == 0  # no batch norm: no group is made
