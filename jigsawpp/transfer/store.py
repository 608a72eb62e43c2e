"""Feature files: one (N, D) array on disk (a `.npy` read as a memmap), an image list, and a manifest.

Layout of a feature folder FEATS (other stages and tools rely on it):

    FEATS/manifest.json        format, identity (what the rows depend on), shape, dtype, complete, stamp
    FEATS/features.npy         (N, D) float16 (default) or float32, row i = image i of images.txt
    FEATS/images.txt           one line per row: the image path relative to the data root [space true label]
    FEATS/progress/rank<r>.txt chunk indices written and flushed by rank r (resume); removed when complete

A folder is reused only when its identity matches what the caller would write
(`jigsawpp.engine.stamp.identity_mismatch`); a stale or mismatched folder is refused with the keys that differ.
ImageNet train at 5 x 5 x 384 is 1.28M x 9,600 values (24.6 GB in float16): stages read it in row chunks through the
memmap and never hold it in memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "jigsawpp-features/1"
MANIFEST, ARRAY, IMAGES, PROGRESS = "manifest.json", "features.npy", "images.txt", "progress"


class FeatureStoreError(ValueError):
    """A feature folder that cannot be used as asked (stale, mismatched, incomplete, damaged)."""


@dataclass(frozen=True)
class ImageList:
    """Images of a dataset: `names[i]` is a path relative to `root`; `labels` the dataset's own labels when it has
    them (ImageFolder class index; used only to score clusters, never to make them)."""

    root: Path
    names: tuple[str, ...]
    labels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.names):
            raise ValueError(f"{len(self.names)} images but {len(self.labels)} labels.")
        bad = [n for n in self.names[:1000] if "\n" in n]
        if bad:
            raise ValueError(f"image names may not contain line breaks: {bad[0]!r}.")

    def __len__(self) -> int:
        return len(self.names)

    def sha256(self) -> str:
        import hashlib

        digest = hashlib.sha256()
        for name in self.names:
            digest.update(name.encode("utf-8") + b"\n")
        return digest.hexdigest()

    def samples(self) -> list:
        """`jigsawpp.data.LabeledImage` rows (label -1 when the dataset has none) for `ImageDataset`."""
        from jigsawpp.data import LabeledImage

        labels = self.labels if self.labels is not None else (-1,) * len(self.names)
        return [LabeledImage(str(self.root / n), int(y)) for n, y in zip(self.names, labels)]

    @classmethod
    def from_samples(cls, samples, root: Path) -> ImageList:
        """From `jigsawpp.data.Samples` (paths under `root`): names relative to `root`, the dataset's labels."""
        names = tuple(os.path.relpath(s.path, root) for s in samples.samples)
        escaping = [n for n in names[:1000] if n.startswith("..")]
        if escaping:
            raise ValueError(f"image {escaping[0]} is not under the data root {root}.")
        return cls(Path(root), names, tuple(int(s.label) for s in samples.samples))

    def text(self) -> str:
        if self.labels is None:
            return "".join(f"{n}\n" for n in self.names)
        return "".join(f"{n} {y}\n" for n, y in zip(self.names, self.labels))


