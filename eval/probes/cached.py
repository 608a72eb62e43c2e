"""Feature caches of the linear probes: which splits a run needs, the key that makes them valid, and filling them.

A cache folder holds one split per (split, views) choice: ``train_v<V>_s<seed>`` (V seeded random crop+mirror
views per training image) and ``val_center`` / ``val_ten``. Their key (`eval.probes.cache`) names the model's
sha256, the taps, the transform and the sample list, so a folder made for another model or preprocessing is refused
rather than reused; a new view count or seed adds a split beside the others.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from eval.probes.cache import CacheSplit, open_cache_split
from eval.probes.config import LinearProbeConfig
from eval.probes.extract import extract_to_cache
from eval.probes.taps import ProbeTaps
from eval.probes.trunk import Trunk
from jigsawpp.data import Samples

__all__ = ["cache_key", "prepare_cache"]

CHUNK = 1024  # images per resumable chunk
EXTRACT_BATCH = 256  # image views per trunk forward while extracting


def cache_key(taps: ProbeTaps, cfg: LinearProbeConfig, trunk: Trunk, *, fingerprint: str, views: str) -> dict:
    """Everything the cached features of one split depend on."""
    return {
        "model_sha256": trunk.weights_sha256,
        "taps": {t: {"spec": taps.specs[t].describe(), "align_corners": taps.align_corners} for t in taps.specs},
        "transform": {"image_size": cfg.image_size, "crop_size": cfg.crop_size, "mean_bgr": list(trunk.mean_bgr),
                      "views": views, "autocast": cfg.amp},
        "samples_sha256": fingerprint,
    }


def prepare_cache(cache_dir: str | os.PathLike[str], taps: ProbeTaps, train: Samples, val: Samples,
                  cfg: LinearProbeConfig, *, trunk: Trunk, data_root: str | os.PathLike[str], device: torch.device,
                  workers: int, rank: int = 0, world: int = 1,
                  progress: bool = True) -> tuple[dict[str, CacheSplit], dict[str, Any]]:
    """Open (rank 0 creates) the train and val splits, extract what is missing (every rank its chunks), and mark
    them complete. Returns ({"train": split, "val": split}, {split name: extraction record})."""
    from eval.probes import data as pdata
    from jigsawpp.engine.distributed import barrier

    views = cfg.cache_train_views
    plans = {
        "train": (f"train_v{views}_s{cfg.seed}", train, views,
                  f"{views} random crop+mirror view(s), seed {cfg.seed}" if cfg.mirror else
                  f"{views} random crop view(s), seed {cfg.seed}",
                  pdata.train_dataset(train, mean_bgr=trunk.mean_bgr, image_size=cfg.image_size,
                                      crop_size=cfg.crop_size, mirror=cfg.mirror, seed=cfg.seed, views=views)),
        "val": (f"val_{cfg.test_crops}", val, 10 if cfg.test_crops == "ten" else 1,
                "10 crops (corners, centre, mirrored)" if cfg.test_crops == "ten" else "centre crop",
                pdata.test_dataset(val, mean_bgr=trunk.mean_bgr, image_size=cfg.image_size,
                                   crop_size=cfg.crop_size, crops=cfg.test_crops)),
    }
    caches: dict[str, CacheSplit] = {}
    records: dict[str, Any] = {}
    for role, (name, samples, n_views, described, dataset) in plans.items():
        key = cache_key(taps, cfg, trunk, fingerprint=pdata.samples_fingerprint(samples.samples, data_root),
                        views=described)
        args = dict(key=key, shapes=taps.shapes, count=len(samples.samples), views=n_views, chunk_size=CHUNK)
        if rank == 0:
            open_cache_split(cache_dir, name, create=True, **args)
        barrier()
        split = open_cache_split(cache_dir, name, create=False, **args)
        report = extract_to_cache(taps, dataset, split, batch_size=max(1, EXTRACT_BATCH // n_views),
                                  workers=workers, device=device, amp=cfg.amp, rank=rank, world=world,
                                  progress=progress)
        barrier()
        if rank == 0:
            split.mark_complete()
        barrier()
        caches[role] = split
        records[name] = {"images_extracted": report.images, "reused": report.reused, "seconds": report.seconds}
    return caches, records
