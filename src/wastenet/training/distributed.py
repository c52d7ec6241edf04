"""Data-parallel plumbing for ``torchrun --nproc_per_node=N -m wastenet train ...``.

Everything here is a no-op in a single process (no ``WORLD_SIZE`` in the environment, or a
world of one): no process group is created, ``rank() == 0``, ``world_size() == 1``,
``is_main()`` is true, reductions return their input and ``wrap`` returns the model itself,
so the training loop calls these helpers unconditionally::

    device = distributed.setup(resolve_device("auto"))   # NCCL + cuda:LOCAL_RANK, or gloo on CPU
    net = distributed.wrap(model, device)                # DistributedDataParallel (one per stage)
    for idx, n_global in distributed.local_batches(perm, batch_size):   # this rank's share
        ...
    loss_sum, correct, seen = distributed.all_reduce_sums([loss_sum, correct, seen])
    logits = distributed.all_gather_tensor(local_logits)  # every rank's rows, in rank order
    if distributed.is_main(): write_files()
    distributed.release(net); distributed.teardown()

Contracts the loop relies on (see docs/distributed.md):

- Every rank draws the *same* permutation of the training set (seeded by seed and epoch).
  ``local_batches`` cuts it into global batches of ``--batch-size`` exactly as a single
  process would, and gives rank r the r-th near-equal slice of each (``batch_size //
  world_size`` images, one more on the first ranks when it does not divide). The union of
  a step's slices is the single-process batch, so the global batch and the learning rates
  keep their meaning. ``loss_weight`` makes the DDP gradient average the exact mean over
  the global batch even when slices differ in size.
- A global batch is skipped on *every* rank when any rank would get fewer than two images
  (BatchNorm cannot train on one); the decision depends only on the shared permutation, so
  ranks never disagree on the number of backward passes (a disagreement would hang DDP).
- Only rank 0 writes files; the others meet it at ``barrier()``.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

# How long a collective (a barrier while rank 0 writes the final report, say) may wait.
TIMEOUT_ENV = "WASTENET_DIST_TIMEOUT_MIN"
_owned = False  # the process group was created by setup() (and is torn down by teardown())


# ---------------------------------------------------------------- who am I
def requested() -> bool:
    """True when launched by torchrun (or srun + env) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


# ---------------------------------------------------------------- init and teardown
def setup(device: torch.device) -> torch.device:
    """Join the process group when launched with WORLD_SIZE > 1; returns this rank's device.

    The backend follows the device: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``),
    gloo on CPU. In a single process nothing happens and ``device`` comes back unchanged.
    """
    global _owned
    if not requested():
        return device
    from wastenet.errors import ConfigError

    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if device.type == "cuda":
        index = local_rank()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {index} but only {torch.cuda.device_count()} CUDA device(s) visible; "
                              "use --nproc_per_node <= the GPU count")
        device = torch.device("cuda", index)  # one GPU per process
        torch.cuda.set_device(device)
    if is_distributed():  # a caller already set the group up: use it, leave it to them
        return device
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, "30")))
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
    if backend == "nccl":
        kwargs["device_id"] = device  # binds the communicator to this rank's GPU eagerly
    dist.init_process_group(**kwargs)
    _owned = True
    return device


