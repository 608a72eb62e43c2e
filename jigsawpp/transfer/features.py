"""Stage 1 of knowledge transfer: the teacher's pooled conv4 for every image, written to a feature folder.

Paper §4: features "are extracted from conv4 layer and max-pooled to 5 x 5 x 384 in the case of AlexNet and
4 x 4 x 512 in the case of VGG16" (pooling presets in `jigsawpp.transfer.teacher`). The image preprocessing for the
features is not published; we use the Caffe ImageNet convention the teachers were trained with: the image read as
Caffe read it (`jigsawpp.data.read_image_bgr`), warped to 256 x 256 (BVLC `examples/imagenet/create_imagenet.sh`,
RESIZE_HEIGHT = RESIZE_WIDTH = 256), the centre crop of the teacher's input side (227 AlexNet, 224 VGG16; Caffe's
TEST-phase `crop_size`), BGR 0-255 minus the mean (`jigsawpp.data.caffe_transform`). Both are recorded in the
manifest.

Rows are written chunk by chunk into `features.npy` (a memmap, float16 by default: 1.28M x 9,600 is 24.6 GB) and
each finished chunk is logged, so an interrupted run resumes where it stopped. Under torchrun every rank extracts
the chunks c with c % world_size == rank into the same file. Output layout: `jigsawpp.transfer.store`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from jigsawpp.config_fields import refuse_unknown
from jigsawpp.data import IMAGE_READING, CaffeTransform, ImageDataset, caffe_transform
from jigsawpp.engine.stamp import identity_mismatch
from jigsawpp.transfer.store import (
    ARRAY,
    FORMAT,
    IMAGES,
    MANIFEST,
    PROGRESS,
    ChunkProgress,
    FeatureStoreError,
    ImageList,
)
from jigsawpp.transfer.teacher import Teacher, choose_pooling

FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class FeatureConfig:
    """Feature extraction options. Identity keys (change the rows) first, run-time keys after."""

    resize: int = 256              # warp to resize x resize: Caffe ImageNet LMDBs (create_imagenet.sh), our choice
    crop: int | None = None        # centre crop; None = the teacher's input side (227 AlexNet, 224 VGG16)
    dtype: str = "float16"         # storage type of the rows; float32 if a teacher's values exceed 65504
    pool_grid: int | None = None   # override the paper preset: adaptive max pooling to G x G
    pool_kernel: int | None = None  # override the paper preset: Caffe MAX pooling kernel ...
    pool_stride: int | None = None  # ... and stride
    batch_size: int = 64           # run-time only
    workers: int = 4               # image decoding processes; run-time only
    chunk_rows: int = 8192         # rows per resumable chunk (fixed by the first run of a folder)

    def __post_init__(self) -> None:
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype {self.dtype!r}: expected float16 or float32.")
        if self.resize < 1 or (self.crop is not None and not 1 <= self.crop <= self.resize):
            raise ValueError(f"crop {self.crop} must lie in [1, resize = {self.resize}].")
        if self.batch_size < 1 or self.chunk_rows < 1 or self.workers < 0:
            raise ValueError("batch_size and chunk_rows must be >= 1, workers >= 0.")

    @classmethod
    def from_overrides(cls, overrides: dict[str, object]) -> FeatureConfig:
        refuse_unknown(cls, overrides, what="feature option(s)")
        return cls(**overrides)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FeatureResult:
    path: Path
    shape: tuple[int, int]
    skipped: bool                  # the folder was already complete and matching
    chunks_resumed: int            # chunks found done when this run started
    seconds: float
    images_per_second: float


def transform_record(transform: CaffeTransform) -> dict[str, object]:
    """What the feature transform does, for manifests."""
    return {"reader": IMAGE_READING, "resize": list(transform.resize) if isinstance(transform.resize, tuple)
            else transform.resize, "interpolation": "bilinear (cv2.INTER_LINEAR)", "crop": transform.crop,
            "crop_position": "centre", "mirror": transform.mirror, "channel_order": "BGR", "value_range": [0, 255],
            "mean_bgr": [float(v) for v in transform.mean_bgr], "scale": transform.scale}


class Extractor(Protocol):
    """What a feature stage computes: `transform(image_bgr, rng)` runs per image in the data-loading workers
    (picklable; `jigsawpp.data.ImageDataset` calls it), `batch` per batch in the main process on the device; a
    batch's rows are `batch(stack([transform(image), ...]))`, (n, dim)."""

    identity: dict
    dim: int
    description: str
    transform: Callable[..., torch.Tensor]

    def batch(self, x: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: torch.device) -> None: ...


