"""Images and image datasets as Caffe saw them: strict decoding, the usual folder layouts, Caffe's transform.

Decoding (`read_image_bgr`) is OpenCV's, as in Caffe's ``ReadImageToCVMat`` (BVLC ``src/caffe/util/io.cpp``:
``cv::imread(filename, CV_LOAD_IMAGE_COLOR)``): 8-bit BGR, grey images replicated to three channels. Two things
are stricter or pinned down:

- a truncated file is refused. ``cv2.imread`` decodes a JPEG cut short with the missing rows filled grey and only
  prints libjpeg's "Premature end of JPEG file"; such an image would silently enter training. We read the bytes,
  require the JPEG end-of-image marker after the last start-of-scan (a PNG: its IEND chunk after the last IDAT),
  and decode with ``cv2.imdecode``, which returns nothing for a truncated stream; every failure is one
  `ImageReadError` line naming the file.
- EXIF orientation is ignored (``IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION``): the Caffe builds of 2015-2018 read
  pixels as stored (OpenCV 2.4 had no EXIF support; OpenCV >= 3.1 rotates unless told not to). A JPEG carrying a
  rotation tag is read unrotated and reported once with an `ImageOrientationWarning`; `IMAGE_READING` is the record
  of this policy that protocols put in their provenance stamps.

Datasets are lists of `LabeledImage` (path, integer label) built from the common layouts: torchvision's
ImageFolder (`image_folder`), ImageNet train/val (`imagenet_split`), Places205's official split lists
(`places205_split`) and Caffe ``ImageData`` list files (`image_list_file`). `ImageDataset` reads and transforms them
for a ``torch.utils.data.DataLoader``; `caffe_transform` is Caffe's ``DataTransformer`` (BVLC
``src/caffe/data_transformer.cpp``) for 8-bit BGR images, with the resizing the protocols put in front of it, and
`ten_crops` pycaffe's ``oversample`` (BVLC ``python/caffe/io.py``).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_READING",
    "CaffeTransform",
    "DatasetLayoutError",
    "ImageDataset",
    "ImageOrientationWarning",
    "ImageReadError",
    "LabeledImage",
    "Samples",
    "caffe_transform",
    "exif_orientation",
    "image_folder",
    "image_list_file",
    "imagenet_split",
    "places205_split",
    "read_image_bgr",
    "ten_crops",
]

# torchvision.datasets.folder.IMG_EXTENSIONS, compared case-insensitively as torchvision does
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGE_READING = {
    "decoder": "OpenCV cv2.imdecode, IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION (8-bit BGR, as Caffe's imread)",
    "exif_orientation": "ignored, as the Caffe builds of the papers (OpenCV 2.4) did; tagged images are reported",
    "truncated_files": "refused (JPEG without end-of-image marker, PNG without IEND, undecodable data)",
}
_JPEG_SOI, _JPEG_SOS, _JPEG_EOI = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ROTATIONS = {2: "mirrored", 3: "rotated 180", 4: "flipped", 5: "transposed", 6: "rotated 90 clockwise",
              7: "transversed", 8: "rotated 90 counter-clockwise"}


class ImageReadError(ValueError):
    """An image file that cannot be read, or is corrupt or truncated (the message names the file)."""


class DatasetLayoutError(ValueError):
    """A dataset folder or list whose layout is not one we recognise (the message says what was expected)."""


class ImageOrientationWarning(UserWarning):
    """An image carries an EXIF rotation that is ignored, as Caffe ignored it."""


def exif_orientation(data: bytes) -> int | None:
    """The EXIF orientation tag (1..8) of an encoded JPEG, or None when it has none (1 = stored upright)."""
    if not data.startswith(_JPEG_SOI) or b"Exif" not in data[:65536]:
        return None
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(0x0112)
    except Exception:  # a malformed EXIF block is not our business: the pixels are read without it anyway
        return None
    return int(value) if value is not None else None


def _check_complete(data: bytes, path: str) -> None:
    if data.startswith(_JPEG_SOI):
        # entropy-coded data escapes 0xFF as FF 00, so an FF D9 after the last FF DA can only be the real EOI
        if data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
            raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker after its image data); the file "
                                 "was cut short, re-copy or re-download it.")
    elif data.startswith(_PNG_SIGNATURE):
        if data.rfind(b"IEND") < data.rfind(b"IDAT"):
            raise ImageReadError(f"{path}: truncated PNG (no IEND chunk after its image data); the file was cut "
                                 "short, re-copy or re-download it.")


def read_image_bgr(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file as Caffe did: (H, W, 3) uint8 BGR, 0..255, EXIF orientation ignored.

    Raises:
        ImageReadError: the file is missing, empty, truncated or not decodable (one line naming it).
    """
    import cv2

    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageReadError(f"{name}: cannot be read ({exc.strerror or exc}).") from None
    if not data:
        raise ImageReadError(f"{name}: the file is empty.")
    _check_complete(data, name)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ImageReadError(f"{name}: OpenCV cannot decode it (corrupt, truncated or not an image format OpenCV "
                             "reads).")
    orientation = exif_orientation(data)
    if orientation is not None and orientation != 1:
        warnings.warn(f"{name}: EXIF orientation {orientation} ({_ROTATIONS.get(orientation, 'unknown')}) is "
                      "ignored; the image is read as stored, as Caffe read it.", ImageOrientationWarning,
                      stacklevel=2)
    return image


