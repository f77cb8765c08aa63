"""Data-parallel scoring over processes started by ``torchrun`` or ``accelerate launch``.

Both launchers start one process per device and describe the job in the same
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), so one code path serves both, on one node or many:

* :func:`init_distributed` joins the process group those variables describe
  (NCCL with CUDA, else gloo) — or uses one the caller already set up;
* :func:`shard_bounds` gives each rank a contiguous, balanced slice of the items
  (contiguous keeps the responses of one prompt together, so prefix sharing still
  applies within a rank);
* :func:`gather_items` concatenates every rank's results in rank order, which is
  the original order, on every rank.

``Backbone.encode(..., distributed=True)`` (and so ``RewardModel.score`` /
``predict``) shards the texts, scores the local slice and gathers the features,
so every rank ends with the same result as one process would compute. The
``auq score`` command instead lets each rank write its slice to a part file and
merges the parts on rank 0 (:mod:`auq.scoring.stream`).
"""

from __future__ import annotations

import importlib
import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "default_device",
    "distributed_env",
    "gather_items",
    "init_distributed",
    "is_distributed",
    "shard_bounds",
]


def distributed_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` of this process (``(0, 1, 0)`` when not launched)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return rank, world, int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    """Whether this process is one of several (a process group is, or can be, joined)."""
    return distributed_env()[1] > 1


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group described by the launcher's environment, once.

    Parameters
    ----------
    backend : str, optional
        ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else gloo.

    Returns
    -------
    (rank, world_size)

    Raises
    ------
    RuntimeError
        When ``WORLD_SIZE`` > 1 but the rendezvous variables are missing.
    """
    rank, world, local_rank = distributed_env()
    if world == 1 or dist.is_initialized():
        return rank, world
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the processes with "
            "`torchrun --nproc-per-node N ...` or `accelerate launch ...`"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    # torch.distributed.nn binds ``group.WORLD`` into default arguments when first
    # imported (as transformers does while loading a model); imported after the group
    # exists, those references keep it alive past destroy_process_group, and its gloo
    # workers then free tensors during interpreter shutdown and abort the process.
    importlib.import_module("torch.distributed.nn")
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return rank, world


def default_device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", distributed_env()[2])
    return torch.device("cpu")


def shard_bounds(n_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)``: rank ``rank``'s contiguous slice of ``n_items`` (sizes differ by ≤ 1)."""
    base, extra = divmod(n_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def gather_items(local: Tensor, n_items: int) -> Tensor:
    """Every rank's slice of items concatenated in rank order, on every rank.

    Parameters
    ----------
    local : Tensor, shape (..., n_local, d)
        This rank's results for its :func:`shard_bounds` slice (items on axis −2).
    n_items : int
        Items over all ranks.

    Returns
    -------
    Tensor, shape (..., n_items, d), on ``local``'s device.
    """
    world = distributed_env()[1]
    if world == 1:
        return local
    sizes = [shard_bounds(n_items, r, world) for r in range(world)]
    longest = max(stop - start for start, stop in sizes)
    on_device = dist.get_backend() == "nccl"
    send = local if on_device else local.cpu()
    pad = longest - send.shape[-2]
    if pad:
        filler = send.new_zeros((*send.shape[:-2], pad, send.shape[-1]))
        send = torch.cat([send, filler], dim=-2)
    received = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(received, send.contiguous())
    parts = [r[..., : stop - start, :] for r, (start, stop) in zip(received, sizes, strict=True)]
    return torch.cat(parts, dim=-2).to(local.device)