class ModelFeatures:
    """The teacher's blob, max-pooled (the paper's CC features)."""

    def __init__(self, teacher: Teacher, config: FeatureConfig) -> None:
        self.teacher = teacher
        crop = config.crop or teacher.input_size
        self.transform = caffe_transform(mean_bgr=teacher.mean_bgr, resize=(config.resize, config.resize), crop=crop)
        channels, height, width = teacher.blob_shape(crop)
        if height != width:
            raise ValueError(f"{teacher.blob} is {channels} x {height} x {width} at {crop} px; a square blob is "
                             "needed.")
        self.pooling = choose_pooling(channels, height, grid=config.pool_grid, kernel=config.pool_kernel,
                                      stride=config.pool_stride)
        self.pool = self.pooling.module()
        side = self.pooling.output_side(height)
        self.dim = channels * side * side
        self.description = f"{teacher.description}, pooled to {channels} x {side} x {side}"
        self.identity = {
            "kind": "model",
            "teacher": teacher.identity,
            "blob": {"name": teacher.blob, "shape": [channels, height, width]},
            "pooling": self.pooling.to_dict(),
            "transform": transform_record(self.transform),
            "row_layout": f"C x {side} x {side} flattened in C order (channel-major), as the pooled blob",
        }

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.teacher.tap(x)).flatten(1)

    def to(self, device: torch.device) -> None:
        self.teacher.tap.to(device)


def extract_features(extractor: Extractor, images: ImageList, out: str | os.PathLike[str], *,
                     config: FeatureConfig | None = None, device: torch.device | str = "cpu", rank: int = 0,
                     world_size: int = 1, overwrite: bool = False, progress: bool = True,
                     barrier: Callable[[], None] = lambda: None,
                     on_create: Callable[[Path], None] | None = None) -> FeatureResult:
    """Write `extractor`'s row for every image of `images` to the feature folder `out`.

    A complete folder with the same identity is reused as is (skipped); an incomplete one is resumed; a folder with
    another identity is refused (FeatureStoreError naming what changed) unless `overwrite`. Under torchrun pass this
    process's `rank`, the `world_size` and a `barrier`. `on_create(folder)` writes extra files (e.g. a HOG
    vocabulary) when the folder is first created. Raises FeatureStoreError when a value overflows the dtype.
    """
    config = config or FeatureConfig()
    start = time.perf_counter()
    out = Path(out)
    device = torch.device(device)
    identity = dict(extractor.identity, images={"count": len(images), "sha256": images.sha256()},
                    dtype=config.dtype)
    if rank == 0:
        from jigsawpp.outputs import prepare_output_dir

        prepare_output_dir(out, overwrite=overwrite, what="feature folder", resume=True,
                           markers=(MANIFEST, "progress", "features.npy"))
    barrier()
    manifest = _open_or_create(out, identity, images, config, extractor.dim, rank=rank, world_size=world_size,
                               barrier=barrier, on_create=on_create)
    shape = (len(images), extractor.dim)
    chunks = int(manifest["chunks"])
    if manifest.get("complete"):
        return FeatureResult(out, shape, True, chunks, 0.0, 0.0)
    chunk_rows = int(manifest["chunk_rows"])
    log = ChunkProgress(out, rank)
    done = log.done()
    todo = [c for c in range(chunks) if c not in done and c % world_size == rank]
    array = np.load(out / ARRAY, mmap_mode="r+", allow_pickle=False)
    extractor.to(device)
    batches = [list(range(s, min(s + config.batch_size, (c + 1) * chunk_rows, len(images))))
               for c in todo for s in range(c * chunk_rows, min((c + 1) * chunk_rows, len(images)), config.batch_size)]
    dataset = ImageDataset(images.samples(), extractor.transform)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches,
                                         num_workers=config.workers, pin_memory=device.type == "cuda")
    rows_left = {c: min((c + 1) * chunk_rows, len(images)) - c * chunk_rows for c in todo}
    n_rows = sum(rows_left.values())
    from tqdm import tqdm

    bar = tqdm(total=n_rows, desc=f"features (rank {rank})" if world_size > 1 else "features", unit="img",
               disable=not progress, leave=False)
    with torch.inference_mode():
        for x, _, index in loader:
            rows_out = extractor.batch(x.to(device, non_blocking=True)).float().cpu().numpy()
            rows = index.numpy()
            with np.errstate(over="ignore"):  # overflow is reported below, naming the image
                values = rows_out.astype(config.dtype)
            finite = np.isfinite(values).all(axis=1)
            if not finite.all():
                bad = int(rows[np.flatnonzero(~finite)[0]])
                raise FeatureStoreError(
                    f"{images.names[bad]}: its features reach {float(np.nanmax(np.abs(rows_out))):.4g}, beyond "
                    f"{config.dtype} (largest float16 {FLOAT16_MAX:.0f}), or are not finite; re-run with --dtype "
                    "float32 and --overwrite.")
            array[rows[0]:rows[-1] + 1] = values
            bar.update(len(rows))
            chunk = int(rows[0]) // chunk_rows
            rows_left[chunk] -= len(rows)
            if rows_left[chunk] == 0:
                array.flush()
                log.mark(chunk)
    bar.close()
    array.flush()
    del array
    barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        missing = sorted(set(range(chunks)) - ChunkProgress(out, 0).done())
        if missing:
            raise FeatureStoreError(f"{out}: chunks {missing[:10]} were not written (a rank failed?); re-run the "
                                    "same command to finish them.")
        manifest.update(complete=True, description=extractor.description, seconds_last_run=round(seconds, 2),
                        images_per_second_last_run=round(n_rows / seconds, 2) if seconds else None,
                        device=str(device), world_size=world_size)
        _write_manifest(out, manifest)
        shutil.rmtree(out / PROGRESS, ignore_errors=True)
    barrier()
    return FeatureResult(out, shape, False, len(done), seconds, n_rows / seconds if seconds else 0.0)


