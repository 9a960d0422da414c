"""One global batch over several processes, computed as one process would compute it.

Each rank takes its contiguous share of every global batch (:func:`stbench.data.loader.shard_bounds`), so the
shares, concatenated in rank order, are the batch one process sees. Inside :func:`sharded_step`:

* :func:`gather_batch` returns the global batch of a per-item tensor (embeddings), gradients flowing back
  to each rank's share: a contrastive loss computed on it is the single-process loss of the global batch
  (as published image-expression and image-text contrastive training gather their embeddings under DDP);
* batch normalisation in training mode uses the statistics of the global batch (any layer that calls
  ``torch.nn.functional.batch_norm``: torch's and timm's), and its running statistics follow them;
* dropout (``torch.nn.functional.dropout``, so ``nn.Dropout``) draws the mask of the whole global batch from
  the random stream every rank shares and applies this rank's rows of it: with the same seed, the masks one
  process would draw.

Gradients: every collective here sums the gradients of all ranks in its backward pass, and DDP averages the
parameters' gradients over ranks; :func:`stbench.nn.trainer.fit` scales each rank's loss so that the update
equals the single-process update on the global batch. Outside a sharded step every function here is the
identity / the torch function.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data.loader import shard_bounds


@dataclass
class Step:
    """One rank's part of a global batch of ``items``: rows ``[start, stop)``; ``gathered`` is set when the
    loss gathered the global batch (the loss is then the same global value on every rank)."""

    items: int
    start: int
    stop: int
    rank: int
    size: int
    gathered: bool = False


_STEP: contextvars.ContextVar[Step | None] = contextvars.ContextVar("stbench_sharded_step", default=None)
_TORCH_BATCH_NORM, _TORCH_DROPOUT = F.batch_norm, F.dropout


@contextlib.contextmanager
def sharded_step(items: int, start: int, stop: int) -> Iterator[Step]:
    """Compute this rank's rows ``[start, stop)`` of a global batch of ``items`` (see the module doc)."""
    step = Step(items, start, stop, dist.get_rank(), dist.get_world_size())
    token = _STEP.set(step)
    F.batch_norm, F.dropout = _global_batch_norm, _shared_dropout
    try:
        yield step
    finally:
        F.batch_norm, F.dropout = _TORCH_BATCH_NORM, _TORCH_DROPOUT
        _STEP.reset(token)


def current_step() -> Step | None:
    return _STEP.get()


def global_batch_size(local: int) -> int:
    """The items in the global batch this rank's ``local`` items belong to (``local`` outside a sharded step)."""
    step = _STEP.get()
    return step.items if step is not None else local


class _AllSum(torch.autograd.Function):
    """Sum over ranks; the backward pass sums the gradients of every rank's use of the result."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _Gather(torch.autograd.Function):
    """This rank's rows -> the global batch (rows of all ranks in rank order); shares may differ by one row."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, items: int, rank: int, size: int) -> torch.Tensor:
        bounds = [shard_bounds(items, r, size) for r in range(size)]
        width = max(stop - start for start, stop in bounds)
        padded = x.new_zeros((width, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(parts, padded.contiguous())
        ctx.bounds, ctx.rank = bounds, rank
        return torch.cat([p[: stop - start] for p, (start, stop) in zip(parts, bounds)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start, stop = ctx.bounds[ctx.rank]
        return grad[start:stop], None, None, None


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch of a per-item tensor (first axis = this rank's items) inside a sharded step, with
    gradients; ``x`` itself otherwise. Marks the step's loss as global."""
    step = _STEP.get()
    if step is None:
        return x
    step.gathered = True
    return _Gather.apply(x, step.items, step.rank, step.size)


def _local_rows(step: Step | None, x: torch.Tensor) -> bool:
    return step is not None and x.dim() > 0 and x.shape[0] == step.stop - step.start


def _global_batch_norm(input: torch.Tensor, running_mean: Any, running_var: Any, weight: Any = None, bias: Any = None,
                       training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    step = _STEP.get()
    if not training or not _local_rows(step, input) or input.dim() < 2:
        return _TORCH_BATCH_NORM(input, running_mean, running_var, weight, bias, training, momentum, eps)
    # statistics in float64, as torch's CPU kernel accumulates them: a channel of almost constant values
    # (variance near 0) multiplies any rounding difference by up to 1 / sqrt(eps)
    x = input.double()
    dims = [0, *range(2, x.dim())]
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    count = step.items * (x[0, 0].numel())
    mean = _AllSum.apply(x.sum(dims)) / count
    centred = x - mean.view(shape)
    var = _AllSum.apply((centred * centred).sum(dims)) / count
    out = centred * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
            unbiased = var.detach() * count / max(count - 1, 1)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    return out.to(input.dtype)


def _shared_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    step = _STEP.get()
    if not training or p <= 0 or p >= 1 or not _local_rows(step, input):
        return _TORCH_DROPOUT(input, p, training, inplace)
    noise = torch.empty((step.items, *input.shape[1:]), dtype=input.dtype, device=input.device).bernoulli_(1 - p)
    noise = noise.div_(1 - p)[step.start:step.stop]
    return input.mul_(noise) if inplace else input * noise


class _LossModule(nn.Module):
    """The loss as a module's forward, so DDP sees every parameter the loss uses."""

    def __init__(self, module: nn.Module, loss_of: Callable[[Any, Any], torch.Tensor]) -> None:
        super().__init__()
        self.module, self._loss_of = module, loss_of

    def forward(self, inputs: Any, targets: Any) -> torch.Tensor:
        return self._loss_of(inputs, targets)


def data_parallel(module: nn.Module, loss_of: Callable[[Any, Any], torch.Tensor], device: str) -> Any:
    """``loss_of`` wrapped in DistributedDataParallel over ``module``'s parameters (gradients averaged over
    ranks in the backward pass; ``no_sync()`` for accumulation steps)."""
    from torch.nn.parallel import DistributedDataParallel

    import inspect

    ids = [torch.device(device).index or 0] if device.startswith("cuda") else None
    # buffers (batch-norm statistics of the global batch) stay equal on every rank without a broadcast
    quiet = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
             else "broadcast_buffers")
    return DistributedDataParallel(_LossModule(module, loss_of), device_ids=ids, **{quiet: False})


def share(n: int) -> tuple[int, int]:
    """This rank's share of ``n`` items."""
    return shard_bounds(n, dist.get_rank(), dist.get_world_size())
