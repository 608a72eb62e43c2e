"""Detection data checked up front: every split's list, annotations, images and proposals, before the first
iteration, each fault one error naming the file.

Fast R-CNN finds bad data late or never: an inverted box trips an assertion when the flipped copies are made
(``imdb.py`` ``append_flipped_images``), a box outside the image trains silently (and, with ``xmin = 0``, wraps
around in ``pascal_voc.py``'s uint16 arithmetic), a broken test image surfaces after training. `check_split` reads
all of a split at once, as it will be used:

* the image-set list (`eval.voc.read_image_set`: UTF-8 or UTF-16 with a byte-order mark, no duplicates);
* every annotation (well-formed XML, known class names after the one normalisation of `eval.voc`);
* every box: 1-based inclusive pixels with ``1 <= xmin <= xmax <= width`` and ``1 <= ymin <= ymax <= height`` of the
  decoded image, the conditions under which fast-rcnn's 0-based boxes and their mirror images are valid;
* every image, decoded as training will decode it (`jigsawpp.data.read_image_bgr`: corrupt and truncated files
  refused), its size equal to the annotation's ``<size>``; images carrying an EXIF rotation are listed (they are
  read unrotated, as Caffe read them).

The sha256 of every image file comes out too: the proposal cache and the resume check are keyed by content.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.constants import VOC_CLASSES
from eval.voc import VOCAnnotation, VOCDataset

__all__ = ["ClassNameWarning", "SplitCheck", "check_box", "check_proposals", "check_split", "renamed_summary"]


class ClassNameWarning(UserWarning):
    """Class names in the annotations were normalised (stripped, lower-cased) to match the VOC classes."""


@dataclass(frozen=True)
class SplitCheck:
    """What `check_split` read.

    Attributes:
        sizes: image id -> (width, height) of the decoded image.
        image_sha256: image id -> sha256 of the image file.
        renamed: ``(name as written, normalised name)`` -> annotation files (`eval.voc.renamed_objects`).
        rotated: ids of images carrying an EXIF rotation (read unrotated).
    """

    split: str
    list_file: Path
    image_ids: tuple[str, ...]
    sizes: dict[str, tuple[int, int]]
    image_sha256: dict[str, str]
    renamed: dict[tuple[str, str], list[str]]
    rotated: tuple[str, ...]

    def digest(self) -> str:
        """One sha256 over the split's ids and image contents, in list order."""
        h = hashlib.sha256()
        for i in self.image_ids:
            h.update(f"{i}:{self.image_sha256[i]};".encode())
        return h.hexdigest()


def check_box(box: tuple[float, float, float, float], *, width: int, height: int) -> str | None:
    """Why a 1-based inclusive VOC box is invalid in a width x height image, or None when it is valid."""
    xmin, ymin, xmax, ymax = box
    if xmin > xmax or ymin > ymax:
        return "it is inverted (xmin > xmax or ymin > ymax)"
    if xmin < 1 or ymin < 1 or xmax > width or ymax > height:
        return f"it extends outside the {width}x{height} image"
    return None


def _box_text(box: tuple[float, ...]) -> str:
    return "xmin {:g} ymin {:g} xmax {:g} ymax {:g}".format(*box)


def _check_annotation(ann: VOCAnnotation, xml: Path, image: Path, size: tuple[int, int], *, orientation: int | None,
                      known: set[str]) -> list[str]:
    problems = []
    width, height = size
    if (ann.width, ann.height) != (width, height):
        rotated = (orientation is not None and orientation >= 5 and (ann.width, ann.height) == (height, width))
        hint = (" The image carries an EXIF rotation, which is ignored (as Caffe ignored it): the annotation was "
                "made on the rotated view; store the image rotated, without the tag." if rotated else
                " Boxes are checked against the image; fix the <size> or the image.")
        problems.append(f"{xml}: <size> says {ann.width}x{ann.height} but {image} is {width}x{height}.{hint}")
    for index, obj in enumerate(ann.objects):
        where = f"{xml}: object {index} ({obj.raw_name if obj.raw_name is not None else obj.name!r})"
        if obj.name not in known:
            problems.append(f"{where}: class {obj.name!r} is not a VOC class ({', '.join(VOC_CLASSES)}).")
            continue
        why = check_box(obj.box, width=width, height=height)
        if why is not None:
            problems.append(f"{where}: box {_box_text(obj.box)}: {why}; VOC boxes are 1-based inclusive pixels with "
                            f"1 <= xmin <= xmax <= {width} and 1 <= ymin <= ymax <= {height}. Fix the annotation.")
    return problems


