"""Multi-process helpers: process-group setup from ``torchrun``'s environment, the device of
each process, and a resumable :class:`EpochSampler`.

``torchrun --nproc_per_node=N -m graphop.cli.worker ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` then joins the process group with the ``nccl`` backend on CUDA
and ``gloo`` on CPU. Without those variables everything runs in one process and no process
group is created.

Data order: the sampler draws one permutation of the dataset per epoch from a generator
seeded with ``seed + epoch`` (``DistributedSampler``'s rule), so the order does not depend on
how many epochs ran before in this process: an interrupted run that resumes sees exactly the
batches an uninterrupted run would. Process r of W takes ``perm[r::W]``, so with a per-process
batch of B/W the union of the W process batches at step k is ``perm[kB:(k+1)B]``: the same
global batch as one process with batch B.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from graphop.errors import ConfigError

__all__ = ["DistInfo", "setup", "teardown", "resolve_device", "EpochSampler", "all_reduce_sum"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cuda`` under
    several processes becomes ``cuda:<local_rank>``."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available "
                              "(this torch build or machine has no GPU); use --device cpu")
        if name == "cuda":
            name = f"cuda:{local_rank}"
        dev = torch.device(name)
        torch.cuda.set_device(dev)
        return dev
    if name != "cpu":
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def setup(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return (DistInfo, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    info = DistInfo(rank, world, local)
    device = resolve_device(device_name, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return info, device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` that can skip the first ``skip`` indices of this process's share
    of an epoch (to resume in the middle of an epoch with the same order).

    Args:
        dataset: the dataset (only its length is used).
        num_replicas: number of processes (default 1).
        rank: this process's rank (default 0).
        seed: base seed; epoch e uses ``seed + e`` (default 0).
        shuffle: permute each epoch (default True).
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=False)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)