def read_image_list(path: Path, root: Path) -> ImageList:
    """Read an images.txt written by `ImageList.text` (label after the last space when every line has one)."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln]
    parts = [ln.rsplit(" ", 1) for ln in lines]
    if parts and all(len(p) == 2 and p[1].lstrip("-").isdigit() for p in parts):
        return ImageList(root, tuple(p[0] for p in parts), tuple(int(p[1]) for p in parts))
    return ImageList(root, tuple(lines), None)


@dataclass
class FeatureStore:
    """An opened feature folder. `array` is a read-only memmap (N, D); read it with `chunks`."""

    path: Path
    manifest: dict
    array: np.ndarray
    images: ImageList

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def chunks(self, rows: int = 65536):
        """Yield (start, float32 array (n, D)) blocks in row order: at most `rows` rows in memory at once."""
        for start in range(0, self.array.shape[0], rows):
            yield start, np.asarray(self.array[start:start + rows], dtype=np.float32)

    def require_complete(self) -> FeatureStore:
        if not self.complete:
            raise FeatureStoreError(f"{self.path} is incomplete (extraction was interrupted); re-run `jigsawpp "
                                    "transfer features` with the same arguments to finish it.")
        return self


def open_features(path: str | os.PathLike[str], *, root: Path | None = None) -> FeatureStore:
    """Open a feature folder read-only, checking the manifest, array shape and image list agree."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FeatureStoreError(f"{path}: no {MANIFEST}; is it the --out folder of `jigsawpp transfer features`?")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise FeatureStoreError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}.")
    try:
        array = np.load(path / ARRAY, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FeatureStoreError(f"{path / ARRAY}: cannot be read as a .npy array ({exc}); re-run the extraction "
                                "with --overwrite.") from None
    expected = tuple(manifest["shape"])
    if tuple(array.shape) != expected or str(array.dtype) != manifest["dtype"]:
        raise FeatureStoreError(f"{path / ARRAY} is {array.shape} {array.dtype} but the manifest says {expected} "
                                f"{manifest['dtype']}; the folder is damaged, re-run with --overwrite.")
    images = read_image_list(path / IMAGES, Path(root or manifest["images"]["root"]))
    if len(images) != expected[0]:
        raise FeatureStoreError(f"{path / IMAGES} lists {len(images)} images for {expected[0]} feature rows.")
    return FeatureStore(path, manifest, array, images)


class ChunkProgress:
    """Which row chunks are written: one append-only file per rank, a line per chunk after its rows are flushed."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.folder = folder / PROGRESS
        self.rank = rank

    def done(self) -> set[int]:
        chunks: set[int] = set()
        if self.folder.is_dir():
            for file in self.folder.glob("rank*.txt"):
                for line in file.read_text(encoding="utf-8").splitlines():
                    if line.strip().isdigit():  # a torn last line (killed mid-write) is ignored
                        chunks.add(int(line))
        return chunks

    def mark(self, chunk: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{self.rank}.txt", "a", encoding="utf-8") as handle:
            handle.write(f"{chunk}\n")
            handle.flush()
            os.fsync(handle.fileno())


def images_from_data(data: str | os.PathLike[str], *, split: str | None = None,
                     list_file: str | os.PathLike[str] | None = None) -> ImageList:
    """The images of `data` as `jigsawpp.data` reads the usual layouts, names relative to `data`:
    a Caffe list file (`list_file`, paths relative to `data`), ImageNet or Places205 train/val (`split`), or an
    ImageFolder tree (neither). Raises `jigsawpp.data.DatasetLayoutError` naming what was expected."""
    from jigsawpp.data import image_folder, image_list_file, imagenet_split, places205_split

    root = Path(data)
    if list_file is not None:
        if split is not None:
            raise ValueError("give --split or --list, not both.")
        samples = image_list_file(list_file, root)
    elif split is not None:
        places = (root / "trainvalsplit_places205").is_dir()
        samples = places205_split(root, split) if places else imagenet_split(root, split)
    else:
        samples = image_folder(root)
    return ImageList.from_samples(samples, root)


def write_feature_array(out: str | os.PathLike[str], rows: np.ndarray, images: ImageList, *, identity: dict,
                        dtype: str = "float16", overwrite: bool = False) -> FeatureStore:
    """Save features computed elsewhere (rows (N, D), row i for images.names[i]) as a complete feature folder, so
    `cluster` and `label_features` take them; `identity` says what they are (it decides what they match)."""
    from jigsawpp.io import write_json_atomic
    from jigsawpp.outputs import staged_output

    if rows.ndim != 2 or rows.shape[0] != len(images):
        raise ValueError(f"rows of shape {rows.shape} for {len(images)} images; expected ({len(images)}, D).")
    values = rows.astype(dtype)
    if not np.isfinite(values).all():
        raise FeatureStoreError(f"the rows hold values that are not finite in {dtype}.")
    with staged_output(out, overwrite=overwrite, what="feature folder") as staging:
        np.save(staging / ARRAY, values, allow_pickle=False)
        (staging / IMAGES).write_text(images.text(), encoding="utf-8")
        full = dict(identity, images={"count": len(images), "sha256": images.sha256()}, dtype=dtype)
        write_json_atomic(staging / MANIFEST, {
            "format": FORMAT, "identity": full, "shape": list(values.shape), "dtype": dtype, "chunk_rows":
            len(values), "chunks": 1, "complete": True, "images": {"root": str(images.root), "list": IMAGES}})
    return open_features(out)
