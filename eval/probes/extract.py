"""Feature extraction into a `cache.CacheSplit`: one trunk forward per image view, written chunk by chunk.

The dataset returns ``(views, label, index)`` with `views` a (V, 3, H, W) float tensor (BGR minus mean) or a
(3, H, W) tensor (V = 1); its transform fixes which V views are stored (e.g. the centre crop, the 10 crops, or
V seeded random crops + mirrors for training). Batches never straddle chunks, so each chunk is written, flushed and
marked done as soon as its last batch is through; a killed run resumes at the first unmarked chunk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from eval.probes.cache import CacheSplit
from eval.probes.taps import ProbeTaps

__all__ = ["ExtractionReport", "extract_to_cache"]


@dataclass(frozen=True)
class ExtractionReport:
    """What one `extract_to_cache` call did on this rank."""

    split: str
    images: int           # images whose views went through the trunk in this call (0: fully reused)
    views: int            # views per image
    chunks_written: int
    reused: bool          # True when the split was complete before the call
    seconds: float


class _ChunkBatches(Sampler[list[int]]):
    """Index batches of at most `batch_size`, chunk by chunk, never crossing a chunk boundary."""

    def __init__(self, cache: CacheSplit, chunks: list[int], batch_size: int) -> None:
        self.batches = []
        for chunk in chunks:
            rows = list(cache.chunk_indices(chunk))
            self.batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def autocast_context(device: torch.device, amp: str):
    """torch.autocast for "bf16"/"fp16" (CUDA, or bf16 on CPU), a no-op context for "off"."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp {amp!r} is not 'off', 'bf16' or 'fp16'.")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def extract_to_cache(taps: ProbeTaps, dataset: Dataset, cache: CacheSplit, *, batch_size: int = 64,
                     workers: int = 0, device: torch.device | None = None, amp: str = "off", rank: int = 0,
                     world: int = 1, progress: bool = True) -> ExtractionReport:
    """Write the missing chunks of `cache` that rank `rank` of `world` owns; returns what was done.

    `dataset[i]` must return ``(views, label, index == i)``. Labels are stored beside the features. A split that is
    already complete costs no trunk forward.
    """
    start = time.perf_counter()
    if len(dataset) != cache.count:  # type: ignore[arg-type]
        raise ValueError(f"{cache.split_dir}: the dataset has {len(dataset)} images, the cache was "  # type: ignore
                         f"opened for {cache.count}.")
    chunks = cache.missing_chunks(rank=rank, world=world)
    if not chunks:
        return ExtractionReport(cache.split, 0, cache.views, 0, cache.complete, time.perf_counter() - start)
    device = device or torch.device("cpu")
    taps = taps.to(device).eval()
    sampler = _ChunkBatches(cache, chunks, batch_size)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    pending: dict[int, dict[str, np.ndarray]] = {}
    pending_labels: dict[int, np.ndarray] = {}
    filled: dict[int, int] = {}
    images = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(cache.chunk_indices(c)) for c in chunks), desc=f"features {cache.split}",
                   unit="img", leave=False)
    for views, labels, index in loader:
        if views.dim() == 4:
            views = views.unsqueeze(1)
        n, v = views.shape[:2]
        if v != cache.views:
            raise ValueError(f"the transform gives {v} views per image, the cache '{cache.split}' stores "
                             f"{cache.views}.")
        chunk = int(index[0]) // cache.chunk_size
        rows = cache.chunk_indices(chunk)
        if chunk not in pending:
            pending[chunk] = {t: np.empty((len(rows), v, *s), np.float16) for t, s in cache.shapes.items()}
            pending_labels[chunk] = np.empty(len(rows), np.int64)
            filled[chunk] = 0
        x = views.reshape(n * v, *views.shape[2:]).to(device, non_blocking=True)
        with torch.no_grad(), autocast_context(device, amp):
            out = taps(x)
        local = (index.numpy() - rows.start)
        for tap, value in out.items():
            pending[chunk][tap][local] = value.float().reshape(n, v, *value.shape[1:]).cpu().numpy()
        pending_labels[chunk][local] = labels.numpy()
        filled[chunk] += n
        images += n
        if bar is not None:
            bar.update(n)
        if filled[chunk] == len(rows):
            cache.write_chunk(chunk, pending.pop(chunk), pending_labels.pop(chunk))
    if bar is not None:
        bar.close()
    return ExtractionReport(cache.split, images, cache.views, len(chunks), False, time.perf_counter() - start)
