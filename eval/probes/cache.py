"""A feature cache: each tap's frozen features written once as float16 memmaps, so several probe settings (learning
rates, schedules, seeds) train from one extraction without running the trunk again.

Layout of a cache folder (one folder per model and preprocessing; several splits may live in it):

    manifest.json                 {"format": ..., "splits": {split: {"key": {...}, "complete": bool, ...}}}
    <split>/<tap>.npy             (count, views, C, s, s) float16, numpy .npy (header + raw data, memory-mapped)
    <split>/labels.npy            (count,) int64
    <split>/done/<chunk>          empty marker files: chunk k (images k*chunk_size ...) is written and flushed

A split's `key` holds everything its features depend on: the model's sha256, the taps (blob, resize/pool spec,
shape), the transform (resize, crop, mirror, mean, views), the sample list's fingerprint and count. Opening a split
whose stored key differs from the requested one raises `StaleCacheError` naming the differing fields: a cache is never
reused silently for another model or preprocessing.

Resumable: markers are created only after the chunk's rows are flushed, so a killed extraction restarts at the
first chunk without a marker. Chunks are independent of the world size: under torchrun rank r writes the missing
chunks k with k % world == r into the same files (disjoint rows). Nothing is pickled (`allow_pickle=False`).

This module knows nothing about probes: any fixed-size per-image features (e.g. the clustering features of the
knowledge-transfer step) fit the same store.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jigsawpp.engine.stamp import identity_mismatch
from jigsawpp.io import write_json_atomic

__all__ = ["FORMAT", "CacheSplit", "StaleCacheError", "open_cache_split"]

FORMAT = "jigsawpp-feature-cache/1"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class StaleCacheError(ValueError):
    """The cache folder holds features made with another model, transform, tap set or sample list."""


def _normalise(value: Any) -> Any:
    """JSON round trip, so tuples and lists compare equal with what was read back."""
    return json.loads(json.dumps(value))


@dataclass
class CacheSplit:
    """One split of a cache folder, opened for writing missing chunks and for reading."""

    directory: Path
    split: str
    key: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    count: int
    views: int
    chunk_size: int

    @property
    def split_dir(self) -> Path:
        return self.directory / self.split

    @property
    def n_chunks(self) -> int:
        return (self.count + self.chunk_size - 1) // self.chunk_size

    def chunk_indices(self, chunk: int) -> range:
        return range(chunk * self.chunk_size, min(self.count, (chunk + 1) * self.chunk_size))

    def _marker(self, chunk: int) -> Path:
        return self.split_dir / "done" / f"{chunk:08d}"

    def missing_chunks(self, *, rank: int = 0, world: int = 1) -> list[int]:
        """Chunks without a marker that rank `rank` of `world` is responsible for (k % world == rank)."""
        return [k for k in range(self.n_chunks) if k % world == rank and not self._marker(k).exists()]

    @property
    def complete(self) -> bool:
        return not self.missing_chunks()

    def features(self, tap: str, *, writable: bool = False) -> np.memmap:
        """(count, views, C, s, s) float16 memmap of `tap`."""
        if tap not in self.shapes:
            raise KeyError(f"{self.split_dir}: no tap {tap!r} in this cache (it has {sorted(self.shapes)}).")
        return np.load(self.split_dir / f"{tap}.npy", mmap_mode="r+" if writable else "r", allow_pickle=False)

    def labels(self, *, writable: bool = False) -> np.memmap:
        return np.load(self.split_dir / "labels.npy", mmap_mode="r+" if writable else "r", allow_pickle=False)

    def write_chunk(self, chunk: int, features: Mapping[str, np.ndarray], labels: np.ndarray) -> None:
        """Write all rows of `chunk` ({tap: (rows, views, C, s, s)}, labels (rows,)), flush, then mark it done."""
        rows = self.chunk_indices(chunk)
        sl = slice(rows.start, rows.stop)
        for tap, shape in self.shapes.items():
            value = features[tap]
            if value.shape != (len(rows), self.views, *shape):
                raise ValueError(f"chunk {chunk} of {tap}: shape {value.shape}, expected "
                                 f"{(len(rows), self.views, *shape)}.")
            mm = self.features(tap, writable=True)
            mm[sl] = value.astype(np.float16)
            mm.flush()
            del mm
        lab = self.labels(writable=True)
        lab[sl] = labels.astype(np.int64)
        lab.flush()
        del lab
        self._marker(chunk).touch()

    def mark_complete(self) -> None:
        """Record completion in the manifest (rank 0, after every chunk has its marker)."""
        if not self.complete:
            raise RuntimeError(f"{self.split_dir}: chunks {self.missing_chunks()[:5]} are not written yet.")
        manifest = _read_manifest(self.directory)
        manifest["splits"][self.split]["complete"] = True
        write_json_atomic(self.directory / "manifest.json", manifest)


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StaleCacheError(f"{path} cannot be read ({exc}); delete the cache folder {directory} or pass "
                              "another --cache.") from None
    if manifest.get("format") != FORMAT:
        raise StaleCacheError(f"{path} has format {manifest.get('format')!r}, not {FORMAT!r}; delete the cache "
                              f"folder {directory} or pass another --cache.")
    return manifest


def open_cache_split(directory: str | os.PathLike[str], split: str, *, key: Mapping[str, Any],
                     shapes: Mapping[str, Sequence[int]], count: int, views: int = 1, chunk_size: int = 1024,
                     create: bool = True) -> CacheSplit:
    """Open (creating if needed and `create`) split `split` of the cache at `directory`.

    `key` is JSON-able and must describe everything the features depend on; `shapes` gives each tap's per-view
    shape. Raises `StaleCacheError` when the folder holds this split with another key, and ValueError for a
    folder that is not a cache. Only one process may create a split (rank 0); the others open it afterwards.
    """
    directory = Path(directory)
    if not _NAME.match(split):
        raise ValueError(f"split name {split!r} must be letters, digits, '_', '.' or '-'.")
    bad = [t for t in shapes if not _NAME.match(t)]
    if bad:
        raise ValueError(f"tap names {bad} must be letters, digits, '_', '.' or '-'.")
    if count <= 0 or views <= 0 or chunk_size <= 0:
        raise ValueError(f"count {count}, views {views} and chunk_size {chunk_size} must be positive.")
    wanted = _normalise({"key": dict(key), "shapes": {t: list(s) for t, s in shapes.items()}, "count": count,
                         "views": views, "chunk_size": chunk_size})
    manifest_path = directory / "manifest.json"
    if manifest_path.exists():
        manifest = _read_manifest(directory)
    else:
        if directory.exists() and any(directory.iterdir()):
            raise ValueError(f"{directory} is not empty and has no manifest.json: not a feature cache; pass an "
                             "empty or new folder to --cache.")
        manifest = {"format": FORMAT, "splits": {}}
    entry = manifest["splits"].get(split)
    split_dir = directory / split
    if entry is not None:
        stored = {k: entry.get(k) for k in wanted}
        differences = identity_mismatch(stored, wanted, found_as="cached")
        if differences:
            raise StaleCacheError(f"{directory}: the cached '{split}' features are stale: " + "; ".join(differences)
                                  + f". Delete {split_dir} (or the whole cache) or pass another --cache folder.")
        missing = [p.name for p in [split_dir / "labels.npy", *(split_dir / f"{t}.npy" for t in shapes)]
                   if not p.is_file()]
        if missing:
            raise StaleCacheError(f"{split_dir}: files {missing} are missing although the manifest lists the split; "
                                  f"delete {split_dir} and run again.")
    else:
        if not create:
            raise FileNotFoundError(f"{directory}: no cached '{split}' split.")
        (split_dir / "done").mkdir(parents=True, exist_ok=True)
        for tap, shape in shapes.items():
            np.lib.format.open_memmap(split_dir / f"{tap}.npy", mode="w+", dtype=np.float16,
                                      shape=(count, views, *shape)).flush()
        np.lib.format.open_memmap(split_dir / "labels.npy", mode="w+", dtype=np.int64, shape=(count,)).flush()
        manifest["splits"][split] = {**wanted, "complete": False}
        write_json_atomic(manifest_path, manifest)
    return CacheSplit(directory=directory, split=split, key=wanted["key"],
                      shapes={t: tuple(s) for t, s in wanted["shapes"].items()}, count=count, views=views,
                      chunk_size=chunk_size)
