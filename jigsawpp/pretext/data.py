"""Images for the pretext task and the batches the training loop draws: decoded and cropped by DataLoader
workers (the CPU's only job: JPEG decode, resize, crop), cut into puzzles on the training device.

Image lists: an ImageNet root or split folder (`jigsawpp.data.imagenet_split`), any folder of images (searched
recursively, sorted), or a list file with one image path per line (relative paths are taken from the list's
folder; a trailing label, as in Caffe's lists, is ignored). Labels are never used: the task is self-supervised.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jigsawpp.data import IMAGE_EXTENSIONS, DatasetLayoutError, ImageDataset, LabeledImage, imagenet_split
from jigsawpp.puzzle import PuzzleConfig, puzzle_crop


def list_images(source: str | os.PathLike[str]) -> list[str]:
    """Image paths of `source` (see the module docstring), in a fixed order.

    Raises:
        DatasetLayoutError: `source` does not exist, lists missing files, or holds no images.
    """
    source = Path(source)
    if source.is_file():
        paths = []
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            name = parts[0] if len(parts) == 2 and parts[1].lstrip("-").isdigit() else line
            path = Path(name) if Path(name).is_absolute() else source.parent / name
            if not path.is_file():
                raise DatasetLayoutError(f"{source}:{number}: {path} does not exist; list paths relative to the "
                                         "list's folder or absolute.")
            paths.append(str(path))
        if not paths:
            raise DatasetLayoutError(f"{source}: the list names no images.")
        return paths
    if not source.is_dir():
        raise DatasetLayoutError(f"{source}: no such folder or image list.")
    try:
        return [s.path for s in imagenet_split(source, "train").samples]
    except DatasetLayoutError:
        pass
    paths = []
    for parent, dirs, files in os.walk(source, followlinks=True):
        dirs.sort()
        paths.extend(os.path.join(parent, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise DatasetLayoutError(f"{source}: no images (extensions {' '.join(IMAGE_EXTENSIONS)}) in this folder or "
                                 "below it.")
    return paths


def images_fingerprint(paths: list[str]) -> str:
    """sha256 over the image paths and sizes, in order (what a resumed run must see again)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path}\t{os.path.getsize(path)}\n".encode())
    return digest.hexdigest()


class CropTransform:
    """ImageDataset transform: (H, W, 3) uint8 BGR -> (3, 255, 255) uint8 puzzle window (`puzzle_crop`)."""

    def __init__(self, config: PuzzleConfig, *, train: bool) -> None:
        self.config = config
        self.train = train

    def __call__(self, image_bgr: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        window = puzzle_crop(image_bgr, config=self.config, train=self.train, rng=rng)
        return torch.from_numpy(np.ascontiguousarray(window.transpose(2, 0, 1)))


def crop_dataset(paths: list[str], config: PuzzleConfig, *, train: bool, seed: int) -> ImageDataset:
    """A map-style dataset of puzzle windows; item i's random crop comes from default_rng((seed, epoch, i))."""
    return ImageDataset([LabeledImage(p, 0) for p in paths], CropTransform(config, train=train), seed=seed)


@dataclass(frozen=True, eq=False)
class CropBatch:
    """crops (B, 3, 255, 255) uint8 BGR; indices (B,) positions in the image list; puzzle_seed: seeds this batch's
    puzzle draws (the same batch gets the same puzzles after a resume)."""

    crops: torch.Tensor
    indices: torch.Tensor
    puzzle_seed: int

    def to(self, device: torch.device | str) -> CropBatch:
        return CropBatch(self.crops.to(device, non_blocking=True), self.indices.to(device, non_blocking=True),
                         self.puzzle_seed)


class CropSource:
    """Wraps the engine's `DatasetSource` (shuffled passes, rank slices, exact state) and gives each batch the seed
    of its puzzles: ``SeedSequence((seed, stream position, rank))``."""

    def __init__(self, inner, *, seed: int, rank: int) -> None:
        self.inner = inner
        self.seed = seed
        self.rank = rank

    def next_batch(self) -> CropBatch:
        position = self.inner.position
        batch = self.inner.next_batch()
        puzzle_seed = int(np.random.SeedSequence((self.seed, position, self.rank)).generate_state(1, np.uint64)[0])
        return CropBatch(batch.images, batch.indices, puzzle_seed & ((1 << 63) - 1))

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()