def _open_or_create(out: Path, identity: dict, images: ImageList, config: FeatureConfig, dim: int, *, rank: int,
                    world_size: int, barrier: Callable[[], None], on_create: Callable[[Path], None] | None) -> dict:
    manifest_path = out / MANIFEST
    if rank == 0:
        if manifest_path.is_file():
            found = json.loads(manifest_path.read_text(encoding="utf-8"))
            diffs = identity_mismatch(found.get("identity", {}), identity)
            if found.get("format") != FORMAT or diffs:
                raise FeatureStoreError(f"{out} holds other features ({'; '.join(diffs) or 'another format'}); "
                                        "choose another --out or pass --overwrite to replace them.")
        elif any(out.iterdir()):
            raise FeatureStoreError(f"{out} exists, is not empty and has no {MANIFEST}; choose another --out or "
                                    "pass --overwrite.")
        else:
            # at least 4 chunks per process when the list is short, so that every rank gets work
            chunk_rows = max(1, min(config.chunk_rows, -(-len(images) // (4 * world_size))))
            chunks = -(-len(images) // chunk_rows)
            np.lib.format.open_memmap(out / ARRAY, mode="w+", dtype=config.dtype, shape=(len(images), dim)).flush()
            (out / IMAGES).write_text(images.text(), encoding="utf-8")
            if on_create is not None:
                on_create(out)
            manifest = {"format": FORMAT, "identity": identity, "shape": [len(images), dim], "dtype": config.dtype,
                        "chunk_rows": chunk_rows, "chunks": chunks, "complete": False,
                        "images": {"root": str(images.root), "list": IMAGES},
                        "config": {k: v for k, v in asdict(config).items()}}
            _write_manifest(out, manifest)
    barrier()
    return json.loads(manifest_path.read_text(encoding="utf-8"))


def _write_manifest(out: Path, manifest: dict) -> None:
    from jigsawpp.io import write_json_atomic

    write_json_atomic(out / MANIFEST, manifest)
