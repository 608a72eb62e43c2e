"""Several processes through ``torchrun``: one per GPU with NCCL, or several CPU processes with gloo.

Without torchrun (``WORLD_SIZE`` unset or 1) everything here is a no-op: rank 0 of a world of 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

__all__ = ["all_reduce_mean", "barrier", "init_distributed", "is_main", "resolve_device", "world"]


def init_distributed() -> None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): NCCL on CUDA, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return
    if torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (the process that writes shared files and prints)."""
    return world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op in a world of 1)."""
    if world()[1] > 1:
        torch.distributed.barrier()


def resolve_device(choice: str | None) -> torch.device:
    """The device to run on: `choice` if given (a bare ``cuda`` under torchrun means this rank's GPU), else this
    rank's GPU under torchrun (``LOCAL_RANK``), else ``cuda`` if available, else ``cpu``.

    Raises:
        ValueError: `choice` is not a device name, or names CUDA on a machine without it.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = world()[1] > 1
    if choice:
        try:
            device = torch.device(choice)
        except RuntimeError:
            raise ValueError(f"--device {choice!r} is not a torch device (e.g. cpu, cuda, cuda:1).") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"--device {choice}: CUDA is not available on this machine; use --device cpu.")
            if device.index is None:
                device = torch.device("cuda", local if distributed else torch.cuda.current_device())
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local if distributed else torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: Sequence[float], device: torch.device | str) -> list[float]:
    """The mean of `values` over all ranks (float64; each rank passes the same number of values)."""
    if world()[1] == 1:
        return [float(v) for v in values]
    shared = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(shared)
    return (shared / world()[1]).tolist()
