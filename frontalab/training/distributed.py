"""What a data-parallel worker does that a lone trial does not, in one place.

A trial on W workers (``resources.workers``, run by `frontalab.training.workers`) trains as one worker would at
the same ``train.batch_size`` B: the batch size is global, each worker takes its B/W rows of every batch
(`frontalab.data.stream.ShardStream`), and

- BatchNorm layers normalise with the whole batch's statistics, and the identity-relation term pairs the whole
  batch's rows (`frontalab.models.parallel`);
- every update uses the mean of the workers' gradients, so the learning rates stay as they are;
- the losses logged (and checked for NaN) are the means over the workers: those of the whole batch.

This is DDP's arithmetic without its wrapper: DDP's reducer expects one forward of a module per backward
that gives all its parameters gradients, but the generator's phase runs D forward without D's gradients and
D's phase runs D twice. One flat all-reduce per update, after the backward, is what DDP would send.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from frontalab.models.parallel import parallel, world


def average_gradients(parameters) -> None:
    """Each parameter's gradient replaced by its mean over the workers, in one all-reduce. Every worker runs the
    same code on the same architecture, so the same parameters have gradients everywhere."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or not parallel():
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()[1]
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_workers(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scalar tensors, each replaced by its mean over the workers (one all-reduce; detached)."""
    if not values or not parallel():
        return {k: v.detach() for k, v in values.items()}
    stacked = torch.stack([v.detach().double().reshape(()) for v in values.values()])  # bf16 terms too
    dist.all_reduce(stacked)
    stacked /= world()[1]
    return dict(zip(values, stacked.unbind()))


def gather_objects(value):
    """``value`` from every worker, in rank order (a list of one outside data-parallel training)."""
    if not parallel():
        return [value]
    out = [None] * world()[1]
    dist.all_gather_object(out, value)
    return out


def weights_digest(*modules: torch.nn.Module | None) -> str:
    """A hash of the modules' parameters and buffers: equal on every worker while they train as one."""
    h = hashlib.sha256()
    for module in filter(None, modules):
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