def teardown() -> None:
    """Leave the process group that ``setup`` created (not one a caller made)."""
    global _owned
    if _owned and is_distributed():
        dist.destroy_process_group()
    _owned = False


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (a download, say); the others run it after it is done."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU for gloo."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------- reductions
def all_reduce_sums(values: Sequence[float]) -> list[float]:
    """Element-wise sums over ranks (float64), e.g. ``[loss_sum, correct, seen]``."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0, in rank order; lengths may differ.

    Each rank pads its tensor to the longest length (collectives need equal shapes), the
    padding is cut off again after the gather. A rank with no rows may pass ``torch.zeros(0)``;
    the row shape and dtype are taken from a rank that has rows. The result lives on ``t``'s
    device.
    """
    if not is_distributed():
        return t
    metas: list[Any] = [None] * world_size()
    dist.all_gather_object(metas, (tuple(t.shape), str(t.dtype).removeprefix("torch.")))
    lengths = [shape[0] if len(shape) else 0 for shape, _ in metas]
    full = next(((shape, dtype) for shape, dtype in metas if shape and shape[0] > 0), None)
    if full is None:
        return t
    row_shape, dtype = tuple(full[0][1:]), getattr(torch, full[1])
    dev = _comm_device()
    padded = torch.zeros((max(lengths), *row_shape), dtype=dtype, device=dev)
    if lengths[rank()]:
        padded[: lengths[rank()]] = t.to(dev, dtype)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, lengths)]).to(t.device)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_module(module: nn.Module, buffers_only: bool = False) -> None:
    """Overwrite every rank's parameters (and buffers) with rank 0's, in place."""
    if not is_distributed():
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    dev = _comm_device()
    for t in tensors:
        if t.device == dev and t.is_contiguous():
            dist.broadcast(t.data, src=0)
        else:  # another device, or channels-last weights: through a dense copy
            tmp = t.data.to(dev).contiguous()
            dist.broadcast(tmp, src=0)
            t.data.copy_(tmp)


# ---------------------------------------------------------------- sharding
def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> slice:
    """This rank's contiguous, near-equal share of ``range(n)``; concatenating the shards in
    rank order gives back ``range(n)`` (so gathered results keep the original order).
    ``rank_``/``world`` override the process group's (for tests)."""
    w = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def local_batches(perm: torch.Tensor, batch_size: int, min_per_rank: int = 2, rank_: int | None = None,
                  world: int | None = None) -> list[tuple[torch.Tensor, int]]:
    """``(this rank's indices, global batch size)`` for each global batch of ``perm``.

    ``perm`` must be the same on every rank. Global batch ``k`` is ``perm[k*B:(k+1)*B]``, as
    in a single process; rank r gets its r-th near-equal slice. A global batch where any rank
    would get fewer than ``min_per_rank`` images is skipped by every rank alike.
    """
    w = world_size() if world is None else world
    out = []
    for i in range(0, len(perm), batch_size):
        chunk = perm[i : i + batch_size]
        if len(chunk) // w < min_per_rank:  # the smallest slice
            continue
        out.append((chunk[shard_range(len(chunk), rank_, w)], len(chunk)))
    return out


def loss_weight(n_local: int, n_global: int) -> float:
    """Factor on this rank's mean loss so that DDP's gradient *average* over ranks equals the
    gradient of the mean loss over the whole global batch (1.0 when the slices are equal)."""
    return n_local * world_size() / n_global if is_distributed() else 1.0


def reseed_per_rank(seed: int) -> None:
    """Give each rank its own augmentation/dropout stream after the shared permutation was
    drawn. Does nothing in a single process, so single-process runs draw exactly as before."""
    if is_distributed():
        torch.manual_seed(seed * 1_000_003 + 7919 * rank())


# ---------------------------------------------------------------- the model wrapper
def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """A fresh DistributedDataParallel around ``model`` (the model itself in a single process).

    Call it *after* ``requires_grad`` is set for the stage, and build a new wrapper for every
    stage (``release`` the old one first): DDP decides at construction which parameters it
    all-reduces and registers its gradient hooks only on those that require grad then, so a
    wrapper built before a layer group is unfrozen would never synchronise that group's
    gradients (the ranks would silently drift apart), and one built before a group is frozen
    still expects that group's gradients and fails at the next step ("Expected to have
    finished reduction in the prior iteration"). The alternative, keeping every parameter
    trainable at learning rate 0, costs the full backward pass in every stage. Construction
    also broadcasts rank 0's weights and buffers, so every stage starts in sync.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # every trainable parameter gets a gradient in every step: no unused-parameter search
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None, find_unused_parameters=False)


def release(net: nn.Module) -> None:
    """Detach a stage's DDP wrapper from the parameters: its gradient hooks would otherwise
    live on until the wrapper is garbage-collected and keep all-reducing in the next stage's
    backward passes (needless traffic). The caller drops its own reference afterwards."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(net, DDP):
        remove = getattr(net, "_remove_autograd_hooks", None)
        if remove is not None:
            remove()
        del net
        gc.collect()