# ---- datasets ---------------------------------------------------------------------------------------------------


class LabeledImage(NamedTuple):
    path: str
    label: int


class Samples(NamedTuple):
    """A dataset listing: ``samples`` in a fixed order and ``classes[label]`` the name of each label."""

    samples: list[LabeledImage]
    classes: list[str]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(root: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))


def _images_under(folder: Path) -> list[str]:
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found.extend(os.path.join(parent, f) for f in sorted(files) if _is_image(f))
    return found


def image_folder(root: str | os.PathLike[str], *, classes: Sequence[str] | None = None) -> Samples:
    """torchvision's ImageFolder layout: ``root/<class>/**/<image>``; classes sorted by name, labels 0..K-1.

    `classes` fixes the label order (e.g. a validation folder labelled with the training folder's classes); every
    class folder must then be one of them.

    Raises:
        DatasetLayoutError: `root` is not a folder, has no class folders, a class folder holds no image, or a
            folder is not among `classes`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a folder; expected an ImageFolder layout root/<class>/<image>.")
    folders = _class_folders(root)
    if not folders:
        loose = sum(1 for entry in os.scandir(root) if entry.is_file() and _is_image(entry.name))
        hint = f" (it holds {loose} images directly: put them in one folder per class)" if loose else ""
        raise DatasetLayoutError(f"{root} has no class folders{hint}; expected an ImageFolder layout "
                                 "root/<class>/<image> with extensions " + " ".join(IMAGE_EXTENSIONS) + ".")
    names = list(classes) if classes is not None else folders
    index = {name: i for i, name in enumerate(names)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise DatasetLayoutError(f"{root}: class folders {unknown[:5]} are not among the {len(names)} classes "
                                 "they are labelled with (e.g. the training folder's).")
    samples = []
    for folder in folders:
        images = _images_under(root / folder)
        if not images:
            raise DatasetLayoutError(f"{root / folder}: no image files (extensions " + " ".join(IMAGE_EXTENSIONS)
                                     + "); remove the folder or add its images.")
        samples.extend(LabeledImage(p, index[folder]) for p in images)
    return Samples(samples, names)


_WNID = re.compile(r"^n\d{8}$")


def imagenet_split(root: str | os.PathLike[str], split: str) -> Samples:
    """ImageNet (ILSVRC2012) ``train`` or ``val`` with labels in the sorted-WordNet-id order of Caffe's
    ``synsets.txt`` and torchvision.

    Accepted layouts: ``root/<split>/<wnid>/<image>`` (labels from ``root/train``'s folders when it exists, so both
    splits share them), ``root/<wnid>/<image>`` (the split folder itself), or a flat ``root/<split>/`` beside
    Caffe's list ``root/<split>.txt`` (``data/ilsvrc12/{train,val}.txt``: ``relative/path label`` lines).

    Raises:
        DatasetLayoutError: none of these layouts, naming what was found.
    """
    if split not in ("train", "val"):
        raise ValueError(f"imagenet_split: split must be 'train' or 'val', got {split!r}.")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a folder; expected the ImageNet root (with train/ and val/) or a "
                                 "split folder of WordNet-id class folders (n01440764/, ...).")
    folder = root / split
    if folder.is_dir() and any(_WNID.match(name) for name in _class_folders(folder)):
        train = root / "train"
        classes = _class_folders(train) if split == "val" and train.is_dir() else None
        return image_folder(folder, classes=classes)
    if folder.is_dir() and (root / f"{split}.txt").is_file():
        return image_list_file(root / f"{split}.txt", folder)
    if any(_WNID.match(name) for name in _class_folders(root)):
        return image_folder(root)
    raise DatasetLayoutError(
        f"{root}: not an ImageNet layout. Expected {root}/{split}/<wnid>/<image> (WordNet-id class folders such as "
        f"n01440764), {root}/<wnid>/<image>, or a flat {root}/{split}/ with Caffe's list {root}/{split}.txt. The "
        "official val tarball is flat: sort it into class folders (the devkit's ground truth) or give the list.")


_PLACES_LISTS = "trainvalsplit_places205"
_PLACES_IMAGE_ROOTS = ("data/vision/torralba/deeplearning/images256", "images256", ".")


def places205_split(root: str | os.PathLike[str], split: str) -> Samples:
    """Places205 with its official lists ``root/trainvalsplit_places205/{train,val}_places205.csv`` (lines
    ``a/abbey/00000000.jpg 0``). Images are looked up under ``root/data/vision/torralba/deeplearning/images256``
    (the layout the official tarball unpacks to), ``root/images256`` or `root`. Class names come from the folders
    (``a/abbey`` -> ``abbey``, ``c/church/outdoor`` -> ``church/outdoor``).

    Raises:
        DatasetLayoutError: no list file, or the listed images are under none of those folders.
    """
    if split not in ("train", "val"):
        raise ValueError(f"places205_split: split must be 'train' or 'val', got {split!r}.")
    root = Path(root)
    lists = root / _PLACES_LISTS / f"{split}_places205.csv"
    if not lists.is_file():
        raise DatasetLayoutError(f"{lists} does not exist; expected the Places205 release layout with "
                                 f"{_PLACES_LISTS}/train_places205.csv and val_places205.csv under {root}.")
    entries = _read_list(lists)
    if not entries:
        raise DatasetLayoutError(f"{lists} lists no images.")
    first = entries[0][0]
    bases = [root / sub for sub in _PLACES_IMAGE_ROOTS]
    base = next((b for b in bases if (b / first).is_file()), None)
    if base is None:
        raise DatasetLayoutError(f"{lists}: its first image {first} is under none of "
                                 + ", ".join(str(b) for b in bases) + "; unpack the images there.")
    names: dict[int, str] = {}
    for rel, label in entries:
        parts = Path(rel).parent.parts
        name = "/".join(parts[1:] if len(parts) > 1 and len(parts[0]) == 1 else parts)
        if names.setdefault(label, name) != name:
            raise DatasetLayoutError(f"{lists}: label {label} is used for both {names[label]!r} and {name!r}.")
    classes = [names.get(i, str(i)) for i in range(max(names) + 1)]
    return Samples([LabeledImage(str(base / rel), label) for rel, label in entries], classes)


def _read_list(path: Path) -> list[tuple[str, int]]:
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            # Caffe's ImageDataLayer splits at the last space, so names may contain spaces
            rel, _, label = line.rpartition(" ")
            try:
                value = int(label)
            except ValueError:
                value = -1
            if not rel or value < 0:
                raise DatasetLayoutError(f"{path}:{number}: expected 'relative/path label' with a label >= 0, got "
                                         f"{line[:80]!r}.")
            entries.append((rel.strip(), value))
    return entries


def image_list_file(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Samples:
    """A Caffe ``ImageData`` list: one ``relative/path label`` per line, paths relative to `root`
    (``image_data_param.root_folder``). Classes are named by their label numbers.

    Raises:
        DatasetLayoutError: a malformed line (file:line named), an empty list, or a first image that is missing.
    """
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise DatasetLayoutError(f"{path} does not exist; expected a list file of 'relative/path label' lines.")
    entries = _read_list(path)
    if not entries:
        raise DatasetLayoutError(f"{path} lists no images.")
    if not (root / entries[0][0]).is_file():
        raise DatasetLayoutError(f"{path}: its first image {entries[0][0]} is not under {root}; give the folder "
                                 "the list's paths are relative to.")
    count = max(label for _, label in entries) + 1
    return Samples([LabeledImage(str(root / rel), label) for rel, label in entries], [str(i) for i in range(count)])


# ---- Caffe's transform ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaffeTransform:
    """8-bit BGR image (H, W, 3) -> float32 tensor (3, h, w), BGR, ``(pixel - mean) * scale``.

    Steps: resize (`resize` int: the shorter side to that many pixels, the other ``round(side * ratio)``; a pair
    (height, width): warped to exactly that, as ``image_data_param.new_height/new_width``; both with
    ``cv2.INTER_LINEAR``, ``cv::resize``'s default), then Caffe's ``DataTransformer::Transform``: a `crop` x `crop`
    window at a random offset ``U{0..H-crop}`` (``random_crop``, Caffe's TRAIN phase) or at ``(H - crop) // 2``
    (TEST phase), mean subtraction (per channel, or a mean image cropped at the same offset as Caffe's mean_file),
    `scale`, and a left-right mirror with probability 1/2 when `mirror`.
    """

    mean_bgr: tuple[float, float, float] | np.ndarray
    resize: int | tuple[int, int] | None = None
    crop: int | None = None
    random_crop: bool = False
    mirror: bool = False
    scale: float = 1.0

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean_bgr, dtype=np.float64)
        if mean.shape != (3,) and (mean.ndim != 3 or mean.shape[2] != 3):
            raise ValueError(f"caffe_transform: mean_bgr must be 3 values or an (H, W, 3) mean image, got shape "
                             f"{mean.shape}.")
        if self.crop is not None and self.crop <= 0:
            raise ValueError(f"caffe_transform: crop must be positive, got {self.crop}.")

    def resized(self, image_bgr: np.ndarray) -> np.ndarray:
        """The image after the resize step (uint8, unchanged when `resize` is None)."""
        import cv2

        if self.resize is None:
            return image_bgr
        h, w = image_bgr.shape[:2]
        if isinstance(self.resize, int):
            ratio = self.resize / min(h, w)
            size = (self.resize, int(round(w * ratio))) if h <= w else (int(round(h * ratio)), self.resize)
        else:
            size = (int(self.resize[0]), int(self.resize[1]))
        if size == (h, w):
            return image_bgr
        return cv2.resize(image_bgr, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def __call__(self, image_bgr: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Transform one image; `rng` draws the crop offset and the mirror (needed when they are random)."""
        if (self.random_crop or self.mirror) and rng is None:
            raise ValueError("caffe_transform: a random crop or mirror needs a numpy Generator (rng=...).")
        im = self.resized(image_bgr)
        h, w = im.shape[:2]
        mean = np.asarray(self.mean_bgr, dtype=np.float32)
        top, left, ch, cw = 0, 0, h, w
        if self.crop is not None:
            if self.crop > h or self.crop > w:
                raise ValueError(f"caffe_transform: crop {self.crop} is larger than the {h}x{w} image; resize it "
                                 "first (resize=...).")
            ch = cw = self.crop
            if self.random_crop:
                top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            else:
                top, left = (h - ch) // 2, (w - cw) // 2
        window = im[top:top + ch, left:left + cw].astype(np.float32)
        if mean.ndim == 3:
            if mean.shape[:2] != (h, w):
                raise ValueError(f"caffe_transform: the mean image is {mean.shape[0]}x{mean.shape[1]}, the resized "
                                 f"image {h}x{w}; they must match (Caffe: mean_file of the data's size).")
            window -= mean[top:top + ch, left:left + cw]
        else:
            window -= mean
        if self.scale != 1.0:
            window *= np.float32(self.scale)
        if self.mirror and rng.integers(0, 2):
            window = window[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(window.transpose(2, 0, 1)))


def caffe_transform(*, mean_bgr: tuple[float, float, float] | np.ndarray, resize: int | tuple[int, int] | None = None,
                    crop: int | None = None, train: bool = False, mirror: bool | None = None,
                    scale: float = 1.0) -> CaffeTransform:
    """Caffe's data transform for 8-bit BGR images (see `CaffeTransform`).

    `train` selects Caffe's TRAIN-phase behaviour: random crop offsets, and random mirroring unless `mirror` says
    otherwise; the TEST phase crops the centre and mirrors only if `mirror` is True.
    """
    return CaffeTransform(mean_bgr=mean_bgr if isinstance(mean_bgr, np.ndarray) else tuple(mean_bgr),
                          resize=resize, crop=crop, random_crop=train and crop is not None,
                          mirror=train if mirror is None else mirror, scale=scale)


def ten_crops(image: torch.Tensor, size: int) -> torch.Tensor:
    """pycaffe's ``oversample``: (C, H, W) -> (10, C, size, size), the four corner crops (top-left, top-right,
    bottom-left, bottom-right), the centre crop, then the same five mirrored left-right. The centre window starts
    at ``int(H / 2 - size / 2)`` (the float centre truncated, as ``oversample`` stores it in an int array).
    """
    c, h, w = image.shape
    if size > h or size > w:
        raise ValueError(f"ten_crops: crop {size} is larger than the {h}x{w} image.")
    starts = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
              (int(h / 2.0 - size / 2.0), int(w / 2.0 - size / 2.0))]
    crops = torch.stack([image[:, y:y + size, x:x + size] for y, x in starts])
    return torch.cat([crops, crops.flip(-1)])


class ImageDataset(torch.utils.data.Dataset):
    """``dataset[i] -> (transformed image tensor, label, i)`` for a ``DataLoader``.

    The random draws of sample i in epoch e come from ``numpy.random.default_rng((seed, e, i))``, so they do not
    depend on worker processes or on where a resumed run restarts; call `set_epoch` at the start of each epoch.
    """

    def __init__(self, samples: Sequence[LabeledImage], transform: Callable[..., torch.Tensor], *, seed: int = 0,
                 reader: Callable[[str], np.ndarray] = read_image_bgr) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.reader = reader

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path, label = self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        return self.transform(self.reader(path), rng), int(label), int(index)
