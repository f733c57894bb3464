"""This process's place in a (possibly single-process) ``torchrun`` training job."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist

from neuralcodes.errors import NeuralCodesError
from neuralcodes.runtime import resolve_device


@dataclass
class Dist:
    """Rank and world size, and the few collectives training needs (no-ops for one process)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False
    comm_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: a plain single process, no DDP

    @classmethod
    def from_env(cls, device: torch.device) -> Dist:
        """Join the process group that ``torchrun`` describes in the environment, if any (also
        a group of one: ``torchrun --nproc_per_node 1`` trains with DDP on one device)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
            return cls()
        if not torch_dist.is_available():
            raise NeuralCodesError("this torch build has no torch.distributed support")
        owns = not torch_dist.is_initialized()
        if owns:
            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(torch_dist.get_rank(), torch_dist.get_world_size(), owns,
                   device if device.type == "cuda" else torch.device("cpu"),
                   torch_dist.get_backend())

    @property
    def main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share ``[lo, hi)`` of ``n`` items (as ``np.array_split``)."""
        size, extra = divmod(n, self.world)
        lo = self.rank * size + min(self.rank, extra)
        return lo, lo + size + (self.rank < extra)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (returned on its original device)."""
        if self.backend is None:
            return t
        c = t.to(self.comm_device)
        torch_dist.all_reduce(c)
        return c.to(t.device)

    def any(self, *flags: bool) -> list[bool]:
        """For each flag, whether it is set on any rank."""
        t = torch.tensor([float(f) for f in flags])
        return [bool(v) for v in self.sum(t)]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if self.backend is None:
            return [obj]
        out: list[Any] = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.backend is not None:
            torch_dist.barrier()

    def close(self) -> None:
        """Leave the process group if this object created it."""
        if self.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def device_for(name: str) -> torch.device:
    """The device to train on; under torchrun with CUDA, this rank's GPU."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
