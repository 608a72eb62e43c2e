"""PASCAL VOC annotations and image sets, read the way the VOC devkit reads them.

Reproduces ``VOCdevkit/VOCcode/PASreadrecord.m`` / ``VOCreadrecxml.m`` for the fields the detection metric needs:
boxes are kept as written in the XML (1-based, inclusive pixel coordinates), ``difficult`` and ``truncated`` default
to false when absent. Image ids come from ``ImageSets/Main/<split>.txt`` (UTF-8, with or without a byte-order mark,
or UTF-16 with one; anything else is an error naming the list).

Class names are normalised once, here, for training and scoring alike: surrounding whitespace stripped and lower-cased
(fast-rcnn ``pascal_voc.py`` does ``obj.find('name').text.lower().strip()``; the devkit compares the name exactly,
so a ``<name> Dog </name>`` would count for training but not for scoring if the two read it differently).
`VOCObject.raw_name` keeps the text as written and `renamed_objects` lists every name the normalisation changed.

XML safety: annotations are parsed with the standard library (``xml.etree.ElementTree``) after a first
``xml.parsers.expat`` pass that refuses any document type declaration. Entities can only be declared inside a DTD, so
this rules out entity expansion and external entities without depending on ``defusedxml``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import xml.parsers.expat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from eval.constants import (
    VOC_ANNOTATION_EXT,
    VOC_ANNOTATIONS_DIR,
    VOC_IMAGE_EXT,
    VOC_IMAGES_DIR,
    VOC_IMAGESETS_DIR,
)

__all__ = ["VOCAnnotation", "VOCDataset", "VOCObject", "load_annotation", "normalise_class_name", "parse_annotation",
           "read_image_set", "renamed_objects"]

_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def normalise_class_name(name: str) -> str:
    """The one normalisation of class names: surrounding whitespace stripped, lower-cased (fast-rcnn's)."""
    return name.strip().lower()


@dataclass(frozen=True)
class VOCObject:
    """One annotated object. ``box`` is (x1, y1, x2, y2), 1-based inclusive pixels, as in the XML; ``name`` is
    normalised (`normalise_class_name`), ``raw_name`` the text as written (None when it equals ``name``)."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool
    truncated: bool
    raw_name: str | None = None


@dataclass(frozen=True)
class VOCAnnotation:
    """One image's annotation (``Annotations/<image_id>.xml``)."""

    image_id: str
    width: int
    height: int
    objects: tuple[VOCObject, ...]


def _refuse_doctype(data: bytes, source: str) -> None:
    """Run expat once over ``data`` and fail on a DOCTYPE, the only place entities can be declared."""

    def on_doctype(name: str, *_args: object) -> None:
        raise ValueError(
            f"{source}: refusing an XML document type declaration (<!DOCTYPE {name} ...>); VOC annotations have none, "
            "and DTDs can declare entities that expand without bound."
        )

    parser = xml.parsers.expat.ParserCreate()
    parser.StartDoctypeDeclHandler = on_doctype
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise ValueError(f"{source}: not well-formed XML ({exc}).") from exc


def _text(elem: ET.Element, path: str, source: str) -> str:
    found = elem.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise ValueError(f"{source}: missing or empty <{path}> element.")
    return found.text.strip()


def _number(elem: ET.Element, path: str, source: str) -> float:
    text = _text(elem, path, source)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{source}: <{path}> is {text!r}, not a number.") from None


def _flag(elem: ET.Element, path: str, source: str) -> bool:
    """Optional 0/1 field; absent means false, as in VOCreadrecxml.m."""
    found = elem.find(path)
    if found is None or found.text is None or not found.text.strip():
        return False
    text = found.text.strip()
    if text not in ("0", "1"):
        raise ValueError(f"{source}: <{path}> is {text!r}; expected 0 or 1.")
    return text == "1"


def parse_annotation(data: bytes, *, image_id: str, source: str = "<bytes>") -> VOCAnnotation:
    """Parse VOC annotation XML bytes. ``source`` names the file in error messages."""
    _refuse_doctype(data, source)
    root = ET.fromstring(data)
    if root.tag != "annotation":
        raise ValueError(f"{source}: root element is <{root.tag}>, expected <annotation>.")
    objects = []
    for index, obj in enumerate(root.findall("object")):
        where = f"{source} (object {index})"
        box = tuple(_number(obj, f"bndbox/{key}", where) for key in ("xmin", "ymin", "xmax", "ymax"))
        _text(obj, "name", where)  # refuses a missing or empty name
        raw = obj.find("name").text  # type: ignore[union-attr]  # checked just above
        name = normalise_class_name(raw)
        objects.append(
            VOCObject(
                name=name,
                box=box,  # type: ignore[arg-type]  # four floats by construction
                difficult=_flag(obj, "difficult", where),
                truncated=_flag(obj, "truncated", where),
                raw_name=None if raw == name else raw,
            )
        )
    return VOCAnnotation(
        image_id=image_id,
        width=int(_number(root, "size/width", source)),
        height=int(_number(root, "size/height", source)),
        objects=tuple(objects),
    )


def load_annotation(xml_path: str | Path) -> VOCAnnotation:
    """Read ``Annotations/<image_id>.xml``; the image id is the file stem, as the devkit's ``annopath`` implies."""
    path = Path(xml_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC annotation file {path} does not exist.") from None
    return parse_annotation(data, image_id=path.stem, source=str(path))


def read_image_set(path: str | Path) -> tuple[str, ...]:
    """The image ids of an ``ImageSets/Main/<split>.txt`` list: one per line, surrounding whitespace stripped,
    empty lines skipped. UTF-8 (a byte-order mark is dropped) or UTF-16 with its byte-order mark.

    Raises:
        ValueError: undecodable text, or an id listed twice (the message names the list file).
    """
    path = Path(path)
    data = path.read_bytes()
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(f"VOC image set {path} is not {encoding.replace('-sig', '')} text ({exc.reason} at byte "
                         f"{exc.start}); save it as UTF-8, one image id per line.") from None
    if "\x00" in text:
        raise ValueError(f"VOC image set {path} contains NUL characters (UTF-16 without a byte-order mark?); save it "
                         "as UTF-8, one image id per line.")
    ids = tuple(i for i in (line.strip() for line in text.splitlines()) if i)
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    if twice:
        raise ValueError(f"VOC image set {path} lists image ids more than once: {', '.join(twice[:5])}.")
    return ids


def renamed_objects(annotations: Iterable[VOCAnnotation], folder: str | Path = "") -> dict[tuple[str, str], list[str]]:
    """``{(name as written, normalised name): [annotation files]}`` for every object whose class name the
    normalisation changed (e.g. ``(" Dog ", "dog")``)."""
    out: dict[tuple[str, str], list[str]] = {}
    for ann in annotations:
        for obj in ann.objects:
            if obj.raw_name is not None:
                out.setdefault((obj.raw_name, obj.name), []).append(str(Path(folder) / f"{ann.image_id}.xml"))
    return out


class VOCDataset:
    """A split of a ``VOCdevkit/VOC20XX`` folder: image ids, annotation and image paths.

    Args:
        root: the ``VOC2007`` (or other year) folder holding ``Annotations/``, ``ImageSets/Main/``, ``JPEGImages/``.
        split: image set name, e.g. ``"test"`` or ``"trainval"``.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise FileNotFoundError(f"VOC root {self.root} is not a directory; pass the VOCdevkit/VOC2007 folder.")
        list_path = self.root / VOC_IMAGESETS_DIR / f"{split}.txt"
        if not list_path.is_file():
            raise FileNotFoundError(
                f"VOC image set {list_path} does not exist; is {self.root} a VOCdevkit/VOC20XX folder "
                f"and is {split!r} one of its splits?"
            )
        self.list_path = list_path
        self.image_ids: tuple[str, ...] = read_image_set(list_path)

    def __len__(self) -> int:
        return len(self.image_ids)

    def annotation_path(self, image_id: str) -> Path:
        return self.root / VOC_ANNOTATIONS_DIR / f"{image_id}{VOC_ANNOTATION_EXT}"

    def image_path(self, image_id: str) -> Path:
        return self.root / VOC_IMAGES_DIR / f"{image_id}{VOC_IMAGE_EXT}"

    def annotation(self, image_id: str) -> VOCAnnotation:
        path = self.annotation_path(image_id)
        if not path.is_file():
            raise FileNotFoundError(f"VOC annotation {path} for image {image_id!r} of split {self.split!r} is missing.")
        return load_annotation(path)

    def renamed_objects(self) -> dict[tuple[str, str], list[str]]:
        """`renamed_objects` over the split's annotations."""
        return renamed_objects(self.annotations(), self.root / VOC_ANNOTATIONS_DIR)

    def annotations(self) -> Iterator[VOCAnnotation]:
        """All annotations of the split, in image-set order."""
        for image_id in self.image_ids:
            yield self.annotation(image_id)
