"""Timing shared by the benchmark scripts: the median wall time of a call, synchronised with the device."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["median_seconds", "sync"]


def sync(device) -> None:  # noqa: ANN001 (a torch.device; torch is imported only by the caller)
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def median_seconds(device, fn: Callable[[], object], *, warmup: int, reps: int) -> float:  # noqa: ANN001
    """Median seconds of `fn()` over `reps` calls after `warmup` untimed ones, each timed between two `sync`s."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
