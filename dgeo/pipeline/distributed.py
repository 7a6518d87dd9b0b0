"""Sharding a job over the processes of a ``torchrun`` launch (``torch.distributed``).

``torchrun --nproc-per-node N script.py`` starts ``N`` copies of a script with ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environments.
:func:`init_distributed` reads them and joins the process group (only when ``WORLD_SIZE > 1``;
a plain ``python script.py`` gets a trivial one-process context and never touches
``torch.distributed``). Every rank then takes its deterministic share of the work with
:func:`shard` (round-robin, so ranks get near-equal counts whatever the order) and meets the
others at :func:`barrier`; the group is left with :func:`finalize`.

The collectives used here only synchronise and exchange small Python objects, so ``gloo`` (CPU)
serves every job; ``nccl`` is the default only when the job runs on CUDA devices.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from dgeo.errors import DgeoError, InputError

__all__ = [
    "DistributedContext",
    "barrier",
    "finalize",
    "gather_objects",
    "init_distributed",
    "shard",
]

T = TypeVar("T")
_TORCHRUN = "launch with `torchrun --nproc-per-node N ...`, which sets it"


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly one-process) job.

    Attributes:
        rank: this process, ``0 <= rank < world_size``.
        world_size: number of processes.
        local_rank: this process on its machine (selects its CUDA device).
        backend: the ``torch.distributed`` backend, ``None`` for one process.
        owns_group: :func:`init_distributed` created the process group, so :func:`finalize`
            destroys it (a group created by the caller is left alone).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that merges results and prints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def _env_int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    value = env.get(key)
    if value is None:
        if default is None:
            raise InputError(f"environment variable {key} is not set; {_TORCHRUN}.")
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {key}={value!r} is not an integer.") from None


def init_distributed(
    backend: str | None = None,
    device: str | torch.device | None = None,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> DistributedContext:
    """Join the process group of a ``torchrun`` launch, or return a one-process context.

    Args:
        backend: ``"gloo"``, ``"nccl"``, ...; by default ``nccl`` when the job uses CUDA
            (``device`` is a CUDA device, or ``device`` is ``None`` and CUDA is available), else
            ``gloo``.
        device: the device the job computes on; with ``nccl`` each rank uses
            ``cuda:LOCAL_RANK``.
        timeout_s: timeout of collectives (torch's default, 30 minutes, if ``None``).
        env: the environment to read (``os.environ`` by default).
    Returns:
        :class:`DistributedContext`. If a process group already exists it is reused (and left
        alone by :func:`finalize`).
    Raises:
        InputError: malformed or missing torchrun variables (``RANK``, ``MASTER_ADDR``,
            ``MASTER_PORT`` when ``WORLD_SIZE > 1``).
        DgeoError: ``torch.distributed`` is not available in this build of torch.
    """
    env = os.environ if env is None else env
    world_size = _env_int(env, "WORLD_SIZE", 1)
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(
            dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), False
        )
    if world_size <= 1:
        return DistributedContext(local_rank=local_rank)
    if not dist.is_available():
        raise DgeoError(
            f"WORLD_SIZE={world_size} but this build of torch has no torch.distributed; run "
            "one process or install a torch with distributed support."
        )
    rank = _env_int(env, "RANK")
    if not 0 <= rank < world_size:
        raise InputError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size}).")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in env:
            raise InputError(f"environment variable {key} is not set; {_TORCHRUN}.")
    uses_cuda = (
        torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    )
    backend = backend or ("nccl" if uses_cuda else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    kwargs: dict[str, Any] = {}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world_size, **kwargs
    )
    return DistributedContext(rank, world_size, local_rank, backend, True)


def shard(items: Iterable[T], ctx: DistributedContext | None) -> list[T]:
    """This rank's share: ``items[rank::world_size]`` (deterministic, near-equal counts)."""
    items = list(items)
    return items if ctx is None else items[ctx.rank :: ctx.world_size]


def barrier(ctx: DistributedContext | None) -> None:
    """Wait until every rank got here (nothing to do for one process)."""
    if ctx is None or not ctx.is_distributed:
        return
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.local_rank])
    else:
        dist.barrier()


def gather_objects(obj: T, ctx: DistributedContext | None) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if ctx is None or not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def finalize(ctx: DistributedContext | None) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if ctx is not None and ctx.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
