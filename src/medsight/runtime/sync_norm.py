"""Batch norm synchronised over the processes of a CPU (gloo) DDP run.

PyTorch's ``SyncBatchNorm`` runs on CUDA and XPU only. On CPU each DDP process would normalise its
own ``batch_size / world`` rows, so ``--nproc N`` would train a batch-norm network differently from
one process. :func:`sync_batch_norm` makes the model's batch-norm layers compute their training
statistics over the whole global batch instead: two differentiable all-reduces per layer (the sum,
then the centred sum of squares), whose backward all-reduces the gradients, so a step of N processes
equals the one-process step, and the running statistics move as one process's would.

Example:
    >>> sync_batch_norm(model)  # every process, in place; then wrap the model in DDP
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _GlobalSum(torch.autograd.Function):
    """The sum of a tensor over the processes of ``group``; its gradient is the sum of theirs."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(total, group=ctx.group)
        return total, None


class GlooSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch (the ranks of ``sync_group``).

    In eval mode, or with a group of one process, it is plain batch norm.
    """

    sync_group: object = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training or torch.distributed.get_world_size(self.sync_group) == 1:
            return super().forward(input)
        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        axes = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        rows = x.new_tensor([x.numel() / x.shape[1]])
        sums = _GlobalSum.apply(torch.cat([x.sum(axes), rows]), self.sync_group)
        count = sums[-1]
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = _GlobalSum.apply((centred * centred).sum(axes), self.sync_group) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean), factor)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def sync_batch_norm(model: nn.Module, group=None) -> int:
    """Turn every batch-norm layer of ``model`` into a :class:`GlooSyncBatchNorm`, in place.

    Each layer keeps its parameters, buffers and hooks (so a frozen layer stays frozen and
    checkpoints keep their keys); only its class changes. The layers share ``group``, by default a
    new gloo group of all the processes (so their all-reduces never interleave with DDP's own);
    every process must call this, with the same model. Returns how many layers changed.
    """
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))]
    if norms and group is None:
        group = torch.distributed.new_group(backend="gloo")
    for module in norms:
        module.__class__ = GlooSyncBatchNorm
        module.sync_group = group
    return len(norms)