def _raise(problems: list[str], what: str) -> None:
    if problems:
        more = f" ({len(problems) - 1} more problem(s) in {what}, e.g. {problems[1]})" if len(problems) > 1 else ""
        raise ValueError(problems[0] + more)


def check_split(dataset: VOCDataset, *, class_names: tuple[str, ...] = VOC_CLASSES,
                progress: bool = False) -> SplitCheck:
    """Read and check one split (see the module docstring).

    Raises:
        ValueError (`jigsawpp.data.ImageReadError` for images): the first problem, naming the file, the object and
            its coordinates, and how many more there are.
        FileNotFoundError: a missing annotation or image.
    """
    from tqdm import tqdm

    from jigsawpp.data import ImageOrientationWarning, exif_orientation, read_image_bgr

    known = set(class_names)
    sizes, hashes, rotated, problems = {}, {}, [], []
    annotations = []
    for image_id in tqdm(dataset.image_ids, desc=f"checking {dataset.split}", unit="img", disable=not progress):
        xml, image = dataset.annotation_path(image_id), dataset.image_path(image_id)
        if not image.is_file():
            raise FileNotFoundError(f"image {image} of split {dataset.split!r} (listed in {dataset.list_path}) does "
                                    "not exist.")
        ann = dataset.annotation(image_id)
        annotations.append(ann)
        data = image.read_bytes()
        hashes[image_id] = hashlib.sha256(data).hexdigest()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageOrientationWarning)  # listed once below instead of per image
            pixels = read_image_bgr(image)
        orientation = exif_orientation(data)
        if orientation not in (None, 1):
            rotated.append(image_id)
        sizes[image_id] = (int(pixels.shape[1]), int(pixels.shape[0]))
        problems += _check_annotation(ann, xml, image, sizes[image_id], orientation=orientation, known=known)
    _raise(problems, f"split {dataset.split!r}")
    from eval.voc import renamed_objects

    return SplitCheck(split=dataset.split, list_file=dataset.list_path, image_ids=dataset.image_ids, sizes=sizes,
                      image_sha256=hashes, renamed=renamed_objects(annotations, xml.parent if annotations else ""),
                      rotated=tuple(rotated))


def renamed_summary(renamed: Mapping[tuple[str, str], list[str]]) -> str | None:
    """One line saying which class names the normalisation changed, or None."""
    if not renamed:
        return None
    parts = [f"{raw!r} -> {name!r} ({len(files)} object(s), e.g. {Path(files[0]).name})"
             for (raw, name), files in sorted(renamed.items())]
    return ("class names normalised (surrounding whitespace stripped, lower-cased) for training and scoring alike: "
            + "; ".join(parts) + ".")


def check_proposals(boxes: Mapping[str, np.ndarray], sizes: Mapping[str, tuple[int, int]], *, source: str) -> None:
    """Proposals must be 0-based boxes inside their image and not inverted (fast-rcnn asserts it when mirroring).

    Raises:
        ValueError: naming `source`, the image and the first bad box.
    """
    problems = []
    for image_id, (width, height) in sizes.items():
        if image_id not in boxes:
            problems.append(f"{source}: no proposals for image {image_id!r}.")
            continue
        b = np.asarray(boxes[image_id], dtype=np.float64).reshape(-1, 4)
        bad = ((b[:, 0] > b[:, 2]) | (b[:, 1] > b[:, 3]) | (b[:, 0] < 0) | (b[:, 1] < 0)
               | (b[:, 2] > width - 1) | (b[:, 3] > height - 1) | ~np.isfinite(b).all(axis=1))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            problems.append(f"{source}: proposal {row} of image {image_id!r}, (x1, y1, x2, y2) = "
                            f"{tuple(float(v) for v in b[row])} 0-based, is inverted or outside the {width}x{height} "
                            f"image ({int(bad.sum())} such boxes in that image).")
    _raise(problems, source)
