"""The layers that see a data-parallel batch whole (`frontalab.training.distributed` says why they must).

In a trial on W workers each worker holds B/W rows of every batch. Two things in the library look across rows:
BatchNorm's statistics and the identity-relation term's pairs. Both see the whole batch through the collectives
here, which pass gradients back to each worker's rows. Outside data-parallel training (no process group, or one
worker) they are the plain computations.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(this worker's rank, the number of workers); (0, 1) outside data-parallel training."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def parallel() -> bool:
    return world()[1] > 1


class _RowsOfAllWorkers(torch.autograd.Function):
    """Every worker's rows (equal counts) in rank order; each worker's rows get the gradient of every worker's loss."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        rank, workers = world()
        parts = [torch.empty_like(rows) for _ in range(workers)]
        dist.all_gather(parts, rows.contiguous())
        ctx.span = (rank * rows.shape[0], (rank + 1) * rows.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad[ctx.span[0]:ctx.span[1]]


def whole_batch(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` of every data-parallel worker in rank order (the one-worker batch), differentiable; ``rows``
    itself outside data-parallel training."""
    return _RowsOfAllWorkers.apply(rows) if parallel() else rows


class SyncedBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over the whole data-parallel batch: its mean and variance from every worker's rows, with
    gradients through both. torch's SyncBatchNorm runs on GPUs only; this one runs on gloo too. Same parameters
    and buffers as BatchNorm2d, so checkpoints do not know how many workers wrote them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and parallel()):
            return super().forward(x)
        # Each worker's mean and sum of squared deviations, gathered in one collective (one more in the backward)
        # and combined as in the parallel variance algorithm: stable, and exact for the workers' equal shares.
        dims, workers = (0, 2, 3), world()[1]
        n = x.shape[0] * x.shape[2] * x.shape[3]
        local_mean = x.mean(dims)
        local_m2 = (x - local_mean.view(1, -1, 1, 1)).pow(2).sum(dims)
        stats = whole_batch(torch.stack([local_mean, local_m2]))  # (2 * workers, C): mean, m2 of each worker
        means, m2s = stats[0::2], stats[1::2]
        mean = means.mean(0)
        var = (m2s.sum(0) + n * (means - mean).pow(2).sum(0)) / (n * workers)  # biased, as BatchNorm2d's
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n * workers) / (n * workers - 1), alpha=m)
        y = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def synced_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with each BatchNorm2d (the class itself, not a subclass such as a frozen affine) turned into a
    `SyncedBatchNorm` in place: its parameters and buffers are kept, so the optimiser and checkpoints see the
    same tensors."""
    for child in module.modules():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = SyncedBatchNorm
    return module
