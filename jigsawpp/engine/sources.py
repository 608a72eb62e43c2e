"""Where training batches come from, with state that resumes exactly.

A `BatchSource` hands out batches one at a time and can say, at any moment, the state *before* the next batch
(``state_dict``): a checkpoint stores it, and ``load_state_dict`` makes the source hand out the same batches again.

`PrefetchSource` overlaps drawing and loading the next batches with training. A source that splits a batch into a
cheap random ``plan()`` and an expensive ``load(plan)`` (Fast R-CNN's ROI sampler and image loading) gets its plans
drawn in order on the training thread and loaded by `workers` threads; any other source is drawn by one background
thread, in order.

`DatasetSource` draws shuffled mini-batches from a map-style dataset through a ``DataLoader`` (worker processes),
as Caffe's ImageData layer with ``shuffle: true`` does (BVLC ``src/caffe/layers/image_data_layer.cpp``): one
permutation per pass over the data, batches running on into the next pass. Under torchrun each rank takes its own
slice of every global batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from jigsawpp.engine.distributed import world

__all__ = ["Batch", "BatchSource", "DatasetSource", "LabeledBatch", "PlannedSource", "PrefetchSource"]


@runtime_checkable
class Batch(Protocol):
    def to(self, device: torch.device | str) -> Batch: ...


@runtime_checkable
class BatchSource(Protocol):
    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class PlannedSource(BatchSource, Protocol):
    """A source whose ``next_batch()`` is ``load(plan())``: `plan` consumes all the randomness (called in order),
    `load` does the slow work and may run on other threads."""

    def plan(self) -> Any: ...

    def load(self, plan: Any) -> Batch: ...


class PrefetchSource:
    """Wraps a `BatchSource` so that the next ``workers`` batches are prepared in background threads.

    ``state_dict()`` is the wrapped source's state before the next batch this wrapper will return, whatever has
    been prefetched, so checkpoints stay exact. Call `close` when done (`train_loop` does).
    """

    def __init__(self, source: BatchSource, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"PrefetchSource: workers must be >= 1, got {workers}.")
        self.source = source
        self.workers = workers
        self.planned = isinstance(source, PlannedSource)
        self._pool = ThreadPoolExecutor(max_workers=workers if self.planned else 1, thread_name_prefix="prefetch")
        self._queue: deque[tuple[dict | None, Future]] = deque()

    def _draw(self) -> tuple[dict, Batch]:
        return self.source.state_dict(), self.source.next_batch()

    def _fill(self) -> None:
        while len(self._queue) < self.workers:
            if self.planned:
                state = self.source.state_dict()
                plan = self.source.plan()  # type: ignore[attr-defined]
                self._queue.append((state, self._pool.submit(self.source.load, plan)))  # type: ignore[attr-defined]
            else:
                self._queue.append((None, self._pool.submit(self._draw)))

    def next_batch(self) -> Batch:
        self._fill()
        _, future = self._queue.popleft()
        result = future.result()
        self._fill()  # start on the following batches while this one is used
        return result if self.planned else result[1]

    def state_dict(self) -> dict:
        if not self._queue:
            return self.source.state_dict()
        state, future = self._queue[0]
        return state if self.planned else future.result()[0]

    def _drain(self) -> None:
        while self._queue:
            _, future = self._queue.popleft()
            future.cancel()
            try:
                future.result()
            except Exception:  # noqa: S110 - a discarded prefetch may fail; its batch is never used
                pass

    def load_state_dict(self, state: dict) -> None:
        self._drain()
        self.source.load_state_dict(state)

    def close(self) -> None:
        self._drain()
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, eq=False)
class LabeledBatch:
    """images (B, C, H, W) float32, labels (B,) int64, indices (B,) int64 positions in the dataset."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def to(self, device: torch.device | str) -> LabeledBatch:
        return LabeledBatch(*(t.to(device, non_blocking=True) for t in (self.images, self.labels, self.indices)))


class _EpochView(torch.utils.data.Dataset):
    """``view[(epoch, i)] = dataset[i]`` with ``dataset.set_epoch(epoch)`` first (also inside worker processes)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


class DatasetSource:
    """Shuffled mini-batches of `batch_size` items per rank from a dataset returning (tensor, label, index).

    The stream is the concatenation of one permutation per pass (``numpy.random.default_rng((seed, pass))``, or the
    identity without `shuffle`); global batch k is positions ``[k B W, (k + 1) B W)`` of it (B = `batch_size`,
    W = world size) and rank r takes its r-th slice of B. The state is the stream position of the next global batch.
    Items are loaded by `workers` DataLoader processes (0: in this process), which already prefetch: with
    workers > 0 do not wrap it in `PrefetchSource` (its thread would fork the workers).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, *, batch_size: int, seed: int, shuffle: bool = True,
                 workers: int = 0, pin_memory: bool = False) -> None:
        self.dataset = dataset
        self.size = len(dataset)  # type: ignore[arg-type]
        self.rank, self.world_size = world()
        if batch_size < 1 or self.size < batch_size * self.world_size:
            raise ValueError(f"the training data has {self.size} items, fewer than one batch of {batch_size} x "
                             f"{self.world_size} process(es); give more data or a smaller batch (--batch-size or "
                             "--set batch_size=N, recorded as a deviation).")
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.workers = workers
        self.pin_memory = pin_memory
        self.position = 0  # stream position of the next global batch
        self._perms: dict[int, np.ndarray] = {}
        self._iterator: Iterator | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng((self.seed, epoch)).permutation(self.size)
                           if self.shuffle else np.arange(self.size)}
        return self._perms[epoch]

    def keys(self, position: int) -> list[tuple[int, int]]:
        """This rank's (pass, dataset index) keys of the global batch starting at stream `position`."""
        first = position + self.rank * self.batch_size
        out = []
        for p in range(first, first + self.batch_size):
            epoch, offset = divmod(p, self.size)
            out.append((epoch, int(self._perm(epoch)[offset])))
        return out

    def _schedule(self, position: int) -> Iterator[list[tuple[int, int]]]:
        while True:
            yield self.keys(position)
            position += self.batch_size * self.world_size

    def next_batch(self) -> LabeledBatch:
        if self._iterator is None:
            # a private generator: creating a DataLoader iterator draws a seed, which must not come from the global
            # torch generator (dropout's), or a resumed run would draw one more number than the original
            loader = torch.utils.data.DataLoader(_EpochView(self.dataset), batch_sampler=self._schedule(self.position),
                                                 num_workers=self.workers, pin_memory=self.pin_memory,
                                                 generator=torch.Generator().manual_seed(self.seed))
            self._iterator = iter(loader)
        images, labels, indices = next(self._iterator)
        self.position += self.batch_size * self.world_size
        return LabeledBatch(images, labels.long(), indices.long())

    @property
    def epoch(self) -> float:
        """Passes over the data completed so far (fractional)."""
        return self.position / self.size

    def state_dict(self) -> dict:
        return {"position": self.position, "size": self.size, "seed": self.seed, "shuffle": self.shuffle,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        changed = [k for k in ("size", "seed", "shuffle", "batch_size") if state.get(k) != mine[k]]
        if changed:
            raise ValueError(f"data-source state is for another dataset or sampling ({', '.join(changed)} changed: "
                             f"{ {k: state.get(k) for k in changed} } -> { {k: mine[k] for k in changed} }).")
        self.position = int(state["position"])
        self._iterator = None
